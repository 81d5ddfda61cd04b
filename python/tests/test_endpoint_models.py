"""Endpoint models: batches POSTed to a real HTTP server on loopback (a fake model endpoint in
the test), with Beam's retries, failures per row and the load policy's allowed endpoints.

Beam's backoff waits about 5 s (2.5 to 7.5) before a retry, so the retry test takes that long;
the throttling test waits whole seconds each time the client throttles itself.
"""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import apache_beam as beam
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.testing.util import assert_that, equal_to

from inferbridge import Inference, LoadPolicy, Model


class FakeEndpoint:
    """Answers ``{"predictions": [sum of each instance]}``; ``script`` holds (status, body) answers
    to give first, one per request, then ``answer`` (by default the sums); it records every
    request's path, headers and instances, and when it came (``times``, monotonic seconds)."""

    def __init__(self):
        self.requests, self.script, self.times, self.answer = [], [], [], None
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                instances = json.loads(self.rfile.read(int(self.headers["Content-Length"])))["instances"]
                endpoint.requests.append((self.path, self.headers.get("Authorization"), instances))
                endpoint.times.append(time.monotonic())
                status, body = (
                    endpoint.script.pop(0) if endpoint.script
                    else endpoint.answer or (200, {"predictions": [sum(i) for i in instances]})
                )
                payload = json.dumps(body).encode() if not isinstance(body, bytes) else body
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1/models/sum:predict"
        self.prefix = f"http://127.0.0.1:{self.server.server_address[1]}/v1/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def fake():
    endpoint = FakeEndpoint()
    yield endpoint
    endpoint.server.shutdown()
    endpoint.server.server_close()


def _rows(n):
    return [beam.Row(id=str(i), f=[float(i), 1.0]) for i in range(n)]


def test_each_batch_is_one_post_and_every_row_gets_its_prediction(fake, monkeypatch):
    monkeypatch.setenv("INFERBRIDGE_ENDPOINT_TOKEN_TEST", "s3cret\n")  # as a mounted secret file ends
    with beam.Pipeline() as p:
        result = p | beam.Create(_rows(7)) | Inference(
            Model.endpoint(fake.url, output="number", options={"bearer_token_env": "INFERBRIDGE_ENDPOINT_TOKEN_TEST"}),
            key_field="id",
            feature_fields="f",
            max_batch_size=3,
            policy=LoadPolicy(allowed_endpoints=(fake.prefix,)),
        )
        assert_that(
            result.inferences | beam.Map(lambda r: (r.key, r.inference)),
            equal_to([(str(i), i + 1.0) for i in range(7)]),
        )
    assert {(path, auth) for path, auth, _ in fake.requests} == {("/v1/models/sum:predict", "Bearer s3cret")}
    assert sorted(len(instances) for _, _, instances in fake.requests) == [1, 3, 3]


def test_a_call_that_may_succeed_later_is_retried_after_a_backoff(fake, caplog):
    fake.script = [(503, {"error": "warming up"})]
    with beam.Pipeline() as p:
        result = p | beam.Create(_rows(3)) | Inference(
            Model.endpoint(fake.url, output="number"),
            key_field="id",
            feature_fields="f",
            policy=LoadPolicy(allowed_endpoints=(fake.prefix,)),
        )
        assert_that(result.inferences | beam.Map(lambda r: (r.key, r.inference)), equal_to([(str(i), i + 1.0) for i in range(3)]))
        assert_that(result.failures, equal_to([]), label="NoFailures")
    assert len(fake.requests) == 2 and fake.requests[0][2] == fake.requests[1][2]
    # Beam's backoff: the first retry waits 5 s, fuzzed to between 2.5 and 7.5 s.
    assert fake.times[1] - fake.times[0] >= 2.5


def test_a_call_still_failing_after_its_retries_fails_its_rows_together(fake):
    fake.script = [(503, {"error": "down"})] * 2
    with beam.Pipeline() as p:
        result = p | beam.Create(_rows(4)) | Inference(
            Model.endpoint(fake.url, output="number", options={"num_retries": 1, "throttle_delay_secs": 0}),
            key_field="id",
            feature_fields="f",
            policy=LoadPolicy(allowed_endpoints=(fake.prefix,)),
        )
        assert_that(
            result.failures | beam.Map(lambda r: (r.key, r.stage, "answered HTTP 503" in r.message)),
            equal_to([(str(i), "inference", True) for i in range(4)]),
        )
    # One call and its one retry: the rows are not tried in halves against an endpoint that is down.
    assert [len(instances) for _, _, instances in fake.requests] == [4, 4]


def test_repeated_failures_make_the_client_throttle_itself_and_count_the_time(fake):
    fake.answer = (503, {"error": "overloaded"})
    p = beam.Pipeline()
    result = p | beam.Create(_rows(10)) | Inference(
        Model.endpoint(fake.url, output="number", options={"num_retries": 0, "throttle_delay_secs": 1}),
        key_field="id",
        feature_fields="f",
        max_batch_size=1,
        policy=LoadPolicy(allowed_endpoints=(fake.prefix,)),
    )
    assert_that(result.failures | beam.Map(lambda r: (r.key, r.stage)), equal_to([(str(i), "inference") for i in range(10)]))
    outcome = p.run()
    outcome.wait_until_finish()
    # Beam's ReactiveThrottler: after failures in the last second, a call waits before it is sent
    # (with probability failures/(calls + 1); not waiting before any of these 10 has odds 1/10!).
    throttled = outcome.metrics().query(MetricsFilter().with_name("cumulativeThrottlingSeconds"))["counters"]
    assert sum(c.committed for c in throttled) >= 1
    # Throttled calls are delayed, not dropped: one call per row, each failing its row.
    assert len(fake.requests) == 10
    assert fake.times[-1] - fake.times[0] >= 1


