"""Model checks (inferbridge.model_checks), frameworks and loading (inferbridge.frameworks,
inferbridge.models), and the load policy (inferbridge.policy).

Every model is real and tiny, trained here: scikit-learn's LogisticRegression and a small
PyTorch MLP on scikit-learn's bundled digits, and ONNX exports of both. Predictions are compared
with the framework's own.
"""

import hashlib
import logging
import os
import pickle
import sys

import apache_beam as beam
import joblib
import numpy as np
import pytest
import skops.io
import torch
from apache_beam.ml.inference.base import RunInference
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import assert_that
from skl2onnx import to_onnx
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer
import tiny_torch
from tiny_torch import TinyNet

from inferbridge import frameworks, model_checks, model_files, models, steps
from inferbridge import policy as policy_module
from inferbridge.policy import (
    ALLOWED_CLASSES_ENV,
    ANY,
    MODEL_ROOTS_ENV,
    TRUSTED_ROOTS_ENV,
    LoadPolicy,
)
from inferbridge.spec import Model

pytestmark = [
    pytest.mark.filterwarnings("ignore:The feature will be removed:DeprecationWarning"),  # torch.onnx
    pytest.mark.filterwarnings("ignore:Specified provider 'CUDAExecutionProvider':UserWarning"),
]
ANYTHING = LoadPolicy.unrestricted()
NET_CLASS = "tiny_torch:TinyNet"


# Tiny models, trained once per module.


@pytest.fixture(scope="module")
def digits():
    """(training pixels, training labels, 60 held-out rows), pixels scaled to [0, 1]."""
    pixels, labels = load_digits(return_X_y=True)
    pixels = pixels / 16
    rows = pixels[1000:1060]
    assert len({r.tobytes() for r in rows}) == len(rows)
    return pixels[:600], labels[:600], rows


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="module")
def classifiers(digits):
    """Two LogisticRegressions whose probabilities differ: "a" and "b"."""
    pixels, labels, _ = digits
    return {
        "a": LogisticRegression(max_iter=3000).fit(pixels, labels),
        "b": LogisticRegression(C=0.05, max_iter=3000).fit(pixels, labels),
    }


@pytest.fixture(scope="module")
def sk_files(classifiers, root):
    """{(format, name): path} for both classifiers in pickle, joblib and skops form."""
    files = {}
    for name, clf in classifiers.items():
        files["pickle", name] = str(root / f"{name}.pkl")
        with open(files["pickle", name], "wb") as f:
            pickle.dump(clf, f)
        files["joblib", name] = str(root / f"{name}.joblib")
        joblib.dump(clf, files["joblib", name])
        files["skops", name] = str(root / f"{name}.skops")
        skops.io.dump(clf, files["skops", name])
    return files


@pytest.fixture(scope="module")
def nets(digits):
    """Two TinyNets trained a few steps from different seeds: "a" and "b"."""
    pixels, labels, _ = digits
    return {name: tiny_torch.train(pixels, labels, seed=seed) for name, seed in (("a", 0), ("b", 1))}


@pytest.fixture(scope="module")
def torch_files(nets, root):
    """{(format, name): path} for both nets as state_dict and TorchScript."""
    files = {}
    for name, net in nets.items():
        files["state_dict", name] = str(root / f"{name}.pt")
        torch.save(net.state_dict(), files["state_dict", name])
        files["torchscript", name] = str(root / f"{name}.ts")
        torch.jit.script(net).save(files["torchscript", name])
    return files


@pytest.fixture(scope="module")
def onnx_files(classifiers, nets, root):
    """Both classifiers via skl2onnx (probabilities as a tensor), "a" also with skl2onnx's
    default ZipMap output, and net "a" via torch.onnx.export."""
    sample = np.zeros((1, 64), np.float32)
    files = {}
    for name, clf in classifiers.items():
        files[name] = str(root / f"{name}.onnx")
        with open(files[name], "wb") as f:
            f.write(to_onnx(clf, sample, options={id(clf): {"zipmap": False}}).SerializeToString())
    files["zipmap"] = str(root / "a_zipmap.onnx")
    with open(files["zipmap"], "wb") as f:
        f.write(to_onnx(classifiers["a"], sample).SerializeToString())
    files["net"] = str(root / "net_a.onnx")
    torch.onnx.export(
        nets["a"], torch.zeros(1, 64), files["net"], input_names=["x"], output_names=["scores"],
        dynamic_axes={"x": {0: "n"}, "scores": {0: "n"}},
    )
    return files


def _scores(net, rows):
    with torch.no_grad():
        return net(torch.tensor(np.asarray(rows), dtype=torch.float32)).numpy()


