"""Models given as Beam ModelHandlers the pipeline's author built, and env_vars on any model.

Each test runs a real DirectRunner pipeline with tiny scikit-learn models trained in the test.
"""

import logging
import os
import pickle
from pathlib import Path

import apache_beam as beam
import numpy as np
import pytest
import torch
from apache_beam.ml.inference.base import KeyedModelHandler, KeyModelMapping, ModelHandler, ModelMetadata, PredictionResult
from apache_beam.ml.inference.pytorch_inference import PytorchModelHandlerTensor
from apache_beam.ml.inference.sklearn_inference import SklearnModelHandlerNumpy
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.testing.util import assert_that, equal_to
from sklearn.linear_model import LinearRegression, LogisticRegression

from inferbridge import Inference, InferenceSpec, LoadPolicy, Model, Step
from test_inference_streaming import refresh_stream, streaming_pipeline, versions  # noqa: F401 (fixtures)


class WeightedSum(ModelHandler):
    """A handler of its own: its model is a weight read from a file (and an env var, if set);
    it logs the size of every batch it gets to ``log``."""

    def __init__(self, path, log, max_batch_size=None, env_vars=None):
        super().__init__(env_vars=env_vars or {})
        self._path, self._log, self._max = path, log, max_batch_size

    def load_model(self):
        with open(self._path) as f:
            return float(f.read()) * float(os.environ.get("INFERBRIDGE_TEST_BONUS", "1"))

    def update_model_path(self, model_path=None):
        self._path = model_path or self._path

    def batch_elements_kwargs(self):
        return {"max_batch_size": self._max} if self._max else {}

    def run_inference(self, batch, model, inference_args=None):
        with open(self._log, "a") as f:
            f.write(f"{len(batch)}\n")
        return [PredictionResult(x, float(np.sum(x)) * model) for x in batch]


def _inverse_excess(value):
    if value == 20:  # the row (0, 1): 2 * 10 * (0 + 1)
        raise ZeroDivisionError("no inverse at 20")
    return 1 / (value - 20)


def _rows(n):
    return [beam.Row(id=i, f=[float(i), 1.0]) for i in range(n)]


@pytest.fixture
def weight(tmp_path):
    path = tmp_path / "weight.txt"
    path.write_text("2")
    return str(path)


def test_a_handler_of_its_own_serves_rows_with_steps_failures_and_its_batch_bound(weight, tmp_path):
    log = str(tmp_path / "batches.log")
    rows = _rows(10) + [beam.Row(id=99, f=[None, 1.0])]
    with beam.Pipeline() as p:
        result = p | beam.Create(rows) | Inference(
            Model.of(WeightedSum(weight, log, max_batch_size=3), output="number", model_id="sum"),
            key_field="id",
            feature_fields="f",
            preprocess=[Step("scale", factor=10)],
            postprocess=[Step.custom(_inverse_excess, produces="number")],
        )
        assert_that(
            result.inferences | beam.Map(lambda r: (r.key, round(r.inference, 6), r.model_id)),
            equal_to([(i, round(1 / (2 * 10 * (i + 1) - 20), 6), "sum") for i in range(10) if i != 0]),
        )
        assert_that(
            result.failures | beam.Map(lambda r: (r.key, r.stage)),
            equal_to([("0", "postprocess"), ("99", "input")]),
            label="Failures",
        )
    batches = [int(line) for line in open(log)]
    assert sum(batches) >= 10 and max(batches) <= 3, batches


