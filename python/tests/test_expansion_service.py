"""The expansion service, run for real as a child process and called over gRPC."""

import os
import pickle
import signal
import subprocess
import sys

import apache_beam as beam
import grpc
import pytest
from apache_beam.portability.api import beam_expansion_api_pb2, beam_expansion_api_pb2_grpc, beam_runner_api_pb2
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.external import ExternalTransform

from inferbridge import Inference, Model, Step
from inferbridge.local_services import expansion_service, free_port, wait_until_serving


@pytest.fixture(scope="module")
def service(model_files):
    models_dir = os.path.dirname(model_files["pickle"])
    with expansion_service(service_args=[f"--trusted-model-root={models_dir}"]) as address:
        yield address


def test_python_pipeline_runs_the_composite_through_the_service(as_rows, service, model_files, digits_model, held_out):
    pixels, _ = held_out
    transform = Inference(
        Model.sklearn(model_files["pickle"], output="predict_proba"),
        key_field="id",
        feature_fields="pixels",
        preprocess=[Step("scale", factor=1 / 16)],
        postprocess=[Step("argmax")],
    )
    urn, payload = transform.to_runner_api_parameter(None)
    expected = digits_model.predict_proba(pixels / 16).argmax(axis=1)
    with beam.Pipeline() as p:
        result = p | beam.Create(as_rows(pixels)) | ExternalTransform(urn, payload.SerializeToString(), service)
        assert_that(result["inferences"] | beam.Map(lambda r: (r.key, r.inference)), equal_to(list(enumerate(expected.tolist()))))
        assert_that(result["failures"], equal_to([]), label="NoFailures")


def test_configuration_errors_name_the_field_and_value(as_rows, service, model_files):
    bad = Inference(Model.sklearn(model_files["pickle"]), key_field="id", feature_fields="pixel")
    urn, payload = bad.to_runner_api_parameter(None)
    p = beam.Pipeline()
    rows = p | beam.Create(as_rows([[0.0] * 64]))
    with pytest.raises(RuntimeError, match="feature_fields\\[0\\]='pixel' is not a field of the input schema; available fields: id, pixels"):
        rows | ExternalTransform(urn, payload.SerializeToString(), service)


class _WritesMarker:
    """Unpickling this creates a file: proof that a payload was decoded."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.parametrize("urn", ["beam:transform:pickled_python:v1", "beam:transforms:python:fully_qualified_named"])
def test_foreign_urns_are_refused_before_their_payload_is_decoded(service, tmp_path, urn):
    marker = tmp_path / "marker"
    request = beam_expansion_api_pb2.ExpansionRequest(
        transform=beam_runner_api_pb2.PTransform(
            unique_name="attack",
            spec=beam_runner_api_pb2.FunctionSpec(urn=urn, payload=pickle.dumps(_WritesMarker(str(marker)))),
        ),
        namespace="attack",
    )
    with grpc.insecure_channel(service) as channel:
        response = beam_expansion_api_pb2_grpc.ExpansionServiceStub(channel).Expand(request)
    assert f"URN '{urn}' is not served by the InferBridge expansion service" in response.error
    assert not marker.exists()


def _start_service(*args):
    return subprocess.Popen(
        [sys.executable, "-m", "inferbridge.expansion_service", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_a_taken_port_fails_fast_with_a_clear_message(service):
    port = service.rsplit(":", 1)[1]
    process = _start_service("--port", port)
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}: the port is already in use" in output


def test_logs_its_address_once_and_stops_cleanly_on_sigterm():
    port = free_port()
    process = _start_service("--port", str(port))
    try:
        wait_until_serving(f"localhost:{port}", process, timeout_secs=60)
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
    assert process.returncode == 0
    listening = [line for line in output.splitlines() if "listening on" in line]
    assert len(listening) == 1, output
    assert f"listening on 127.0.0.1:{port}" in listening[0]
    assert "Apache Beam 2.77.0" in listening[0]


def test_pickles_outside_the_trusted_roots_are_refused(as_rows, service, digits_model, tmp_path):
    untrusted = tmp_path / "elsewhere.pkl"
    untrusted.write_bytes(pickle.dumps(digits_model))
    urn, payload = Inference(Model.sklearn(str(untrusted)), key_field="id", feature_fields="pixels").to_runner_api_parameter(None)
    p = beam.Pipeline()
    rows = p | beam.Create(as_rows([[0.0] * 64]))
    with pytest.raises(RuntimeError, match="--trusted-model-root"):
        rows | ExternalTransform(urn, payload.SerializeToString(), service)