def _infer(handler, rows):
    """Loads the model and runs one batch; returns the inferences."""
    batch = list(rows)
    results = list(handler.run_inference(batch, handler.load_model()))
    assert [r.example is row for r, row in zip(results, batch)] == [True] * len(batch)
    return [r.inference for r in results]


def _sklearn(uri, fmt="pickle", output="predict", **kwargs):
    return Model(uri=uri, framework="sklearn", format=fmt, output=output, **kwargs)


def _net(uri, fmt="state_dict", output="vector", **options):
    if fmt == "state_dict":
        options.setdefault("model_class", NET_CLASS)
    return Model(uri=uri, framework="pytorch", format=fmt, output=output, options=options)


def _onnx(uri, output="vector", **options):
    return Model(uri=uri, framework="onnx", format="onnx", output=output, options=options)


# check_model()


@pytest.mark.parametrize(
    "model, kind",
    [
        (_sklearn("m.pkl"), steps.NUMBER),
        (_sklearn("m.skops", "skops", "predict_proba"), steps.VECTOR),
        (_net("m.pt", device="cuda", model_params={"n_hidden": 8}), steps.VECTOR),
        (_net("m.ts", "torchscript", "number"), steps.NUMBER),
        (_onnx("m.onnx", "number", output_name="label"), steps.NUMBER),
        (Model(uri="m.pkl", framework="handler", format="sklearn_numpy", output="number",
               options={"model_file_type": "joblib"}), steps.NUMBER),
    ],
)
def test_check_model_returns_the_kind_of_one_result(model, kind):
    assert model_checks.check_model(model, "models[0]") == kind


def test_check_model_imports_no_framework(monkeypatch):
    # A None entry in sys.modules makes any import of that module fail.
    for name in ("torch", "onnxruntime", "onnx", "skops", "skops.io"):
        monkeypatch.setitem(sys.modules, name, None)
    assert model_checks.check_model(_net("m.pt"), "m") == steps.VECTOR
    assert model_checks.check_model(_onnx("m.onnx"), "m") == steps.VECTOR
    assert model_checks.check_model(_sklearn("m.skops", "skops"), "m") == steps.NUMBER


@pytest.mark.parametrize(
    "model, message",
    [
        (Model(uri=" "), "models[1].uri must be a non-empty string, got ' '"),
        (Model(uri="m", framework="tf"),
         "models[1].framework='tf' is not supported; allowed: sklearn, pytorch, onnx, handler"),
        (Model(uri="m", framework="onnx", format="onnxx"),
         "models[1].format='onnxx' is not supported for framework 'onnx'; allowed: onnx"),
        (_sklearn("m", "pickel"),
         "models[1].format='pickel' is not supported for framework 'sklearn'; allowed: pickle, joblib, skops"),
        (_sklearn("m", output="vector"),
         "models[1].output='vector' is not supported for framework 'sklearn'; allowed: predict, predict_proba"),
        (_onnx("m", "predict_proba"),
         "models[1].output='predict_proba' is not supported for framework 'onnx'; allowed: vector, number"),
        (_net("m", devise="cpu"),
         "models[1].options.devise is not an option of pytorch format 'state_dict'; allowed: model_class, model_params, device"),
        (_sklearn("m", options={"device": "cpu"}),
         "models[1].options.device is not an option of sklearn format 'pickle'; allowed: none"),
        (_net("m", device="gpu"), "models[1].options.device='gpu' is not supported; allowed: cpu, cuda"),
        (_net("m", model_params=[1]), "models[1].options.model_params=[1] must be a JSON object"),
        (_onnx("m", output_name=3), "models[1].options.output_name=3 must be a string"),
        (Model(uri="m", framework="pytorch", format="state_dict", output="vector"),
         "models[1].options.model_class is required for pytorch format 'state_dict'"),
        (_net("m", model_class="TinyNet"),
         "models[1].options.model_class='TinyNet' is not a class path; allowed: 'package.module:Class'"),
        (_net("m", model_class="os:sys.exit()"),
         "models[1].options.model_class='os:sys.exit()' is not a class path"),
        (_net("m", model_params={"n": object()}),
         "models[1].options.model_params.n holds a object, which is not a JSON value"),
        (_sklearn("m", sha256="abc"),
         "models[1].sha256='abc' is not a SHA-256 digest; allowed: 64 hexadecimal digits"),
        (_sklearn("m", sha256="0" * 64, watch_pattern="/m/*.pkl"),
         "models[1].sha256 and models[1].watch_pattern='/m/*.pkl' cannot be combined"),
        (Model(uri="m", framework="handler", format="sklearn"),
         "models[1].format='sklearn' is not supported for framework 'handler'; allowed: sklearn_numpy, xgboost_numpy, tensorflow_numpy"),
        (Model(uri="m", framework="handler", format="sklearn_numpy", output="number", options={"large_model": True}),
         "models[1].options.large_model is not an option of handler 'sklearn_numpy'; allowed: model_file_type"),
        (Model(uri="m", framework="handler", format="sklearn_numpy", output="number", options={"model_file_type": "skops"}),
         "models[1].options.model_file_type='skops' is not supported; allowed: pickle, joblib"),
    ],
)
def test_check_model_errors_name_the_field_the_value_and_what_is_allowed(model, message):
    with pytest.raises(ValueError) as raised:
        model_checks.check_model(model, "models[1]")
    assert str(raised.value).startswith(message), str(raised.value)


