"""A transform that takes a while to expand, loaded into the service with --import and --allow-urn.

It lets the tests hold expansions in flight: for the deadline, graceful shutdown and the operator
allowlist.
"""

import time

import apache_beam as beam

SLOW_URN = "beam:transform:inferbridge_test:slow_identity:v1"


def _identity(x):
    return x


@beam.PTransform.register_urn(SLOW_URN, None)
class SlowIdentity(beam.PTransform):
    """Passes elements through; rebuilding it from its payload sleeps that many seconds."""

    def __init__(self, secs: float) -> None:
        super().__init__()
        self._secs = secs

    def expand(self, pcoll):
        return pcoll | beam.Map(_identity)

    def to_runner_api_parameter(self, context):
        return SLOW_URN, f"sleep={self._secs}".encode()

    @staticmethod
    def from_runner_api_parameter(unused_transform, payload, context):
        secs = float(payload.decode().removeprefix("sleep="))
        time.sleep(secs)
        return SlowIdentity(secs)
