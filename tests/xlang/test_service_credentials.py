"""Java pipelines reaching an expansion service that requires TLS and a bearer token.

The service is the real ``inferbridge-expansion-service`` with the test certificate of the Java
tests (``java/src/test/resources/dev/inferbridge/tls``, self-signed for localhost) and a token
file. The digits example runs end to end with the credentials from the environment
(``$INFERBRIDGE_TLS_CA_FILE``, ``$INFERBRIDGE_AUTH_TOKEN_FILE``); a small program compiled here
expands ``Inference`` and ``Evaluate`` with ``withServiceCredentials``. Missing, wrong and
untrusted credentials fail with the Java library's messages, which never show the token.
"""

import contextlib
import os
import secrets
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from inferbridge.local_runner import job_service
from inferbridge.local_services import expansion_service, free_port
from digits_support import sklearn_predictions

ROOT = Path(__file__).resolve().parents[2]
TLS_DIR = ROOT / "java/src/test/resources/dev/inferbridge/tls"
SERVER_PEM = TLS_DIR / "server.pem"
SERVER_KEY = TLS_DIR / "server.key"
OTHER_PEM = TLS_DIR / "other.pem"
CLIENT_PEM = TLS_DIR / "client.pem"
CLIENT_KEY = TLS_DIR / "client.key"
DIGITS_CLASS = "dev.inferbridge.examples.DigitsClassification"
TIMEOUT_SECS = 300

# Expands Inference (with a passthrough label) and Evaluate through the service at args[0], with
# the credentials args[1] names ("env": none given, so the environment's), then prints the output
# fields. Expansion happens while the pipeline is built; it is never run.
PROGRAM = textwrap.dedent(
    """
    import dev.inferbridge.Evaluate;
    import dev.inferbridge.Inference;
    import dev.inferbridge.ServiceCredentials;
    import dev.inferbridge.SklearnModel;
    import java.util.Collections;
    import org.apache.beam.sdk.Pipeline;
    import org.apache.beam.sdk.options.PipelineOptions;
    import org.apache.beam.sdk.options.PipelineOptionsFactory;
    import org.apache.beam.sdk.schemas.Schema;
    import org.apache.beam.sdk.schemas.Schema.FieldType;
    import org.apache.beam.sdk.testing.CrashingRunner;
    import org.apache.beam.sdk.transforms.Create;
    import org.apache.beam.sdk.values.PCollection;
    import org.apache.beam.sdk.values.Row;

    public class ExpandWithCredentials {
      public static void main(String[] args) {
        String address = args[0];
        String model = args[2];
        ServiceCredentials credentials;
        switch (args[1]) {
          case "env": credentials = null; break;
          case "none": credentials = ServiceCredentials.none(); break;
          case "tls+token-file": credentials = ServiceCredentials.tls(args[3]).withTokenFromFile(args[4]); break;
          case "tls+token": credentials = ServiceCredentials.tls(args[3]).withToken(args[4]); break;
          case "mtls+token-file":
            credentials = ServiceCredentials.tls(args[3]).withTokenFromFile(args[4]).withClientCertificate(args[5], args[6]);
            break;
          default: throw new IllegalArgumentException(args[1]);
        }
        PipelineOptions options = PipelineOptionsFactory.create();
        options.setRunner(CrashingRunner.class);
        Pipeline pipeline = Pipeline.create(options);
        Schema schema =
            Schema.builder().addInt64Field("id").addArrayField("pixels", FieldType.DOUBLE).addInt64Field("label").build();
        PCollection<Row> rows = pipeline.apply(
            Create.of(Row.withSchema(schema).addValues(1L, Collections.nCopies(64, 0.0), 3L).build()).withRowSchema(schema));
        Inference inference = Inference.of(SklearnModel.pickle(model))
            .withKeyField("id").withFeatureField("pixels").withPassthroughFields("label").withExpansionService(address);
        Evaluate evaluate = Evaluate.of("label").withExpansionService(address);
        if (credentials != null) {
          inference = inference.withServiceCredentials(credentials);
          evaluate = evaluate.withServiceCredentials(credentials);
        }
        PCollection<Row> inferences = rows.apply(inference).getInferences();
        PCollection<Row> quality = inferences.apply(evaluate);
        System.out.println("inferences: " + inferences.getSchema().getFieldNames());
        System.out.println("quality: " + quality.getSchema().getFieldNames());
      }
    }
    """
)


@pytest.fixture(scope="module")
def token():
    return secrets.token_urlsafe(24)


@pytest.fixture(scope="module")
def token_file(tmp_path_factory, token):
    path = tmp_path_factory.mktemp("token") / "token"
    path.write_text(token + "\n")
    return path