def test_a_handler_giving_another_kind_of_result_fails_its_rows_in_one_call(weight, tmp_path):
    """WeightedSum gives a number; declared a vector, each batch's rows fail together with the
    remedy: the kind is the model's, so the batch is not halved (a call per row)."""
    log = str(tmp_path / "batches.log")
    p = beam.Pipeline()
    result = p | beam.Create(_rows(12)) | Inference(
        Model.of(WeightedSum(weight, log), output="vector", model_id="sum"), key_field="id", feature_fields="f",
        min_batch_size=12, max_batch_size=12,
    )
    assert_that(result.inferences, equal_to([]))
    assert_that(
        result.failures | beam.Map(lambda r: (r.stage, r.error_type, r.message)),
        equal_to([("inference", "OutputKindError", "models[0].output='vector' gives a vector per example, but the model "
                   "gave one number; give the handler as Model.of(handler, output='number')")] * 12),
        label="Failures",
    )
    run = p.run()
    run.wait_until_finish()
    assert [int(line) for line in open(log)] == [12]
    splits = run.metrics().query(MetricsFilter().with_name("model_sum_batch_splits"))["counters"]
    assert [c.committed for c in splits] == [0]


def test_beams_scikit_learn_handler_gives_numbers_by_default(tmp_path, digits, held_out):
    pixels, labels = digits
    path = tmp_path / "digits.pkl"
    model = LogisticRegression(max_iter=2000).fit(pixels[:500] / 16, labels[:500])
    path.write_bytes(pickle.dumps(model))
    assert Model.of(SklearnModelHandlerNumpy(str(path))).output == "number"
    proba = SklearnModelHandlerNumpy(str(path), inference_fn=lambda m, batch, inference_args=None: m.predict_proba(batch))
    assert Model.of(proba).output == "vector"
    assert Model.of(WeightedSum(str(path), str(tmp_path / "log"))).output == "vector"
    test, _ = held_out
    with beam.Pipeline() as p:
        result = p | beam.Create([beam.Row(id=i, f=[float(v) for v in test[i] / 16]) for i in range(20)]) | Inference(
            SklearnModelHandlerNumpy(str(path)), key_field="id", feature_fields="f"
        )
        assert_that(result.inferences | beam.Map(lambda r: (r.key, r.inference)), equal_to(list(enumerate(model.predict(test[:20] / 16).astype(float)))))


def test_env_vars_are_set_before_the_model_loads(weight, tmp_path):
    log = str(tmp_path / "batches.log")
    with beam.Pipeline() as p:
        result = p | beam.Create(_rows(3)) | Inference(
            Model.of(WeightedSum(weight, log), output="number", env_vars={"INFERBRIDGE_TEST_BONUS": "5"}),
            key_field="id",
            feature_fields="f",
        )
        assert_that(
            result.inferences | beam.Map(lambda r: (r.key, r.inference, r.model_id)),
            equal_to([(i, 2 * 5 * (i + 1.0), "WeightedSum") for i in range(3)]),
        )


def test_beams_own_handlers_keyed_or_not_serve_the_composite(tmp_path):
    x = np.array([[0.0, 1.0], [1.0, 0.0], [2.0, 2.0], [3.0, 1.0]])
    paths = {}
    for name, coef in (("double", 2.0), ("negate", -1.0)):
        paths[name] = str(tmp_path / f"{name}.pkl")
        with open(paths[name], "wb") as f:
            pickle.dump(LinearRegression().fit(x, coef * x.sum(axis=1)), f)
    keyed = KeyedModelHandler(
        [
            KeyModelMapping(["a", "b"], SklearnModelHandlerNumpy(paths["double"])),
            KeyModelMapping(["c"], SklearnModelHandlerNumpy(paths["negate"])),
        ]
    )
    rows = [beam.Row(group=g, f=[1.0, 2.0]) for g in ("a", "b", "c", "z")]
    with beam.Pipeline() as p:
        result = p | beam.Create(rows) | Inference(Model.keyed(keyed, output="number"), key_field="group", feature_fields="f")
        assert_that(
            result.inferences | beam.Map(lambda r: (r.key, round(r.inference, 6), r.model_id)),
            equal_to([("a", 6.0, "a"), ("b", 6.0, "a"), ("c", -3.0, "c")]),
        )
        assert_that(
            result.failures | beam.Map(lambda r: (r.key, r.stage, r.error_type)),
            equal_to([("z", "routing", "UnmappedKey")]),
            label="Failures",
        )