def test_check_model_names_the_package_of_a_missing_handler_library(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow", None)
    monkeypatch.delitem(sys.modules, "apache_beam.ml.inference.tensorflow_inference", raising=False)
    model = Model(uri="/m/saved", framework="handler", format="tensorflow_numpy", output="vector")
    with pytest.raises(ValueError, match=r"models\[0\].format='tensorflow_numpy' needs the Python "
                       r"package 'tensorflow'.*pip install tensorflow"):
        model_checks.check_model(model, "models[0]")


def test_a_missing_framework_library_fails_at_construction_naming_its_package(monkeypatch, sk_files):
    monkeypatch.setitem(sys.modules, "skops.io", None)
    with pytest.raises(ValueError, match="needs the Python package 'skops'.*pip install skops"):
        models.handler_for(_sklearn(sk_files["skops", "a"], "skops"), ANYTHING)


# scikit-learn


@pytest.mark.parametrize("fmt", ["pickle", "joblib", "skops"])
@pytest.mark.parametrize("output", ["predict", "predict_proba"])
def test_sklearn_predictions_equal_scikit_learns(fmt, output, sk_files, classifiers, digits):
    rows = digits[2]
    handler = models.handler_for(_sklearn(sk_files[fmt, "a"], fmt, output), ANYTHING)
    expected = getattr(classifiers["a"], output)(rows)
    np.testing.assert_array_equal(np.array(_infer(handler, rows)), expected)


def test_skops_refuses_untrusted_types_and_lists_them(digits, root):
    pixels, labels, rows = digits
    pipeline = make_pipeline(FunctionTransformer(_halve), LogisticRegression(max_iter=500))
    path = str(root / "untrusted.skops")
    skops.io.dump(pipeline.fit(pixels, labels), path)
    handler = models.handler_for(_sklearn(path, "skops"), LoadPolicy())
    with pytest.raises(ValueError, match=r"types that skops does not trust.*: test_models\._halve;"):
        handler.load_model()


@pytest.mark.parametrize(
    "given, fmt, hint",
    [
        (("joblib", "a"), "pickle", "; a file saved with joblib.dump needs format 'joblib' (Java: SklearnModel.joblib)"),
        (("skops", "a"), "pickle", "; the file is a zip archive: a skops file needs format 'skops' (Java: SklearnModel.skops)"),
        (("pickle", "a"), "skops", "; the file is a pickle: it needs format 'pickle' or 'joblib', from a trusted root"),
        ("noise", "pickle", None),  # not a pickle at all: no guess at another format
    ],
)
def test_a_file_of_another_format_is_named_with_the_format_it_looks_like(sk_files, root, given, fmt, hint):
    path = sk_files[given] if given != "noise" else str(root / "noise.pkl")
    if given == "noise":
        (root / "noise.pkl").write_bytes(bytes(range(7, 250)))
    handler = models.handler_for(_sklearn(path, fmt), ANYTHING)
    with pytest.raises(models.ModelLoadError) as raised:
        handler.load_model()
    message = str(raised.value)
    assert message.startswith(f"model.uri={path!r} could not be loaded as sklearn format {fmt!r}: ")
    if hint is None:
        assert "joblib" not in message and "zip" not in message and "; " not in message
    else:
        assert message.endswith(hint)


def _halve(x):
    return x / 2


# PyTorch


@pytest.mark.parametrize("fmt", ["state_dict", "torchscript"])
def test_pytorch_predictions_equal_torchs(fmt, torch_files, nets, digits):
    rows = digits[2]
    handler = models.handler_for(_net(torch_files[fmt, "a"], fmt), ANYTHING)
    inferences = _infer(handler, rows)
    assert all(isinstance(v, np.ndarray) and v.shape == (10,) for v in inferences)
    np.testing.assert_allclose(np.array(inferences), _scores(nets["a"], rows), rtol=1e-6)


def test_pytorch_number_output_and_model_params(digits, root):
    torch.manual_seed(0)
    net = TinyNet(n_hidden=4, n_outputs=1).eval()
    path = str(root / "regressor.pt")
    torch.save(net.state_dict(), path)
    model = _net(path, output="number", model_params={"n_hidden": 4, "n_outputs": 1})
    inferences = _infer(models.handler_for(model, ANYTHING), digits[2])
    assert all(np.ndim(v) == 0 for v in inferences)
    np.testing.assert_allclose(inferences, _scores(net, digits[2])[:, 0], rtol=1e-6)


def test_a_vector_model_configured_as_number_fails_clearly(torch_files, digits):
    handler = models.handler_for(_net(torch_files["state_dict", "a"], output="number"), ANYTHING)
    with pytest.raises(ValueError, match=r"model.output='number' gives one number per example, "
                       r"but the model gave 10 values \(shape \(10,\)\)"):
        _infer(handler, digits[2])


def test_state_dicts_load_with_weights_only(root):
    # A pickled object that is not plain tensors must not be unpickled.
    path = str(root / "not_weights.pt")
    torch.save({"hidden.weight": _Evil()}, path)
    handler = models.handler_for(_net(path), ANYTHING)
    with pytest.raises(Exception, match="[Ww]eights only load failed"):
        handler.load_model()


class _Evil:
    pass


def test_model_class_must_be_a_torch_module(root):
    with pytest.raises(ValueError, match=r"model.options.model_class='collections:OrderedDict' is "
                       "not a torch.nn.Module subclass"):
        models.handler_for(_net(str(root / "a.pt"), model_class="collections:OrderedDict"), ANYTHING)


@pytest.mark.skipif(torch.cuda.is_available(), reason="tests the fallback on a machine without CUDA")
def test_pytorch_cuda_falls_back_to_cpu_with_a_warning(torch_files, nets, digits, caplog):
    handler = models.handler_for(_net(torch_files["state_dict", "a"], device="cuda"), ANYTHING)
    with caplog.at_level(logging.WARNING):
        inferences = _infer(handler, digits[2])
    np.testing.assert_allclose(np.array(inferences), _scores(nets["a"], digits[2]), rtol=1e-6)
    assert any(
        r.levelno == logging.WARNING and "device='cuda', but CUDA is not available here" in r.getMessage()
        for r in caplog.records
    ), caplog.text


# ONNX


def test_onnx_vector_is_the_classifiers_probabilities(onnx_files, classifiers, digits):
    rows = digits[2]
    for path in (onnx_files["a"], onnx_files["zipmap"]):
        inferences = _infer(models.handler_for(_onnx(path), ANYTHING), rows)
        np.testing.assert_allclose(np.array(inferences), classifiers["a"].predict_proba(rows), atol=1e-5)


def test_onnx_number_is_the_classifiers_label(onnx_files, classifiers, digits):
    rows = digits[2]
    expected = classifiers["a"].predict(rows)
    by_default = _infer(models.handler_for(_onnx(onnx_files["a"], "number"), ANYTHING), rows)
    by_name = _infer(models.handler_for(_onnx(onnx_files["a"], "number", output_name="label"), ANYTHING), rows)
    np.testing.assert_array_equal(by_default, expected)
    np.testing.assert_array_equal(by_name, expected)


def test_onnx_export_of_a_torch_model_equals_torch(onnx_files, nets, digits):
    inferences = _infer(models.handler_for(_onnx(onnx_files["net"]), ANYTHING), digits[2])
    np.testing.assert_allclose(np.array(inferences), _scores(nets["a"], digits[2]), rtol=1e-4, atol=1e-5)


def test_onnx_unknown_output_name_lists_the_outputs(onnx_files, digits):
    handler = models.handler_for(_onnx(onnx_files["a"], output_name="probs"), ANYTHING)
    with pytest.raises(ValueError, match=r"model.options.output_name='probs' is not an output of the "
                       "model; allowed: label, probabilities"):
        _infer(handler, digits[2])


@pytest.mark.skipif(torch.cuda.is_available(), reason="tests the fallback on a machine without CUDA")
def test_onnx_cuda_falls_back_to_cpu_with_a_warning(onnx_files, classifiers, digits, caplog):
    handler = models.handler_for(_onnx(onnx_files["a"], device="cuda"), ANYTHING)
    with caplog.at_level(logging.WARNING):
        inferences = _infer(handler, digits[2])
    np.testing.assert_allclose(np.array(inferences), classifiers["a"].predict_proba(digits[2]), atol=1e-5)
    assert "onnxruntime-gpu provides CUDA for ONNX" in caplog.text


# Allowlisted Beam handlers


def test_sklearn_numpy_handler(sk_files, classifiers, digits, root):
    model = Model(uri=sk_files["joblib", "a"], framework="handler", format="sklearn_numpy",
                  output="number", options={"model_file_type": "joblib"})
    with pytest.raises(ValueError, match="runs code when loaded"):
        models.handler_for(model, LoadPolicy())
    inferences = _infer(models.handler_for(model, LoadPolicy(trusted_roots=(str(root),))), digits[2])
    np.testing.assert_array_equal(inferences, classifiers["a"].predict(digits[2]))


@pytest.fixture(scope="module")
def boosters(digits, root):
    """{name: (XGBClassifier, its JSON file)} for two small boosted models."""
    xgboost = pytest.importorskip("xgboost")
    pixels, labels, _ = digits
    trained = {}
    for name, depth in (("a", 2), ("b", 3)):
        clf = xgboost.XGBClassifier(n_estimators=5, max_depth=depth).fit(pixels, labels)
        path = str(root / f"boost_{name}.json")
        clf.save_model(path)
        trained[name] = clf, path
    return trained


def _booster(path, model_class="XGBClassifier", output="number"):
    return Model(uri=path, framework="handler", format="xgboost_numpy", output=output,
                 options={"model_class": model_class})


def test_xgboost_numpy_handler(boosters, digits):
    clf, path = boosters["a"]
    # A JSON model state runs no code, so the default policy allows it.
    inferences = _infer(models.handler_for(_booster(path), LoadPolicy()), digits[2])
    np.testing.assert_array_equal(inferences, clf.predict(digits[2]))
    booster = _infer(models.handler_for(_booster(path, "Booster", "vector"), LoadPolicy()), digits[2])
    np.testing.assert_allclose(np.array(booster), clf.predict_proba(digits[2]), rtol=1e-6)


def test_xgboost_model_class_comes_from_an_allowlist(boosters):
    with pytest.raises(ValueError, match=r"model.options.model_class='os.system' is not supported; "
                       "allowed: XGBClassifier, XGBRegressor, XGBRFClassifier, XGBRFRegressor, Booster"):
        models.handler_for(_booster(boosters["a"][1], "os.system"), LoadPolicy())
    missing = Model(uri=boosters["a"][1], framework="handler", format="xgboost_numpy", output="number")
    with pytest.raises(ValueError, match=r"model.options.model_class is required for handler 'xgboost_numpy'"):
        model_checks.check_model(missing, "model")


# Model refresh: update_model_path, then load_model loads the new file.


def test_update_model_path_loads_the_new_file_for_every_framework(
    sk_files, torch_files, onnx_files, boosters, classifiers, nets, digits, root
):
    rows = digits[2]
    proba = {n: c.predict_proba(rows) for n, c in classifiers.items()}
    scores = {n: _scores(net, rows) for n, net in nets.items()}
    cases = [
        (_sklearn(sk_files["pickle", "a"], "pickle", "predict_proba"), sk_files["pickle", "b"], proba),
        (_sklearn(sk_files["skops", "a"], "skops", "predict_proba"), sk_files["skops", "b"], proba),
        (_net(torch_files["state_dict", "a"]), torch_files["state_dict", "b"], scores),
        (_net(torch_files["torchscript", "a"], "torchscript"), torch_files["torchscript", "b"], scores),
        (_onnx(onnx_files["a"]), onnx_files["b"], proba),
        (Model(uri=sk_files["pickle", "a"], framework="handler", format="sklearn_numpy", output="number"),
         sk_files["pickle", "b"], {n: c.predict(rows) for n, c in classifiers.items()}),
        (_booster(boosters["a"][1], "Booster", "vector"), boosters["b"][1],
         {n: c.predict_proba(rows) for n, (c, _) in boosters.items()}),
    ]
    for model, new_path, expected in cases:
        assert not np.allclose(expected["a"], expected["b"])
        handler = models.handler_for(model, ANYTHING)
        np.testing.assert_allclose(np.array(_infer(handler, rows)), expected["a"], rtol=1e-4, atol=1e-5)
        handler.update_model_path(new_path)
        assert handler.uri == new_path
        results = list(handler.run_inference(list(rows), handler.load_model()))
        np.testing.assert_allclose(
            np.array([r.inference for r in results]), expected["b"], rtol=1e-4, atol=1e-5,
            err_msg=f"{model.framework}/{model.format}",
        )
        assert results[0].model_id == new_path


def test_handlers_survive_beams_pickler(sk_files, torch_files, onnx_files, nets, classifiers, digits):
    from apache_beam.internal import pickler

    rows = digits[2]
    cases = [
        (_sklearn(sk_files["skops", "a"], "skops"), classifiers["a"].predict(rows)),
        (_net(torch_files["state_dict", "a"]), _scores(nets["a"], rows)),
        (_onnx(onnx_files["a"]), classifiers["a"].predict_proba(rows)),
    ]
    for model, expected in cases:
        handler = pickler.loads(pickler.dumps(models.handler_for(model, ANYTHING)))
        np.testing.assert_allclose(np.array(_infer(handler, rows)), expected, rtol=1e-5, atol=1e-5)


def test_model_id_is_reported_when_given(sk_files, digits):
    handler = models.handler_for(_sklearn(sk_files["pickle", "a"], model_id="digits"), ANYTHING)
    loaded = handler.load_model()
    assert {r.model_id for r in handler.run_inference(list(digits[2]), loaded)} == {"digits"}


def test_get_num_bytes_is_the_arrays_size(sk_files, digits):
    handler = models.handler_for(_sklearn(sk_files["pickle", "a"]), ANYTHING)
    assert handler.get_num_bytes(list(digits[2])) == digits[2].nbytes


# The load policy


def test_from_env_reads_comma_separated_lists():
    policy = LoadPolicy.from_env({
        MODEL_ROOTS_ENV: "/models, gs://bucket/models ,",
        TRUSTED_ROOTS_ENV: "/trusted",
        ALLOWED_CLASSES_ENV: "mypkg.nets,tiny_torch:TinyNet",
    })
    assert policy == LoadPolicy(("/models", "gs://bucket/models"), ("/trusted",), ("mypkg.nets", "tiny_torch:TinyNet"))
    assert LoadPolicy.from_env({}) == LoadPolicy()


def test_formats_that_run_code_are_classified():
    running = [(m.framework, m.format) for m in [
        _sklearn("m"), _sklearn("m", "joblib"), _net("m", "torchscript"),
        Model(uri="m", framework="handler", format="sklearn_numpy"),
        Model(uri="m", framework="handler", format="tensorflow_numpy"),
        Model(uri="m", framework="handler", format="unknown"),
    ] if frameworks.runs_code_on_load(m)]
    assert len(running) == 6
    assert not any(frameworks.runs_code_on_load(m) for m in [
        _sklearn("m", "skops"), _net("m"), _onnx("m"), _booster("m"),
    ])


def test_pickle_outside_trusted_roots_is_refused_at_construction(sk_files, tmp_path):
    for policy in (LoadPolicy(), LoadPolicy(trusted_roots=(str(tmp_path),))):
        with pytest.raises(ValueError) as raised:
            models.handler_for(_sklearn(sk_files["pickle", "a"]), policy, "models[2]")
        message = str(raised.value)
        assert message.startswith(f"models[2].uri={sk_files['pickle', 'a']!r}: sklearn format 'pickle' runs code")
        assert TRUSTED_ROOTS_ENV in message and "--trusted-model-root DIR" in message
        assert "skops" in message


def test_a_relative_model_path_is_named_as_such(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    hint = (
        ". 'digits.pkl' is a relative path, read from the working directory of the process that builds the "
        "pipeline (for a Java pipeline, the expansion service's): give an absolute path"
    )
    with pytest.raises(ValueError) as raised:
        models.handler_for(_sklearn("digits.pkl"), LoadPolicy(trusted_roots=("/models",)), "models[0]")
    assert str(raised.value).endswith(hint)
    with pytest.raises(ValueError) as raised:
        model_files.check_regular_file("digits.pkl", "models[0]")
    assert str(raised.value).endswith(hint)
    assert policy_module.relative_path_hint("/models/digits.pkl") == policy_module.relative_path_hint("gs://b/m.pkl") == ""


def test_trusted_roots_allow_pickle_and_count_as_model_roots(sk_files, classifiers, digits, root, tmp_path):
    policy = LoadPolicy(model_roots=(str(tmp_path),), trusted_roots=(str(root),))
    inferences = _infer(models.handler_for(_sklearn(sk_files["pickle", "a"]), policy), digits[2])
    np.testing.assert_array_equal(inferences, classifiers["a"].predict(digits[2]))


def test_model_roots_limit_safe_formats(onnx_files, root, tmp_path):
    model = _onnx(onnx_files["a"])
    assert models.handler_for(model, LoadPolicy(model_roots=(str(root),)))
    with pytest.raises(ValueError) as raised:
        models.handler_for(model, LoadPolicy(model_roots=(str(tmp_path),)))
    message = str(raised.value)
    assert "is outside the allowed model roots" in message and str(tmp_path) in message
    assert MODEL_ROOTS_ENV in message and "--model-root DIR" in message


def test_dot_dot_cannot_escape_a_root(onnx_files, root, tmp_path):
    inside = tmp_path / "inside"
    inside.mkdir()
    escaping = f"{inside}/../../{root.name}/a.onnx"
    assert os.path.exists(escaping)
    with pytest.raises(ValueError) as raised:
        models.handler_for(_onnx(escaping), LoadPolicy(model_roots=(str(inside),)))
    # Only the configured value is named, never where it leads.
    assert str(raised.value).startswith(f"model.uri={escaping!r} is outside the allowed model roots")
    assert os.path.realpath(escaping) not in str(raised.value)


def test_symlinks_cannot_escape_a_root(onnx_files, sk_files, tmp_path):
    inside = tmp_path / "trusted"
    inside.mkdir()
    (inside / "link.onnx").symlink_to(onnx_files["a"])
    (inside / "link.pkl").symlink_to(sk_files["pickle", "a"])
    with pytest.raises(ValueError, match="outside the allowed model roots"):
        models.handler_for(_onnx(str(inside / "link.onnx")), LoadPolicy(model_roots=(str(inside),)))
    with pytest.raises(ValueError, match="runs code when loaded"):
        models.handler_for(_sklearn(str(inside / "link.pkl")), LoadPolicy(trusted_roots=(str(inside),)))
    # A symlinked root itself resolves too: its real directory is the root.
    (tmp_path / "alias").symlink_to(os.path.dirname(onnx_files["a"]))
    assert models.handler_for(_onnx(onnx_files["a"]), LoadPolicy(model_roots=(str(tmp_path / "alias"),)))


def test_uri_roots_compare_whole_segments():
    policy = LoadPolicy(model_roots=("gs://bucket/models",))
    policy.check(_onnx("gs://bucket/models/a.onnx"), "gs://bucket/models/a.onnx")
    for uri in ("gs://bucket/models2/a.onnx", "s3://bucket/models/a.onnx", "/bucket/models/a.onnx"):
        with pytest.raises(ValueError, match="outside the allowed model roots"):
            policy.check(_onnx(uri), uri)
    with pytest.raises(ValueError, match=r"model.uri='gs://bucket/models/../x.onnx' contains a '..' segment"):
        policy.check(_onnx("m"), "gs://bucket/models/../x.onnx")


def test_model_classes_must_be_under_an_allowed_prefix(torch_files):
    path = torch_files["state_dict", "a"]
    for allowed in (("tiny_torch",), ("tiny_torch.TinyNet",), ("tiny_torch:TinyNet",), (ANY,)):
        assert models.handler_for(_net(path), LoadPolicy(allowed_model_classes=allowed))
    for allowed in ((), ("tiny",), ("tiny_torch.Other",)):
        with pytest.raises(ValueError) as raised:
            models.handler_for(_net(path), LoadPolicy(allowed_model_classes=allowed), "models[0]")
        message = str(raised.value)
        assert message.startswith("models[0].options.model_class='tiny_torch:TinyNet' is not under an allowed")
        assert f"add 'tiny_torch' (or a parent package) to {ALLOWED_CLASSES_ENV}" in message
        assert "give the expansion service (or inferbridge-local) --allow-model-class=PREFIX" in message
        assert message.endswith("which replaces the environment's, add it to the policy's allowed_model_classes")


def test_a_refused_model_class_is_never_imported():
    model = _net("/m/a.pt", model_class="inferbridge_test_never_imported:Net")
    with pytest.raises(ValueError, match="is not under an allowed model class prefix"):
        models.handler_for(model, LoadPolicy())
    assert "inferbridge_test_never_imported" not in sys.modules


def test_a_model_class_is_allowed_by_the_module_that_defines_it(torch_files):
    """'tiny_torch:torch.nn.Bilinear' passes the prefix 'tiny_torch', but the class is torch's."""
    policy = LoadPolicy(allowed_model_classes=("tiny_torch",))
    walk = _net(torch_files["state_dict", "a"], model_class="tiny_torch:torch.nn.Bilinear")
    with pytest.raises(ValueError) as raised:
        models.handler_for(walk, policy, "models[0]")
    assert str(raised.value).startswith(
        "models[0].options.model_class='tiny_torch:torch.nn.Bilinear' is a class defined in module "
        "'torch.nn.modules.linear', which is not under an allowed model class prefix (tiny_torch)"
    )


def test_load_model_checks_the_policy_on_the_refreshed_path(onnx_files, tmp_path):
    handler = models.handler_for(_onnx(onnx_files["a"]), LoadPolicy(model_roots=(os.path.dirname(onnx_files["a"]),)))
    outside = tmp_path / "b.onnx"
    outside.write_bytes(open(onnx_files["b"], "rb").read())
    handler.update_model_path(str(outside))
    with pytest.raises(ValueError, match=f"model.uri='{outside}' is outside the allowed model roots"):
        handler.load_model()


# sha256 pins


def _digest(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_sha256_pin_match_and_mismatch(onnx_files, classifiers, digits):
    pinned = Model(uri=onnx_files["a"], framework="onnx", format="onnx", output="vector",
                   sha256=_digest(onnx_files["a"]).upper())
    handler = models.handler_for(pinned, LoadPolicy())
    np.testing.assert_allclose(np.array(_infer(handler, digits[2])), classifiers["a"].predict_proba(digits[2]), atol=1e-5)
    # The pin is checked on the current path, so a refresh to another file is refused.
    handler.update_model_path(onnx_files["b"])
    with pytest.raises(ValueError) as raised:
        handler.load_model()
    assert str(raised.value) == (
        f"model.sha256 does not match {onnx_files['b']!r}: expected {_digest(onnx_files['a'])}, "
        f"actual {_digest(onnx_files['b'])}; the file changed, or the pin is wrong"
    )


def test_a_wrong_pin_fails_when_the_handler_is_built(onnx_files):
    wrong = "0" * 64
    pinned = Model(uri=onnx_files["a"], framework="onnx", format="onnx", output="vector", sha256=wrong)
    with pytest.raises(ValueError) as raised:
        models.handler_for(pinned, LoadPolicy(), "models[0]")
    assert str(raised.value) == (
        f"models[0].sha256 does not match {onnx_files['a']!r}: expected {wrong}, "
        f"actual {_digest(onnx_files['a'])}; the file changed, or the pin is wrong"
    )


def test_model_params_the_class_does_not_take_fail_when_the_handler_is_built(torch_files):
    with pytest.raises(ValueError) as raised:
        models.handler_for(_net(torch_files["state_dict", "a"], model_params={"hidden": 16}), ANYTHING, "models[0]")
    assert str(raised.value).startswith(
        "models[0].options.model_params={'hidden': 16} does not fit tiny_torch:TinyNet"
        "(n_features: int = 64, n_hidden: int = 16, n_outputs: int = 10): got an unexpected keyword argument 'hidden'"
    ), raised.value


def test_a_directory_is_refused_when_loaded(root):
    handler = models.handler_for(_onnx(str(root)), LoadPolicy())
    with pytest.raises(ValueError, match=r"model.uri=.* is a directory; allowed: a regular file"):
        handler.load_model()


# Real Beam pipelines on the DirectRunner, one per framework.


def _run(handler, rows, expected, **tolerance):
    expected = {row.tobytes(): value for row, value in zip(rows, expected)}

    def check(actual):
        assert len(actual) == len(expected)
        for example, inference in actual:
            np.testing.assert_allclose(inference, expected[example], **tolerance)

    with test_pipeline.TestPipeline() as p:
        results = (
            p
            | beam.Create(list(rows))
            | RunInference(handler)
            | beam.Map(lambda r: (r.example.tobytes(), r.inference))
        )
        assert_that(results, check)


def test_pipeline_sklearn(sk_files, classifiers, digits):
    handler = models.handler_for(_sklearn(sk_files["skops", "a"], "skops", "predict_proba"), LoadPolicy())
    _run(handler, digits[2], classifiers["a"].predict_proba(digits[2]), rtol=1e-12)


def test_pipeline_pytorch(torch_files, nets, digits):
    policy = LoadPolicy(allowed_model_classes=("tiny_torch",))
    handler = models.handler_for(_net(torch_files["state_dict", "a"]), policy)
    # float32 results vary in the last digits with the batch size.
    _run(handler, digits[2], _scores(nets["a"], digits[2]), rtol=1e-5, atol=1e-5)


def test_pipeline_onnx(onnx_files, classifiers, digits):
    handler = models.handler_for(_onnx(onnx_files["zipmap"]), LoadPolicy())
    _run(handler, digits[2], classifiers["a"].predict_proba(digits[2]), atol=1e-5)


def test_pipeline_beam_handler(boosters, digits):
    clf, path = boosters["a"]
    handler = models.handler_for(_booster(path), LoadPolicy())
    _run(handler, digits[2], clf.predict(digits[2]))


def test_catalog_matches_the_golden_file_java_checks():
    import json
    from pathlib import Path

    golden = Path(__file__).resolve().parents[2] / "tests" / "golden" / "models_v1.json"
    assert json.loads(golden.read_text()) == frameworks.catalog_description()
