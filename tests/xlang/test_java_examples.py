"""The Java examples, each run as a real JVM pipeline and checked against the frameworks."""

import csv
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

TIMEOUT_SECS = 300
# The examples' own Python modules (digits_net: the PyTorch network's class).
EXAMPLE_MODULES = Path(__file__).resolve().parents[2] / "examples/digits"


def run_example(classpath, env, name, *args):
    result = subprocess.run(
        ["java", "-cp", classpath, f"dev.inferbridge.examples.{name}", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=TIMEOUT_SECS,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return result.stdout.strip().splitlines()


@pytest.fixture(scope="module")
def held_out(digits_examples_dir):
    with open(digits_examples_dir / "test_rows.csv") as f:
        rows = list(csv.reader(f))[1:]
    ids = np.array([int(r[0]) for r in rows])
    labels = np.array([int(r[1]) for r in rows])
    pixels = np.array([[float(v) for v in r[2:]] for r in rows]) / 16
    return ids, labels, pixels


def load(data, name):
    with open(data / name, "rb") as f:
        return pickle.load(f)


def test_ab_comparison_evaluates_both_models(java_classpath, services, digits_examples_dir, held_out, tmp_path):
    _, labels, pixels = held_out
    lines = run_example(java_classpath, services, "AbComparison", f"--dataDir={digits_examples_dir}", f"--outputDir={tmp_path}")
    for model_id, file in (("a", "digits.pkl"), ("b", "digits_b.pkl")):
        predicted = load(digits_examples_dir, file).predict_proba(pixels).argmax(axis=1)
        accuracy = int((predicted == labels).sum()) / len(labels)
        assert f"model={model_id} accuracy={accuracy!r} rows={len(labels)}" in lines


def test_cascade_feeds_model_a_through_a_step_into_model_b(java_classpath, services, digits_examples_dir, held_out, tmp_path):
    ids, labels, pixels = held_out
    lines = run_example(java_classpath, services, "Cascade", f"--dataDir={digits_examples_dir}", f"--outputDir={tmp_path}")
    probabilities = load(digits_examples_dir, "digits.pkl").predict_proba(pixels)
    softmax = np.exp(probabilities - probabilities.max(axis=1, keepdims=True))
    softmax /= softmax.sum(axis=1, keepdims=True)
    high = load(digits_examples_dir, "cascade_high.pkl").predict(softmax)
    expected = {f"{i},{label},{'high' if h else 'low'}" for i, label, h in zip(ids, labels, high)}
    assert set((tmp_path / "cascade.csv").read_text().split()) == expected
    assert lines[-1] == f"rows={len(ids)} high={int(high.sum())}"


def test_per_key_models_with_a_memory_bound(java_classpath, services, digits_examples_dir, held_out, tmp_path):
    ids, _, pixels = held_out
    lines = run_example(java_classpath, services, "PerKeyModels", f"--dataDir={digits_examples_dir}", f"--outputDir={tmp_path}")
    regions = ["north", "south", "east", "west", "centre", "islands"]
    models = [load(digits_examples_dir, f"region_{i}.pkl") for i in range(3)]
    expected = set()
    for i, row in zip(ids, pixels):
        model = (i % 6) // 2
        expected.add(f"{i},{regions[i % 6]},region_{model},{int(round(models[model].predict(row[None])[0]))}")
    assert set((tmp_path / "predictions.csv").read_text().split()) == expected
    assert lines[-1] == f"rows={len(ids)} models=3"


@pytest.mark.parametrize("block_size", [0, 64], ids=["rows", "blocks"])
def test_dead_letters_conserve_every_row(java_classpath, services, digits_examples_dir, tmp_path, block_size):
    with open(digits_examples_dir / "test_rows.csv") as f:
        rows = list(csv.reader(f))
    header, body = rows[0], rows[1:]
    bad = [
        [body[0][0], body[0][1], *body[0][2:40]],  # too few pixels
        [body[1][0], body[1][1], "NaN", "Infinity", *body[1][4:]],  # the model refuses non-finite pixels
        [body[2][0], body[2][1], "dark", *body[2][3:]],  # not a number: no pixels at all
        [body[3][0], body[3][1], *body[3][2:7], "", *body[3][8:]],  # a null pixel, at position 5
        [body[4][0], body[4][1]],  # an empty pixel array
    ]
    data = tmp_path / "rows.csv"
    with open(data, "w", newline="") as f:
        csv.writer(f).writerows([header, *bad, *body[len(bad):]])
    out = tmp_path / "out"
    lines = run_example(
        java_classpath, services, "DeadLetters", f"--dataDir={digits_examples_dir}", f"--input={data}",
        f"--outputDir={out}", f"--blockSize={block_size}",
    )
    assert lines[-1] == f"rows={len(body)} inferences={len(body) - len(bad)} failures={len(bad)}"
    failures = {f["key"]: f for f in map(json.loads, (out / "failures.jsonl").read_text().splitlines())}
    stages = ["inference", "inference", "input", "input", "input"]
    assert {k: f["stage"] for k, f in failures.items()} == {row[0]: stage for row, stage in zip(bad, stages)}
    assert "null" in failures[body[2][0]]["message"]
    assert "null at position 5" in failures[body[3][0]]["message"], failures[body[3][0]]
    assert "empty" in failures[body[4][0]]["message"], failures[body[4][0]]
    # Jackson (in the example) read each element back; so does Python's parser, strictly.
    assert sorted((out / "failed_rows.csv").read_text().split()) == sorted(f"{row[0]},{stage}" for row, stage in zip(bad, stages))
    non_finite = json.loads(failures[body[1][0]]["element"], parse_constant=lambda token: pytest.fail(f"not strict JSON: {token}"))
    assert non_finite["pixels"][:3] == ["NaN", "Infinity", float(body[1][4])]


def test_pytorch_model_from_java(java_classpath, services, digits_examples_dir, held_out, tmp_path):
    import torch

    ids, labels, pixels = held_out
    lines = run_example(java_classpath, services, "PytorchDigits", f"--dataDir={digits_examples_dir}", f"--outputDir={tmp_path}")
    net = torch.jit.load(str(digits_examples_dir / "digits.ts"))
    with torch.no_grad():
        predicted = net(torch.tensor(pixels, dtype=torch.float32)).argmax(dim=1).numpy()
    expected = {f"{i},{label},{p}" for i, label, p in zip(ids, labels, predicted)}
    assert set((tmp_path / "predictions.csv").read_text().split()) == expected
    assert lines[-1] == f"rows={len(ids)} correct={int((predicted == labels).sum())}"


def under_inferbridge_local(classpath, local_args, name, *args):
    return subprocess.run(
        [
            os.path.join(os.path.dirname(sys.executable), "inferbridge-local"), *local_args, "--",
            "java", "-cp", classpath, f"dev.inferbridge.examples.{name}", *args,
        ],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_SECS,
    )


def test_a_state_dict_model_class_from_the_python_path(java_classpath, digits_examples_dir, held_out, tmp_path):
    import torch

    ids, labels, pixels = held_out
    policy = [f"--trusted-model-root={digits_examples_dir}", "--allow-model-class=digits_net"]
    args = [f"--dataDir={digits_examples_dir}", f"--outputDir={tmp_path}", "--stateDict"]
    result = under_inferbridge_local(java_classpath, [*policy, f"--python-path={EXAMPLE_MODULES}"], "PytorchDigits", *args)
    assert result.returncode == 0, result.stderr[-4000:]
    net = torch.jit.load(str(digits_examples_dir / "digits.ts"))  # the same weights
    with torch.no_grad():
        predicted = net(torch.tensor(pixels, dtype=torch.float32)).argmax(dim=1).numpy()
    assert set((tmp_path / "predictions.csv").read_text().split()) == {f"{i},{label},{p}" for i, label, p in zip(ids, labels, predicted)}
    # Without the folder on the service's import path: refused when built, saying how to fix it.
    result = under_inferbridge_local(java_classpath, policy, "PytorchDigits", *args)
    assert result.returncode != 0
    assert (
        "models[0].options.model_class='digits_net:DigitsNet' cannot be imported by the process that builds the "
        "pipeline (No module named 'digits_net'); put its module's directory on the import path: "
        "inferbridge-local --python-path=DIR"
    ) in result.stderr, result.stderr[-4000:]


def test_most_builder_options_reach_the_python_composite(java_classpath, services, digits_examples_dir, held_out, tmp_path):
    """Skops + ONNX keyed by parity, a sha256 pin, a model update (the skops model becomes
    region_0 for every row: in a batch pipeline the update is known before any row), two feature
    fields, passthrough fields, batching, padding, a resource hint, a metrics namespace."""
    import onnxruntime
    import skops.io

    ids, labels, pixels = held_out
    lines = run_example(java_classpath, services, "OptionsTour", f"--dataDir={digits_examples_dir}", f"--outputDir={tmp_path}")
    updated = skops.io.load(digits_examples_dir / "region_0.skops")
    session = onnxruntime.InferenceSession(str(digits_examples_dir / "digits.onnx"), providers=["CPUExecutionProvider"])
    onnx_out = session.run(None, {session.get_inputs()[0].name: pixels.astype(np.float32)})[-1].argmax(axis=1)
    skops_out = updated.predict_proba(pixels).argmax(axis=1)
    expected = {
        f"{i},{label},{'skops' if i % 2 == 0 else 'onnx'},{(skops_out if i % 2 == 0 else onnx_out)[n]}"
        for n, (i, label) in enumerate(zip(ids, labels))
    }
    assert set((tmp_path / "predictions.csv").read_text().split()) == expected
    assert lines[-1] == f"rows={len(ids)} failures=0"