class MeanEmbedding(torch.nn.Module):
    """Token ids -> the mean of their (fixed) embeddings: the shape of a text model's input."""

    def __init__(self, vocabulary: int):
        super().__init__()
        self.embedding = torch.nn.Embedding(vocabulary, 1)
        with torch.no_grad():
            self.embedding.weight.copy_(torch.arange(vocabulary, dtype=torch.float32).reshape(-1, 1))

    def forward(self, ids):
        return self.embedding(ids).mean(dim=1).reshape(-1)


def test_beams_tensor_handlers_get_tensors_float_or_token_ids(tmp_path):
    linear = torch.nn.Linear(2, 1)
    with torch.no_grad():
        linear.weight.copy_(torch.tensor([[1.0, 10.0]]))
        linear.bias.zero_()
    torch.save(linear.state_dict(), tmp_path / "linear.pt")
    torch.save(MeanEmbedding(10).state_dict(), tmp_path / "embedding.pt")
    by_value = PytorchModelHandlerTensor(
        state_dict_path=str(tmp_path / "linear.pt"), model_class=torch.nn.Linear, model_params={"in_features": 2, "out_features": 1}
    )
    by_ids = PytorchModelHandlerTensor(
        state_dict_path=str(tmp_path / "embedding.pt"), model_class=MeanEmbedding, model_params={"vocabulary": 10}
    )
    rows = [beam.Row(id="a", f=[1.0, 2.0]), beam.Row(id="b", f=[3.0, 5.0]), beam.Row(id="half", f=[1.5, 2.0])]
    with beam.Pipeline() as p:
        values = p | beam.Create(rows)
        floats = values | "Floats" >> Inference(
            Model.of(by_value, output="number"), key_field="id", feature_fields="f"
        )
        ids = values | "Ids" >> Inference(
            Model.of(by_ids, output="number", examples="torch_int64"), key_field="id", feature_fields="f"
        )
        assert_that(
            floats.inferences | beam.Map(lambda r: (r.key, round(r.inference, 4))),
            equal_to([("a", 21.0), ("b", 53.0), ("half", 21.5)]),
            label="FloatTensors",
        )
        assert_that(ids.inferences | beam.Map(lambda r: (r.key, r.inference)), equal_to([("a", 1.5), ("b", 4.0)]), label="TokenIds")
        assert_that(
            ids.failures | beam.Map(lambda r: (r.key, r.stage, r.message)),
            equal_to([("half", "inference", "models[0].examples='torch_int64' takes whole numbers; got 1.5")]),
            label="FractionalId",
        )


def test_a_model_update_reaches_the_handlers_update_model_path(versions, held_out):  # noqa: F811 (the fixture)
    v1, paths, _ = versions
    pixels, _ = held_out
    with streaming_pipeline() as p:
        streams = p | refresh_stream(pixels, paths["v2"])
        result = streams["rows"] | Inference(
            Model.of(SklearnModelHandlerNumpy(paths["v1"]), output="number", model_id="digits"),
            key_field="id",
            feature_fields="pixels",
            preprocess=[Step("scale", factor=1 / 16)],
            model_updates=streams["updates"],
        )
        # v1 would predict these digits; the update (always 7) serves every row instead.
        assert sorted(set(v1.predict(pixels[:15] / 16))) != [7]
        assert_that(
            result.inferences | beam.Map(lambda r: (int(r.key), r.inference, r.model_id)),
            equal_to([(i, 7.0, "digits") for i in list(range(5)) + list(range(10, 15))]),
        )