@pytest.fixture(scope="module")
def secure_service(digits_dir, token_file):
    """A TLS expansion service requiring the token, and a job service; yields their addresses."""
    args = [
        f"--tls-cert-file={SERVER_PEM}",
        f"--tls-key-file={SERVER_KEY}",
        f"--auth-token-file={token_file}",
        f"--trusted-model-root={digits_dir}",
    ]
    with expansion_service(service_args=args, tls_ca_file=str(SERVER_PEM)) as address, job_service() as jobs:
        yield address, jobs


@contextlib.contextmanager
def mutual_tls_service(service_args, timeout_secs=60):
    """Like ``expansion_service``, for a service that requires client certificates: its readiness
    is checked with the test client certificate (``expansion_service``'s check sends none)."""
    port = free_port()
    address = f"localhost:{port}"
    process = subprocess.Popen(
        [sys.executable, "-m", "inferbridge.expansion_service", "--port", str(port), "--log-level", "WARNING", *service_args]
    )
    credentials = grpc.ssl_channel_credentials(
        root_certificates=SERVER_PEM.read_bytes(), private_key=CLIENT_KEY.read_bytes(), certificate_chain=CLIENT_PEM.read_bytes()
    )
    try:
        deadline = time.monotonic() + timeout_secs
        while True:
            assert process.poll() is None, f"the expansion service exited with status {process.returncode}"
            with grpc.secure_channel(address, credentials) as channel:
                try:
                    health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
                    break
                except grpc.RpcError:
                    assert time.monotonic() < deadline, f"the expansion service did not serve on {address}"
                    time.sleep(0.2)
        yield address
    finally:
        process.terminate()
        process.wait(timeout=60)


@pytest.fixture(scope="module")
def program(java_classpath, tmp_path_factory):
    """The classpath of ExpandWithCredentials, compiled here against the Java library."""
    out = tmp_path_factory.mktemp("program")
    source = out / "ExpandWithCredentials.java"
    source.write_text(PROGRAM)
    subprocess.run(["javac", "-cp", java_classpath, "-d", str(out), str(source)], check=True, timeout=TIMEOUT_SECS)
    return f"{out}{os.pathsep}{java_classpath}"