@pytest.mark.parametrize(
    "answer, message",
    [
        ((400, {"error": "instances must have 3 values"}), 'answered HTTP 400 Bad Request: {"error": "instances must have 3 values"}'),
        ((200, {"predictions": []}), "answered 0 predictions for 1 instances"),
        ((200, b"<html>"), "answered something other than JSON"),
        ((200, {"predictions": [{"scores": [0.1]}]}), "the model gave a mapping (keys scores) for an example; allowed: a number"),
        ((200, {"predictions": ["seven"]}), "the model gave 'seven' for an example; allowed: a number or a list of numbers"),
    ],
)
def test_a_call_that_cannot_succeed_fails_its_rows_at_once(fake, answer, message):
    fake.script = [answer] * 3
    with beam.Pipeline() as p:
        result = p | beam.Create(_rows(2)) | Inference(
            Model.endpoint(fake.url, output="number"),
            key_field="id",
            feature_fields="f",
            policy=LoadPolicy(allowed_endpoints=(fake.prefix,)),
        )
        failures = result.failures | beam.Map(lambda r: (r.key, r.stage, message in r.message))
        assert_that(failures, equal_to([("0", "inference", True), ("1", "inference", True)]))
        assert_that(result.inferences, equal_to([]), label="NoInferences")
    # Not retried: the call for both rows, then each row alone (failures are isolated per row).
    assert sorted(len(instances) for _, _, instances in fake.requests) == [1, 1, 2]


@pytest.mark.parametrize(
    "url, allowed, message",
    [
        ("http://127.0.0.1:9/v1/m", (), "is not under an allowed endpoint (none configured); to allow it"),
        ("http://127.0.0.1:9/v2/m", ("http://127.0.0.1:9/v1/",), "is not under an allowed endpoint (http://127.0.0.1:9/v1/)"),
        ("http://127.0.0.1:9/v1/../admin", ("http://127.0.0.1:9/v1/",), "holds a '.' or '..' path segment"),
        ("http://127.0.0.1:9/v1/%2e%2e%2fadmin", ("http://127.0.0.1:9/v1/",), "holds '%', '\\' or ';' in its path"),
        ("http://127.0.0.1:9/v1/..;/admin", ("http://127.0.0.1:9/v1/",), "holds '%', '\\' or ';' in its path"),
        ("http://user:pw@127.0.0.1:9/v1/m", ("http://127.0.0.1:9/v1/",), "holds user information"),
        ("file:///etc/passwd", ("*",), "is not an http:// or https:// URL with a host"),
    ],
)
def test_only_allowed_endpoints_are_called(url, allowed, message):
    with pytest.raises(ValueError) as raised:
        with beam.Pipeline() as p:
            _ = p | beam.Create(_rows(1)) | Inference(
                Model.endpoint(url), key_field="id", feature_fields="f", policy=LoadPolicy(allowed_endpoints=allowed)
            )
    assert message in str(raised.value)


def test_the_token_comes_only_from_variables_named_for_endpoint_tokens():
    with pytest.raises(ValueError, match=r"options.bearer_token_env='AWS_SECRET_ACCESS_KEY' is not allowed; allowed: names "
                       r"INFERBRIDGE_ENDPOINT_TOKEN_<NAME>"):
        Inference(Model.endpoint("http://h/m", options={"bearer_token_env": "AWS_SECRET_ACCESS_KEY"}), key_field="id", feature_fields="f")


def test_rows_json_cannot_carry_fail_without_a_call(fake):
    with beam.Pipeline() as p:
        result = p | beam.Create([beam.Row(id="nan", f=[float("nan"), 1.0]), beam.Row(id="ok", f=[1.0, 1.0])]) | Inference(
            Model.endpoint(fake.url, output="number"), key_field="id", feature_fields="f",
            policy=LoadPolicy(allowed_endpoints=(fake.prefix,)),
        )
        assert_that(result.inferences | beam.Map(lambda r: (r.key, r.inference)), equal_to([("ok", 2.0)]))
        assert_that(
            result.failures | beam.Map(lambda r: (r.key, r.stage, r.message)),
            equal_to([("nan", "inference", "instances hold NaN or Infinity, which JSON cannot carry")]),
            label="Failures",
        )
    assert all(len(instances) == 1 and instances[0] == [1.0, 1.0] for _, _, instances in fake.requests)


def test_endpoint_options_are_checked_when_the_spec_is_built():
    with pytest.raises(ValueError, match=r"models\[0\].options.timeout_secs='10' must be a number"):
        Inference(Model.endpoint("http://h/m", options={"timeout_secs": "10"}), key_field="id", feature_fields="f")
    with pytest.raises(ValueError, match=r"models\[0\].options.throttle_delay_secs=0.5 must be an integer"):
        Inference(Model.endpoint("http://h/m", options={"throttle_delay_secs": 0.5}), key_field="id", feature_fields="f")
    with pytest.raises(ValueError, match=r"models\[0\].options.retries is not an option of endpoint format 'http_json'"):
        Inference(Model.endpoint("http://h/m", options={"retries": 1}), key_field="id", feature_fields="f")
    with pytest.raises(ValueError, match=r"models\[0\].sha256=.* is not taken by a model whose handler loads it itself"):
        Inference(Model.endpoint("http://h/m", sha256="0" * 64), key_field="id", feature_fields="f")