def test_an_update_that_fails_to_load_keeps_the_handlers_own_model(versions, held_out, caplog):  # noqa: F811
    """The handler's "uri" is its name, no file: falling back means the handler as given."""
    v1, paths, _ = versions
    pixels, _ = held_out
    missing = str(Path(paths["v1"]).parent / "missing.pkl")
    p = beam.Pipeline()
    updates = p | "Updates" >> beam.Create([ModelMetadata(model_id=missing, model_name="missing")])
    result = p | beam.Create([beam.Row(id=i, pixels=[float(v) for v in pixels[i]]) for i in range(8)]) | Inference(
        Model.of(SklearnModelHandlerNumpy(paths["v1"]), output="number", model_id="digits"),
        key_field="id", feature_fields="pixels", preprocess=[Step("scale", factor=1 / 16)], model_updates=updates,
    )
    assert_that(result.inferences | beam.Map(lambda r: (r.key, r.inference)), equal_to(list(enumerate(v1.predict(pixels[:8] / 16).astype(float)))))
    assert_that(result.failures, equal_to([]), label="NoFailures")
    with caplog.at_level(logging.ERROR, logger="inferbridge.model_slots"):
        p.run().wait_until_finish()
    assert f"loading the update {missing} failed" in caplog.text and "keeping SklearnModelHandlerNumpy" in caplog.text


@pytest.mark.parametrize(
    "models, message",
    [
        ("/models/digits.pkl", "models='/models/digits.pkl' is not a model; allowed: a Model (Model.sklearn(path)"),
        ([object()], "models[0]=<object object at"),
        (
            Model.of(SklearnModelHandlerNumpy("/m.pkl").with_postprocess_fn(abs)),
            "has postprocess functions (with_postprocess_fn); give them to the composite as postprocess=[Step.custom(fn)]",
        ),
        (Model.of(SklearnModelHandlerNumpy("/m.pkl"), sha256="0" * 64), "models[0].sha256='000"),
        (Model.of(SklearnModelHandlerNumpy("/m.pkl"), output="predict"), "allowed: vector, number"),
        (Model.sklearn("/m.pkl", env_vars={"A=B": "1"}), "models[0].env_vars has the name 'A=B'"),
        (
            Model.of(SklearnModelHandlerNumpy("/m.pkl"), examples="tensor"),
            "models[0].examples='tensor' is not supported; allowed: numpy, torch, torch_int64, list",
        ),
    ],
)
def test_models_given_wrongly_fail_at_construction_naming_what_is_allowed(models, message):
    with pytest.raises(ValueError) as raised:
        Inference(models, key_field="id", feature_fields="f")
    assert message in str(raised.value)


def test_a_keyed_handler_of_several_models_is_given_with_model_keyed():
    keyed = KeyedModelHandler([KeyModelMapping(["a"], SklearnModelHandlerNumpy("/a.pkl")), KeyModelMapping(["b"], SklearnModelHandlerNumpy("/b.pkl"))])
    with pytest.raises(ValueError, match=r"this KeyedModelHandler holds 2; give them as Model.keyed\(handler"):
        Model.of(keyed)
    assert [(m.model_id, m.keys) for m in Model.keyed(keyed)] == [("a", ("a",)), ("b", ("b",))]
    mappings = [KeyModelMapping(["a", 2], SklearnModelHandlerNumpy("/a.pkl")), KeyModelMapping(["b"], SklearnModelHandlerNumpy("/b.pkl"))]
    assert [(m.model_id, m.keys, m.output) for m in Model.keyed(mappings, output="number")] == [
        ("a", ("a", "2"), "number"),
        ("b", ("b",), "number"),
    ]


def test_python_only_models_keep_to_python_pipelines(weight, tmp_path):
    handler_model = Inference(Model.of(WeightedSum(weight, str(tmp_path / "log"))), key_field="id", feature_fields="f")
    env_model = Inference(Model.sklearn("/m.pkl", env_vars={"OMP_NUM_THREADS": "1"}), key_field="id", feature_fields="f")
    for transform in (handler_model, env_model):
        assert transform.spec.python_only
        urn, _ = transform.to_runner_api_parameter(None)
        assert urn != transform.urn  # Beam's pickled form, for Python runners
        with pytest.raises(ValueError, match="only Python pipelines can run; it has no cross-language form"):
            transform.spec.to_config()


