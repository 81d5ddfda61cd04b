"""The Beam handler of endpoint models (``inferbridge.frameworks.endpoint``): batches POSTed as
``{"instances": [...]}`` to an allowed URL, through Beam's ``RemoteModelHandler`` (retries with
backoff, client-side throttling).

The URL a call goes to is the one checked when the client was made (``load_model``), never a
later update's: every copy of a handler may be given an update, but only a load checks it.
"""

from __future__ import annotations

import http.client
import json
import math
import os
import re
import urllib.error
import urllib.request
from typing import Any, Callable, Mapping, NamedTuple, Optional, Sequence

from inferbridge.beam_ml import PredictionResult
from apache_beam.ml.inference.base import RemoteModelHandler  # noqa: I001 - after beam_ml

# A token is read only from variables the operator named so: a client cannot pick another.
TOKEN_ENV_PREFIX = "INFERBRIDGE_ENDPOINT_TOKEN_"
TOKEN_ENV_NAME = re.compile(re.escape(TOKEN_ENV_PREFIX) + r"[A-Z0-9_]+")
_RETRIED_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
_SHOWN_BODY_CHARS = 300
MAX_ANSWER_BYTES = 64 * 1024 * 1024


class EndpointError(Exception):
    """A call that failed. ``retryable``: it may succeed later (Beam retries it). A retryable
    failure is the call's, not a row's: its rows fail together (``isolate_rows``)."""

    def __init__(self, message: str, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.isolate_rows = not retryable


def _retryable(error: Exception) -> bool:
    return isinstance(error, EndpointError) and error.retryable


class Client(NamedTuple):
    url: str
    headers: Mapping[str, str]


class HttpJsonModelHandler(RemoteModelHandler):
    def __init__(self, url: str, options: Mapping[str, Any], check_url: Callable[[str], None], where: str) -> None:
        super().__init__(
            namespace="InferBridgeEndpoint",
            num_retries=int(options.get("num_retries", 3)),
            throttle_delay_secs=options.get("throttle_delay_secs", 5),
            retry_filter=_retryable,
        )
        self._url, self._options, self._check_url, self._where = url, dict(options), check_url, where

    def update_model_path(self, model_path: Optional[str] = None) -> None:
        self._url = model_path or self._url

    def create_client(self) -> Client:
        self._check_url(self._url)
        token_env = self._options.get("bearer_token_env")
        if token_env is None:
            return Client(self._url, {})
        token = os.environ.get(token_env, "").strip()
        if not token or any(ord(c) < 32 or ord(c) == 127 for c in token):
            raise ValueError(
                f"{self._where}.options.bearer_token_env={token_env!r}: that environment variable of the "
                "worker is unset, empty or holds control characters; set it where the workers run"
            )
        return Client(self._url, {"Authorization": f"Bearer {token}"})

    def request(self, batch: Sequence[Any], client: Client, inference_args: Any = None) -> list[PredictionResult]:
        predictions = _post(client, batch, float(self._options.get("timeout_secs", 30)))
        if not isinstance(predictions, list) or len(predictions) != len(batch):
            got = len(predictions) if isinstance(predictions, list) else f"a {type(predictions).__name__} of"
            raise EndpointError(f"{client.url} answered {got} predictions for {len(batch)} instances", retryable=False)
        return [PredictionResult(x, p) for x, p in zip(batch, predictions)]


def _post(client: Client, batch: Sequence[Any], timeout: float) -> Any:
    instances = [[float(v) for v in x.ravel()] for x in batch]
    if any(not math.isfinite(v) for x in instances for v in x):
        raise EndpointError("instances hold NaN or Infinity, which JSON cannot carry", retryable=False)
    request = urllib.request.Request(
        client.url,
        data=json.dumps({"instances": instances}).encode(),
        method="POST",
        headers={"Content-Type": "application/json", **client.headers},
    )
    url = client.url
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            body = response.read(MAX_ANSWER_BYTES + 1)
    except urllib.error.HTTPError as e:
        text = e.read(_SHOWN_BODY_CHARS).decode("utf-8", "replace")
        raise EndpointError(f"{url} answered HTTP {e.code} {e.reason}: {text}", e.code in _RETRIED_STATUSES) from None
    except (urllib.error.URLError, http.client.HTTPException, OSError) as e:  # timeouts, resets, TLS
        raise EndpointError(f"{url} could not be reached: {type(e).__name__}: {getattr(e, 'reason', e)}", True) from None
    if len(body) > MAX_ANSWER_BYTES:
        raise EndpointError(f"{url} answered more than {MAX_ANSWER_BYTES} bytes", retryable=False)
    try:
        answer = json.loads(body)
    except (ValueError, RecursionError) as e:
        raise EndpointError(f"{url} answered something other than JSON: {type(e).__name__}", retryable=False) from None
    if not isinstance(answer, dict) or "predictions" not in answer:
        raise EndpointError(f"{url} answered JSON without 'predictions'", retryable=False)
    return answer["predictions"]


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    # A redirect could lead outside the allowed endpoints: it is an answer, not a new call.
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


# No proxies from the environment either: the call goes to the allowed URL itself.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirects())
