"""The composite with every model framework, and variable-length inputs."""

import apache_beam as beam
import numpy as np
import pytest
import torch
from apache_beam.testing.util import assert_that, equal_to
from skl2onnx import to_onnx
import tiny_torch

from inferbridge import Inference, Model, Step
from inferbridge.policy import LoadPolicy


@pytest.fixture(scope="module")
def net(digits):
    """A TinyNet trained a few steps on pixels / 16."""
    pixels, labels = digits
    return tiny_torch.train(pixels[:600] / 16, labels[:600], steps=40)


@pytest.fixture(scope="module")
def files(net, digits_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("frameworks")
    paths = {"state_dict": root / "net.pt", "torchscript": root / "net.ts", "onnx": root / "digits.onnx", "skops": root / "digits.skops"}
    torch.save(net.state_dict(), paths["state_dict"])
    torch.jit.script(net).save(str(paths["torchscript"]))
    onnx_model = to_onnx(digits_model, np.zeros((1, 64), np.float32), options={id(digits_model): {"zipmap": False}})
    paths["onnx"].write_bytes(onnx_model.SerializeToString())
    import skops.io

    skops.io.dump(digits_model, paths["skops"])
    return {k: str(v) for k, v in paths.items()}, root


def rows(pixels):
    return [beam.Row(id=i, pixels=[float(v) for v in p]) for i, p in enumerate(pixels)]


def test_pytorch_state_dict_and_torchscript(files, net, held_out):
    paths, root = files
    pixels, _ = held_out
    expected = net(torch.tensor(pixels / 16, dtype=torch.float32)).argmax(dim=1).tolist()
    policy = LoadPolicy(trusted_roots=(str(root),), allowed_model_classes=("tiny_torch",))
    for model in (
        Model.pytorch(paths["state_dict"], model_class="tiny_torch:TinyNet", model_params={"n_hidden": 16}),
        Model.pytorch(paths["torchscript"]),
    ):
        with beam.Pipeline() as p:
            result = p | beam.Create(rows(pixels)) | Inference(
                model, key_field="id", feature_fields="pixels",
                preprocess=[Step("scale", factor=1 / 16)], postprocess=[Step("argmax")], policy=policy,
            )
            assert_that(result.inferences | beam.Map(lambda r: (r.key, r.inference)), equal_to(list(enumerate(expected))))


def test_state_dict_models_need_an_allowed_class(files):
    paths, _ = files
    p = beam.Pipeline()
    with pytest.raises(ValueError, match="tiny_torch"):
        p | beam.Create(rows(np.zeros((1, 64)))) | Inference(
            Model.pytorch(paths["state_dict"], model_class="tiny_torch:TinyNet"), key_field="id", feature_fields="pixels", policy=LoadPolicy()
        )


@pytest.mark.parametrize("model_format", ["onnx", "skops"])
def test_safe_formats_load_from_anywhere_without_trust(files, digits_model, held_out, model_format):
    paths, _ = files
    pixels, _ = held_out
    model = Model.onnx(paths["onnx"]) if model_format == "onnx" else Model.sklearn(paths["skops"], format="skops", output="predict_proba")
    expected = digits_model.predict_proba(pixels / 16).argmax(axis=1).tolist()
    with beam.Pipeline() as p:
        result = p | beam.Create(rows(pixels)) | Inference(
            model, key_field="id", feature_fields="pixels",
            preprocess=[Step("scale", factor=1 / 16)], postprocess=[Step("argmax")], policy=LoadPolicy(),
        )
        assert_that(result.inferences | beam.Map(lambda r: (r.key, r.inference)), equal_to(list(enumerate(expected))))


def test_an_onnx_output_name_the_model_lacks_fails_its_rows_once_per_load(files, held_out):
    """Checked when the model loads: every row fails naming the outputs there are, and no
    batch is split trying to isolate a bad row."""
    paths, _ = files
    pixels, _ = held_out
    p = beam.Pipeline()
    result = p | beam.Create(rows(pixels[:30])) | Inference(
        Model.onnx(paths["onnx"], options={"output_name": "probs"}), key_field="id", feature_fields="pixels",
        max_batch_size=10, policy=LoadPolicy(),
    )
    assert_that(result.inferences, equal_to([]))
    assert_that(
        result.failures | beam.Map(lambda f: (f.stage, f.message)),
        equal_to([("inference", "models[0].options.output_name='probs' is not an output of the model; allowed: label, probabilities")] * 30),
        label="Failures",
    )
    run = p.run()
    run.wait_until_finish()
    counters = {c.key.metric.name: c.committed for c in run.metrics().query()["counters"] if c.key.metric.namespace == "InferBridge"}
    assert counters["model_load_failures"] == 1
    assert [v for k, v in counters.items() if k.endswith("_batch_splits")] == [0]


def test_an_allowlisted_beam_handler_by_name(tmp_path, digits, held_out):
    import xgboost

    features, labels = digits
    booster = xgboost.XGBClassifier(n_estimators=10, max_depth=3).fit(features[:600] / 16, labels[:600])
    path = str(tmp_path / "digits.json")
    booster.save_model(path)
    pixels, _ = held_out
    expected = booster.predict(pixels / 16).tolist()
    with beam.Pipeline() as p:
        result = p | beam.Create(rows(pixels)) | Inference(
            Model.handler("xgboost_numpy", path, output="number", options={"model_class": "XGBClassifier"}),
            key_field="id", feature_fields="pixels",
            preprocess=[Step("scale", factor=1 / 16)], postprocess=[Step("round")], policy=LoadPolicy(),
        )
        assert_that(result.inferences | beam.Map(lambda r: (r.key, r.inference)), equal_to(list(enumerate(expected))))


class _Sum(torch.nn.Module):
    """Sums each sequence: any length, and zero padding does not change the result."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.sum(dim=-1, keepdim=True)


@pytest.mark.parametrize("variable_length", ["bucket", "pad"])
def test_variable_length_inputs_are_bucketed_or_padded(tmp_path, variable_length):
    path = str(tmp_path / "sum.ts")
    torch.jit.script(_Sum()).save(path)
    sequences = [[float(v) for v in range(n)] for n in (3, 5, 3, 8, 1, 5, 8, 2)]
    with beam.Pipeline() as p:
        result = p | beam.Create([beam.Row(id=i, tokens=s) for i, s in enumerate(sequences)]) | Inference(
            Model.pytorch(path, output="number"),
            key_field="id",
            feature_fields="tokens",
            variable_length=variable_length,
            min_batch_size=len(sequences),
            max_batch_size=len(sequences),
            policy=LoadPolicy(trusted_roots=(str(tmp_path),)),
        )
        assert_that(result.inferences | beam.Map(lambda r: (r.key, r.inference)), equal_to([(i, float(sum(s))) for i, s in enumerate(sequences)]))
        assert_that(result.failures, equal_to([]), label="NoFailures")


def test_padding_comes_after_every_preprocessing_step(tmp_path):
    """The model sees pad_value itself, not a normalised pad value."""
    path = str(tmp_path / "sum.ts")
    torch.jit.script(_Sum()).save(path)
    with beam.Pipeline() as p:
        result = p | beam.Create([beam.Row(id=0, tokens=[1.0, 2.0, 3.0]), beam.Row(id=1, tokens=[1.0, 2.0, 3.0, 4.0])]) | Inference(
            Model.pytorch(path, output="number"),
            key_field="id",
            feature_fields="tokens",
            preprocess=[Step("normalize", mean=1, std=1)],
            variable_length="pad",
            pad_value=-5.0,
            min_batch_size=2,
            max_batch_size=2,
            policy=LoadPolicy(trusted_roots=(str(tmp_path),)),
        )
        assert_that(
            result.inferences | beam.Map(lambda r: (r.key, r.example, r.inference)),
            equal_to([(0, [0.0, 1.0, 2.0, -5.0], -2.0), (1, [0.0, 1.0, 2.0, 3.0], 6.0)]),
        )


def _scalar_rows(values):
    return [beam.Row(id=i, **{f"f{j}": float(v) for j, v in enumerate(row)}) for i, row in enumerate(values)]


def test_an_onnx_models_declared_width_is_checked_when_the_pipeline_is_built(tmp_path):
    from sklearn.linear_model import LogisticRegression

    x = np.random.default_rng(0).normal(size=(40, 4))
    model = LogisticRegression().fit(x, (x[:, 0] > 0).astype(int))
    path = tmp_path / "four.onnx"
    path.write_bytes(to_onnx(model, x[:1].astype(np.float32), options={id(model): {"zipmap": False}}).SerializeToString())
    # Three numeric feature fields give 3 features; the file declares 4.
    with pytest.raises(ValueError) as raised:
        with beam.Pipeline() as p:
            p | beam.Create(_scalar_rows(x[:, :3])) | Inference(
                Model.onnx(str(path)), key_field="id", feature_fields=["f0", "f1", "f2"], preprocess=[Step("scale", factor=2.0)]
            )
    assert str(raised.value) == (
        f"models[0].uri='{path}' declares examples of shape (4,); feature_fields ['f0', 'f1', 'f2'] give examples of "
        "shape (3,); allowed: feature fields (and preprocess steps) that give the shape the model declares"
    )
    # Four fit, and the model answers as onnxruntime's own session does.
    with beam.Pipeline() as p:
        result = p | beam.Create(_scalar_rows(x[:5])) | Inference(
            Model.onnx(str(path)), key_field="id", feature_fields=["f0", "f1", "f2", "f3"], postprocess=[Step("argmax")]
        )
        assert_that(result.inferences | beam.Map(lambda r: (r.key, r.inference)), equal_to(list(enumerate(model.predict(x[:5]).tolist()))))