# -- handlers registered by installed packages (the inferbridge.model_handlers entry points) --

WEIGHTED = '''
import numpy as np
from apache_beam.ml.inference.base import ModelHandler, PredictionResult


class Weighted(ModelHandler):
    def __init__(self, uri, bonus):
        super().__init__()
        self._uri, self._bonus = uri, bonus

    def load_model(self):
        with open(self._uri) as f:
            return float(f.read()) + self._bonus

    def run_inference(self, batch, model, inference_args=None):
        return [PredictionResult(x, float(np.sum(x)) * model) for x in batch]


def weighted(uri, *, bonus=0.0):
    return Weighted(uri, bonus)
'''


@pytest.fixture
def registered(tmp_path, monkeypatch):
    """A distribution registering ``weighted`` (and a broken entry point), on a fresh sys.path entry."""
    from inferbridge.frameworks import registered

    root = tmp_path / "site"
    info = root / "ib_test_handlers-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: ib-test-handlers\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        f"[{registered.ENTRY_POINT_GROUP}]\nweighted = ib_test_handlers:weighted\nbroken = ib_test_handlers:missing\n"
    )
    (root / "ib_test_handlers.py").write_text(WEIGHTED)
    monkeypatch.syspath_prepend(str(root))
    registered._registered.cache_clear()
    yield
    registered._registered.cache_clear()


def test_a_registered_handler_serves_the_model_with_its_arguments(registered, weight):
    model = Model.registered("weighted", weight, output="number", arguments={"bonus": 1.0}, model_id="w")
    spec = Inference(model, key_field="id", feature_fields="f").spec
    assert not spec.python_only and InferenceSpec.from_config(spec.to_config()) == spec  # it travels
    allowed = LoadPolicy(allowed_registered_handlers=("weighted",))
    with beam.Pipeline() as p:
        result = p | beam.Create(_rows(3)) | Inference(model, key_field="id", feature_fields="f", policy=allowed)
        assert_that(
            result.inferences | beam.Map(lambda r: (r.key, r.inference, r.model_id)),
            equal_to([(i, 3 * (i + 1.0), "w") for i in range(3)]),
        )
    # Only the names the policy allows are served (none by default).
    with pytest.raises(ValueError, match=r"models\[0\].format='weighted': the registered handler is not allowed "
                       r"\(none configured\); to allow it, add its name to INFERBRIDGE_ALLOWED_REGISTERED_HANDLERS"):
        with beam.Pipeline() as p:
            _ = p | beam.Create(_rows(1)) | Inference(model, key_field="id", feature_fields="f", policy=LoadPolicy())


@pytest.mark.parametrize(
    "model, message",
    [
        (
            Model.registered("weighted", "/w", arguments={"bonnus": 1}),
            "models[0].options={'bonnus': 1} do not fit the registered handler 'weighted': got an unexpected "
            "keyword argument 'bonnus'; it takes weighted(uri, *, bonus=0.0)",
        ),
        (
            Model.registered("sentiment", "/w"),
            "models[0].format='sentiment' is not a registered model handler; registered: weighted (the "
            "'inferbridge.model_handlers' entry points of the installed packages)",
        ),
        # Which package failed, and how, goes to the log, not to whoever named it.
        (Model.registered("broken", "/w"), "models[0].format='broken' names a registered handler that cannot be used (see the log)"),
        (Model.registered("weighted", "/w", sha256="0" * 64), "models[0].sha256='000"),
    ],
)
def test_registered_handlers_are_checked_when_the_spec_is_built(registered, model, message):
    with pytest.raises(ValueError) as raised:
        Inference(model, key_field="id", feature_fields="f")
    assert message in str(raised.value)
