"""A Java project outside this build uses InferBridge from its published artifact.

`gradle :java:publishToMavenLocal` publishes dev.inferbridge:inferbridge-java into a temporary
Maven repository; the consumer project (examples/consumer, copied to a temporary folder so
nothing of this build is near it) is built and run against that repository with Maven and with
Gradle, inside the local expansion and job services, and its predictions must equal
scikit-learn's on the same pickle.

Maven copies what it resolves into its local repository and never fetches a release again, so
the Maven runs use a local repository of their own (``$INFERBRIDGE_TEST_MAVEN_REPO``, default
``~/.cache/inferbridge/maven-repository``: Beam's closure is downloaded there once, about 80 MB)
and delete ``dev/inferbridge`` from it first. Gradle reads a file repository in place.
"""

import csv
import os
import pickle
import re
import shutil
import subprocess
import time
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
# Generous: the first Maven run downloads Beam's dependencies and its plugins, and the machine
# may be busy. The whole test gets longer than its commands together.
COMMAND_TIMEOUT_SECS = 900
pytestmark = pytest.mark.timeout(2 * COMMAND_TIMEOUT_SECS + 300)
POM_NS = {"m": "http://maven.apache.org/POM/4.0.0"}


def run(command, cwd, env=None, what=None):
    """Runs command, returning its output (stdout and stderr together); fails showing the output's end."""
    what = what or command[0]
    started = time.monotonic()
    try:
        result = subprocess.run(
            command,
            cwd=cwd,
            env={**os.environ, **(env or {})},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=COMMAND_TIMEOUT_SECS,
        )
    except subprocess.TimeoutExpired as e:
        output = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        pytest.fail(f"{what} did not finish in {COMMAND_TIMEOUT_SECS} s; its output ended:\n{output[-8000:]}")
    print(f"{what}: {time.monotonic() - started:.1f} s")
    if result.returncode != 0:
        pytest.fail(f"{what} exited with {result.returncode}; its output ended:\n{result.stdout[-8000:]}")
    return result.stdout


def gradle_command():
    """./gradlew when its distribution is here, else the system Gradle (scripts/common.sh decides)."""
    out = subprocess.run(
        ["bash", "-c", f"source {ROOT}/scripts/common.sh; gradle_cmd"], capture_output=True, text=True
    )
    if out.returncode != 0:
        pytest.fail("no Gradle here: run scripts/bootstrap")
    return out.stdout.strip()


@pytest.fixture(scope="module")
def version():
    found = re.search(r"^\s*version\s*=\s*'([^']+)'", (ROOT / "build.gradle").read_text(), re.M)
    assert found, "no version = '...' in build.gradle"
    return found.group(1)


@pytest.fixture(scope="module")
def repository(tmp_path_factory, version):
    """A Maven repository holding the freshly published dev.inferbridge:inferbridge-java."""
    repo = tmp_path_factory.mktemp("inferbridge-maven-repository")
    run(
        ["bash", "-c", f'source scripts/common.sh; gradle_run :java:publishToMavenLocal "-Dmaven.repo.local={repo}"'],
        cwd=ROOT,
        what="gradle :java:publishToMavenLocal",
    )
    return repo


def published(repository, version, suffix):
    return repository / "dev/inferbridge/inferbridge-java" / version / f"inferbridge-java-{version}{suffix}"


def test_the_publication_has_jar_sources_and_a_pom_with_scopes(repository, version):
    pom = ET.parse(published(repository, version, ".pom")).getroot()
    assert pom.findtext("m:groupId", namespaces=POM_NS) == "dev.inferbridge"
    assert pom.findtext("m:artifactId", namespaces=POM_NS) == "inferbridge-java"
    assert pom.findtext("m:version", namespaces=POM_NS) == version
    assert pom.findtext("m:name", namespaces=POM_NS)
    assert pom.findtext("m:description", namespaces=POM_NS)
    scopes = {
        d.findtext("m:artifactId", namespaces=POM_NS): d.findtext("m:scope", namespaces=POM_NS)
        for d in pom.iterfind("m:dependencies/m:dependency", POM_NS)
    }
    assert scopes == {
        "beam-sdks-java-core": "compile",  # api
        "beam-model-pipeline": "runtime",  # implementation
        "beam-runners-portability-java": "runtime",  # implementation
        "jamm": "runtime",  # runtimeOnly
    }
    with zipfile.ZipFile(published(repository, version, ".jar")) as jar:
        names = set(jar.namelist())
    assert {"dev/inferbridge/Inference.class", "dev/inferbridge/LocalRun.class", "dev/inferbridge/steps_v1.json"} <= names
    with zipfile.ZipFile(published(repository, version, "-sources.jar")) as sources:
        assert "dev/inferbridge/Inference.java" in sources.namelist()


