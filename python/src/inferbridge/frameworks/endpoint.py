"""Models served over HTTP: each batch is one POST of ``{"instances": [[...], ...]}`` to the
model's URL, answered by ``{"predictions": [...]}``, one per instance, in order (the request
and response of TensorFlow Serving, KServe v1 and Vertex AI endpoints).

The handler is Beam's ``RemoteModelHandler``: a failed call is retried with exponential
backoff (from about 5 s, doubling) when it may succeed later (a connection error, a timeout,
HTTP 408, 429 or 5xx), and repeated failures make the client throttle itself (Beam's
``ReactiveThrottler``; throttled time is the ``cumulativeThrottlingSeconds`` counter). A call
that cannot succeed (another 4xx, an answer of the wrong shape) fails its rows at once, at stage
``inference``. URLs must be under a prefix the load policy allows (``--allow-endpoint``): a
client of the expansion service never makes its workers call anywhere else.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from typing import TYPE_CHECKING, Any, Optional, Sequence

from inferbridge.frameworks.base import VECTOR_OR_NUMBER, Framework, Option, check_options

if TYPE_CHECKING:
    from apache_beam.ml.inference.base import ModelHandler, PredictionResult

    from inferbridge.model_files import ModelFile
    from inferbridge.policy import LoadPolicy
    from inferbridge.spec import Model

OPTIONS = {
    "timeout_secs": Option(float, help="seconds one call may take (default 30)"),
    "num_retries": Option(float, help="retries of a call that may succeed later (default 3)"),
    "throttle_delay_secs": Option(float, help="seconds a throttled call waits (default 5)"),
    "bearer_token_env": Option(
        str, help="the worker environment variable holding a token sent as 'Authorization: Bearer'"
    ),
}
_RETRIED_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
_SHOWN_BODY_CHARS = 300


class EndpointError(Exception):
    """An HTTP call that failed; ``retryable`` when it may succeed later."""

    def __init__(self, message: str, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


def _retryable(error: Exception) -> bool:
    return isinstance(error, EndpointError) and error.retryable


def _check(model: Model, where: str) -> None:
    check_options(OPTIONS, model, where)
    for name in ("timeout_secs", "num_retries", "throttle_delay_secs"):
        value = model.options.get(name)
        if value is not None and not 0 <= value <= 3600:
            raise ValueError(f"{where}.options.{name}={value!r} is out of range; allowed: 0 to 3600")


def handler(model: Model, url: str) -> ModelHandler:
    """Beam's RemoteModelHandler calling ``url``."""
    from apache_beam.ml.inference.base import PredictionResult, RemoteModelHandler

    options = model.options

    class HttpJsonModelHandler(RemoteModelHandler):
        def __init__(self) -> None:
            super().__init__(
                namespace="InferBridgeEndpoint",
                num_retries=int(options.get("num_retries", 3)),
                throttle_delay_secs=int(options.get("throttle_delay_secs", 5)),
                retry_filter=_retryable,
            )
            self.url = url

        def update_model_path(self, model_path: Optional[str] = None) -> None:
            self.url = model_path or self.url

        def create_client(self) -> Any:
            token_env = options.get("bearer_token_env")
            if token_env is None:
                return {}
            if not os.environ.get(token_env):
                raise ValueError(
                    f"options.bearer_token_env={token_env!r} names no (non-empty) environment variable "
                    "of this worker; set it where the workers run"
                )
            return {"Authorization": f"Bearer {os.environ[token_env]}"}

        def request(self, batch: Sequence[Any], client: Any, inference_args: Any = None) -> list[PredictionResult]:
            predictions = _post(self.url, [[float(v) for v in x.ravel()] for x in batch], client, options)
            if not isinstance(predictions, list) or len(predictions) != len(batch):
                got = len(predictions) if isinstance(predictions, list) else type(predictions).__name__
                raise EndpointError(
                    f"{self.url} answered {got} predictions for {len(batch)} instances", retryable=False
                )
            return [PredictionResult(x, p) for x, p in zip(batch, predictions)]

    return HttpJsonModelHandler()


def _post(url: str, instances: list, headers: dict, options: Any) -> Any:
    body = json.dumps({"instances": instances}).encode()
    request = urllib.request.Request(
        url, data=body, method="POST", headers={"Content-Type": "application/json", **headers}
    )
    try:
        with _OPENER.open(request, timeout=float(options.get("timeout_secs", 30))) as response:
            answer = json.loads(response.read())
    except urllib.error.HTTPError as e:
        text = e.read(_SHOWN_BODY_CHARS).decode("utf-8", "replace")
        raise EndpointError(f"{url} answered HTTP {e.code} {e.reason}: {text}", e.code in _RETRIED_STATUSES) from None
    except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
        raise EndpointError(f"{url} could not be reached: {getattr(e, 'reason', e)}", retryable=True) from None
    except json.JSONDecodeError as e:
        raise EndpointError(f"{url} answered something other than JSON: {e}", retryable=False) from None
    if not isinstance(answer, dict) or "predictions" not in answer:
        raise EndpointError(f"{url} answered JSON without 'predictions'", retryable=False)
    return answer["predictions"]


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    # A redirect could lead outside the allowed endpoints: it is an answer, not a new call.
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


# No proxies from the environment either: the call goes to the allowed URL itself.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirects())


def _build(model: Model, uri: str, policy: LoadPolicy, where: str) -> ModelHandler:
    return handler(model, uri)


def _load(model: Model, file: ModelFile, policy: LoadPolicy, where: str) -> Any:
    raise TypeError(f"{where}: an endpoint model is called over HTTP, not loaded from a file")


FRAMEWORK = Framework(
    name="endpoint",
    formats=("http_json",),
    outputs=VECTOR_OR_NUMBER,
    check=_check,
    build=_build,
    load=_load,
    options={"http_json": OPTIONS},
    safe_formats=("http_json",),
)
