"""Models served over HTTP: each batch is one POST of ``{"instances": [[...], ...]}`` to the
model's URL, answered by ``{"predictions": [...]}``, one per instance, in order (the request
and response of TensorFlow Serving, KServe v1 and Vertex AI endpoints).

The handler is Beam's ``RemoteModelHandler``: a failed call is retried with exponential
backoff (from about 5 s, doubling) when it may succeed later (a connection error, a timeout,
HTTP 408, 429 or 5xx), and repeated failures make the client throttle itself (Beam's
``ReactiveThrottler``; throttled time is the ``cumulativeThrottlingSeconds`` counter); a call
still failing after its retries fails all its rows together, at stage ``inference``. A call that
cannot succeed (another 4xx, an answer of the wrong shape) is not retried; its rows are tried in
halves, as any model's, so only the rows that fail on their own fail. URLs must be under a
prefix the load policy allows (``--allow-endpoint``): a client of the expansion service never
makes its workers call anywhere else. The handler itself is ``inferbridge.http_endpoint``.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from inferbridge.frameworks.base import VECTOR_OR_NUMBER, Framework, Option, check_options

if TYPE_CHECKING:
    from apache_beam.ml.inference.base import ModelHandler

    from inferbridge.policy import LoadPolicy
    from inferbridge.spec import Model

# Kept in step with inferbridge.http_endpoint.TOKEN_ENV_PREFIX (that module imports Beam).
TOKEN_ENV_PREFIX = "INFERBRIDGE_ENDPOINT_TOKEN_"
OPTIONS = {
    "timeout_secs": Option(float, help="seconds one call may take (default 30)"),
    "num_retries": Option(int, help="retries of a call that may succeed later (default 3)"),
    # Whole seconds: Beam counts throttled time (cumulativeThrottlingSeconds) in an integer counter.
    "throttle_delay_secs": Option(int, help="whole seconds a throttled call waits (default 5)"),
    "bearer_token_env": Option(
        str, help=f"the worker environment variable, named {TOKEN_ENV_PREFIX}*, holding a token sent as 'Authorization: Bearer'"
    ),
}
_RANGES = {"timeout_secs": (0.001, 3600), "num_retries": (0, 20), "throttle_delay_secs": (0, 3600)}


def _check(model: Model, where: str) -> None:
    check_options(OPTIONS, model, where)
    for name, (low, high) in _RANGES.items():
        value = model.options.get(name)
        if value is not None and not low <= value <= high:
            raise ValueError(f"{where}.options.{name}={value!r} is out of range; allowed: {low:g} to {high:g}")
    token_env = model.options.get("bearer_token_env")
    if token_env is not None and not (
        token_env.startswith(TOKEN_ENV_PREFIX) and len(token_env) > len(TOKEN_ENV_PREFIX)
        and all(c.isupper() or c.isdigit() or c == "_" for c in token_env)
    ):
        raise ValueError(
            f"{where}.options.bearer_token_env={token_env!r} is not allowed; allowed: names "
            f"{TOKEN_ENV_PREFIX}<NAME> (capitals, digits, '_'), the variables that hold endpoint tokens"
        )


def _build(model: Model, uri: str, policy: LoadPolicy, where: str) -> ModelHandler:
    from inferbridge.http_endpoint import HttpJsonModelHandler

    policy.check_endpoint(uri, where)
    return HttpJsonModelHandler(uri, model.options, functools.partial(policy.check_endpoint, where=where), where)


FRAMEWORK = Framework(
    name="endpoint",
    formats=("http_json",),
    outputs=VECTOR_OR_NUMBER,
    check=_check,
    build=_build,
    load=None,
    options={"http_json": OPTIONS},
    safe_formats=("http_json",),
)