@pytest.fixture(scope="module")
def rows_and_expected(digits_dir, tmp_path_factory):
    """The held-out digits with one pixel of the first row made NaN (the model refuses it: one
    failure), and the lines the consumer must write: scikit-learn's prediction for every other
    row, and failures=1."""
    with open(digits_dir / "test_rows.csv") as f:
        rows = list(csv.reader(f))
    header, body = rows[0], rows[1:]
    body[0] = [*body[0][:5], "NaN", *body[0][6:]]
    path = tmp_path_factory.mktemp("consumer-input") / "rows.csv"
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([header, *body])
    with open(digits_dir / "digits.pkl", "rb") as f:
        model = pickle.load(f)
    good = body[1:]
    pixels = np.array([[float(v) for v in r[2:]] for r in good]) / 16
    predicted = model.predict_proba(pixels).argmax(axis=1)
    expected = {f"{r[0]},{p}" for r, p in zip(good, predicted)} | {"failures=1"}
    return path, expected


@pytest.fixture
def consumer(tmp_path):
    """A copy of examples/consumer, far from this build."""
    project = tmp_path / "consumer"
    shutil.copytree(ROOT / "examples/consumer", project, ignore=shutil.ignore_patterns("build", "target", ".gradle"))
    return project


def pipeline_args(digits_dir, rows, output):
    return [f"--model={digits_dir / 'digits.pkl'}", f"--input={rows}", f"--output={output}"]


def test_the_consumer_defaults_to_this_version(version):
    consumer = ROOT / "examples/consumer"
    assert f"<inferbridge.version>{version}</inferbridge.version>" in (consumer / "pom.xml").read_text()
    assert f": '{version}'" in (consumer / "build.gradle").read_text()


def test_maven_project_runs_a_pipeline_with_the_published_artifact(
    consumer, repository, version, services, digits_dir, rows_and_expected, tmp_path
):
    if shutil.which("mvn") is None:
        pytest.fail("mvn is not installed: run scripts/bootstrap")
    rows, expected = rows_and_expected
    local = Path(os.environ.get("INFERBRIDGE_TEST_MAVEN_REPO", Path.home() / ".cache/inferbridge/maven-repository"))
    shutil.rmtree(local / "dev/inferbridge", ignore_errors=True)  # a release, cached once: the fresh one
    output = tmp_path / "maven-predictions.txt"
    run(
        [
            "mvn", "-B", "--no-transfer-progress",
            f"-Dmaven.repo.local={local}",
            f"-Dinferbridge.repository={repository.as_uri()}",
            f"-Dinferbridge.version={version}",
            "compile", "exec:java",
            "-Dexec.args=" + " ".join(pipeline_args(digits_dir, rows, output)),
        ],
        cwd=consumer,
        env=services,
        what="mvn compile exec:java",
    )
    # Maven ran the jar just published, not an older copy.
    cached = local / "dev/inferbridge/inferbridge-java" / version / f"inferbridge-java-{version}.jar"
    assert cached.read_bytes() == published(repository, version, ".jar").read_bytes()
    assert set(output.read_text().split()) == expected


def test_gradle_project_runs_a_pipeline_with_the_published_artifact(
    consumer, repository, version, services, digits_dir, rows_and_expected, tmp_path
):
    rows, expected = rows_and_expected
    output = tmp_path / "gradle-predictions.txt"
    printed = run(
        [
            gradle_command(), "--no-daemon", "--console=plain", "--project-dir", str(consumer),
            f"-PinferbridgeRepository={repository}",
            f"-PinferbridgeVersion={version}",
            "-PpipelineArgs=" + " ".join(pipeline_args(digits_dir, rows, output)),
            "run",
        ],
        cwd=consumer,
        env=services,
        what="gradle run",
    )
    assert set(output.read_text().split()) == expected
    # A successful run is quiet: Beam's logs (here on slf4j-simple, whose lines read
    # "[thread] LEVEL logger - message") stop at warnings, and none is printed.
    logged = [line for line in printed.splitlines() if re.match(r"\[[^\]]+\] (TRACE|DEBUG|INFO|WARN|ERROR) ", line)]
    assert logged == [], logged[:10]
