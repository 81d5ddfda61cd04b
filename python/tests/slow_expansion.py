"""A transform that takes a while to expand, loaded into the service with --import and --allow-urn.

It lets the tests hold expansions in flight: for the deadline, graceful shutdown, the operator
allowlist, and the cancellation of an expansion past its deadline. The payload ``sleep=SECS``
waits; ``burn=SECS`` keeps a CPU busy in pure Python, as a costly expansion would.
"""

import time

import apache_beam as beam

SLOW_URN = "beam:transform:inferbridge_test:slow_identity:v1"


def _identity(x):
    return x


@beam.PTransform.register_urn(SLOW_URN, None)
class SlowIdentity(beam.PTransform):
    """Passes elements through; rebuilding it from its payload sleeps (or burns a CPU) that many seconds."""

    def __init__(self, secs: float, burn: bool = False) -> None:
        super().__init__()
        self._secs = secs
        self._burn = burn

    def expand(self, pcoll):
        return pcoll | beam.Map(_identity)

    def to_runner_api_parameter(self, context):
        return SLOW_URN, f"{'burn' if self._burn else 'sleep'}={self._secs}".encode()

    @staticmethod
    def from_runner_api_parameter(unused_transform, payload, context):
        kind, secs = payload.decode().split("=")
        if kind == "burn":
            end = time.monotonic() + float(secs)
            while time.monotonic() < end:
                pass
        else:
            time.sleep(float(secs))
        return SlowIdentity(float(secs), burn=kind == "burn")