def java(classpath, main, *args, env=()):
    """Runs ``main``; the environment has no InferBridge variables but those of ``env``."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("INFERBRIDGE_")}
    return subprocess.run(
        ["java", "-cp", classpath, main, *map(str, args)],
        env={**clean, **dict(env)},
        capture_output=True,
        text=True,
        timeout=TIMEOUT_SECS,
    )


def expand(program, address, digits_dir, *credentials, env=()):
    return java(program, "ExpandWithCredentials", address, *credentials[:1], digits_dir / "digits.pkl",
                *credentials[1:], env=env)


def assert_expanded(result):
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stdout.splitlines()[-2:] == [
        "inferences: [key, example, inference, model_id, label]",
        "quality: [model_id, count, correct, accuracy, classes, precision, recall, macro_precision, macro_recall, "
        "confusion, unlabeled]",
    ]


def test_pipeline_through_tls_and_token_from_the_environment_matches_scikit_learn(
    java_classpath, secure_service, digits_dir, token_file, tmp_path
):
    address, jobs = secure_service
    predictions = tmp_path / "predictions.csv"
    result = java(
        java_classpath, DIGITS_CLASS, f"--modelDir={digits_dir}", f"--predictionsFile={predictions}",
        env={
            "INFERBRIDGE_EXPANSION_SERVICE": address,
            "INFERBRIDGE_JOB_ENDPOINT": jobs,
            "INFERBRIDGE_TLS_CA_FILE": str(SERVER_PEM),
            "INFERBRIDGE_AUTH_TOKEN_FILE": str(token_file),
        },
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert "failures=0" in result.stdout.splitlines()
    with open(predictions) as f:
        found = {int(k): int(v) for k, v in (line.strip().split(",") for line in f if line.strip())}
    assert found == sklearn_predictions(digits_dir)


def test_explicit_credentials_expand_inference_and_evaluate(program, secure_service, digits_dir, token_file, token):
    address, _ = secure_service
    assert_expanded(expand(program, address, digits_dir, "tls+token-file", SERVER_PEM, token_file))
    assert_expanded(expand(program, address, digits_dir, "tls+token", SERVER_PEM, token))
    assert_expanded(
        expand(program, address, digits_dir, "env", env={"INFERBRIDGE_AUTH_TOKEN": token, "INFERBRIDGE_TLS_CA_FILE": str(SERVER_PEM)})
    )


def test_missing_token_says_how_to_give_one(program, secure_service, digits_dir):
    address, _ = secure_service
    result = expand(program, address, digits_dir, "env", env={"INFERBRIDGE_TLS_CA_FILE": str(SERVER_PEM)})
    assert result.returncode != 0
    assert (
        f"Inference: the InferBridge expansion service at {address} requires a bearer token, and none was sent "
        "(UNAUTHENTICATED: InferBridge expansion service: no bearer token was sent;" in result.stderr
    ), result.stderr[-4000:]
    assert (
        "with withServiceCredentials(ServiceCredentials.token(token)) or withServiceCredentials("
        'ServiceCredentials.tokenFromFile("/path/to/token")), or set $INFERBRIDGE_AUTH_TOKEN or '
        "$INFERBRIDGE_AUTH_TOKEN_FILE" in result.stderr
    )


def test_wrong_token_is_rejected_without_showing_either_token(program, secure_service, digits_dir, token):
    address, _ = secure_service
    wrong = secrets.token_urlsafe(24)
    for credentials, env, origin in (
        (["env"], {"INFERBRIDGE_AUTH_TOKEN": wrong, "INFERBRIDGE_TLS_CA_FILE": str(SERVER_PEM)}, "$INFERBRIDGE_AUTH_TOKEN"),
        (["tls+token", SERVER_PEM, wrong], {}, "withToken()"),
    ):
        result = expand(program, address, digits_dir, *credentials, env=env)
        assert result.returncode != 0
        assert (
            f"Inference: the InferBridge expansion service at {address} rejected the bearer token given by {origin} "
            "(UNAUTHENTICATED: InferBridge expansion service: the bearer token was rejected;" in result.stderr
        ), result.stderr[-4000:]
        output = result.stdout + result.stderr
        assert wrong not in output and token not in output


def test_untrusted_certificate_fails_the_handshake_naming_the_file(program, secure_service, digits_dir, token):
    address, _ = secure_service
    result = expand(program, address, digits_dir, "tls+token", OTHER_PEM, token)
    assert result.returncode != 0
    assert f"Inference: the TLS handshake with the InferBridge expansion service at {address} failed (" in result.stderr, (
        result.stderr[-4000:]
    )
    assert f"TLS trusts the certificate file {OTHER_PEM} (given by ServiceCredentials.tls(\"{OTHER_PEM}\"))" in result.stderr


def test_plaintext_to_the_tls_service_suggests_trusting_its_certificate(program, secure_service, digits_dir):
    address, _ = secure_service
    result = expand(program, address, digits_dir, "none")
    assert result.returncode != 0
    assert f"Inference: the InferBridge expansion service at {address} closed the connection (UNAVAILABLE" in result.stderr, (
        result.stderr[-4000:]
    )
    assert (
        "); if the service uses TLS (--tls-cert-file), trust its certificate with "
        'withServiceCredentials(ServiceCredentials.tls("/path/to/ca.pem")) or $INFERBRIDGE_TLS_CA_FILE' in result.stderr
    )


def test_mutual_tls_presents_the_client_certificate(program, digits_dir, token_file):
    args = [
        f"--tls-cert-file={SERVER_PEM}",
        f"--tls-key-file={SERVER_KEY}",
        f"--tls-client-ca-file={CLIENT_PEM}",
        f"--auth-token-file={token_file}",
        f"--trusted-model-root={digits_dir}",
    ]
    with mutual_tls_service(args) as address:
        assert_expanded(
            expand(program, address, digits_dir, "mtls+token-file", SERVER_PEM, token_file, CLIENT_PEM, CLIENT_KEY)
        )
        assert_expanded(
            expand(program, address, digits_dir, "env", env={
                "INFERBRIDGE_TLS_CA_FILE": str(SERVER_PEM),
                "INFERBRIDGE_AUTH_TOKEN_FILE": str(token_file),
                "INFERBRIDGE_TLS_CLIENT_CERT_FILE": str(CLIENT_PEM),
                "INFERBRIDGE_TLS_CLIENT_KEY_FILE": str(CLIENT_KEY),
            })
        )
        # Without a client certificate, the service closes the connection once TLS is set up.
        result = expand(program, address, digits_dir, "tls+token-file", SERVER_PEM, token_file)
        assert result.returncode != 0
        assert f"Inference: the InferBridge expansion service at {address} closed the connection (" in result.stderr, (
            result.stderr[-4000:]
        )
        assert (
            "if the service requires client certificates (--tls-client-ca-file), give one with "
            "ServiceCredentials.withClientCertificate(certPem, keyPem)" in result.stderr
        )
