"""Misconfigurations of the composite fail when it is built, naming the argument, the value and
what is allowed; and what is accepted (integer keys, schema-less elements) works end to end."""

import pickle
import re
import typing

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.testing.util import assert_that, equal_to
from sklearn.dummy import DummyRegressor
from sklearn.linear_model import LinearRegression

from inferbridge import BlockInference, Inference, Model
from inferbridge.inference import KEYWORDS
from inferbridge.policy import LoadPolicy
from inferbridge.spec import InferenceSpec


@pytest.fixture(scope="module")
def regressors(tmp_path_factory):
    """Two real scikit-learn models on two features, pickled: "sum" predicts f0 + f1 (a linear
    regression), "seven" always 7. With the policy that trusts their folder."""
    root = tmp_path_factory.mktemp("construction")
    x = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [2.0, 3.0]])
    trained = {"sum": LinearRegression().fit(x, x.sum(axis=1)), "seven": DummyRegressor(constant=7.0, strategy="constant").fit(x, x[:, 0])}
    paths = {}
    for name, model in trained.items():
        paths[name] = str(root / f"{name}.pkl")
        with open(paths[name], "wb") as f:
            pickle.dump(model, f)
    return paths, LoadPolicy(trusted_roots=(str(root),))


def _inference(paths, **kwargs):
    return Inference(Model.sklearn(paths["sum"]), key_field="id", feature_fields="f", **kwargs)


# 1. policy=


@pytest.mark.parametrize("policy", [{"trusted_roots": ["/models"]}, "/models"])
def test_a_policy_that_is_not_a_load_policy_fails_at_construction(regressors, policy):
    paths, _ = regressors
    with pytest.raises(TypeError) as raised:
        _inference(paths, policy=policy)
    message = str(raised.value)
    assert message.startswith(f"policy={policy!r} is a {type(policy).__name__}, not a LoadPolicy; allowed: a LoadPolicy")
    assert "LoadPolicy(trusted_roots=['/models'])" in message and "or None" in message


# 2. model_updates=


def test_model_updates_that_are_not_a_pcollection_fail_at_construction(regressors):
    paths, _ = regressors
    updates = [beam.Row(model_id="sum", uri="/m/s.pkl")]
    with pytest.raises(TypeError) as raised:
        _inference(paths, model_updates=updates)
    message = str(raised.value)
    assert message.startswith(f"model_updates={updates!r} is a list, not a PCollection; allowed: a PCollection of the same pipeline holding Row(model_id, uri), "
        "Beam's ModelMetadata")
    assert message.endswith("or None")


def test_long_values_are_shortened_in_the_message(regressors):
    paths, _ = regressors
    with pytest.raises(TypeError) as raised:
        _inference(paths, model_updates="x" * 10_000)
    assert "... (10000 characters)" in str(raised.value) and len(str(raised.value)) < 600


# 3. unknown keyword arguments


def test_an_unknown_keyword_names_the_closest_allowed_one_and_lists_them_all(regressors):
    paths, _ = regressors
    with pytest.raises(TypeError) as raised:
        _inference(paths, max_batch=3)
    message = str(raised.value)
    assert message.startswith(
        "Inference() got an unknown keyword argument max_batch=3 (did you mean 'max_batch_size'?); allowed keywords: "
    )
    listed = message.rpartition("allowed keywords: ")[2].split(", ")
    assert listed == list(KEYWORDS)
    for name in ("key_field", "feature_fields", "policy", "model_updates", "max_batch_size", "metrics_namespace"):
        assert name in listed


def test_an_unknown_keyword_without_a_close_name_still_lists_the_allowed_ones(regressors):
    paths, _ = regressors
    with pytest.raises(TypeError) as raised:
        Inference(Model.sklearn(paths["sum"]), key_field="id", feature_fields="f", zzz=[1, 2])
    message = str(raised.value)
    assert "unknown keyword argument zzz=[1, 2]; allowed keywords: key_field," in message
    assert "did you mean" not in message
    with pytest.raises(TypeError, match=r"^BlockInference\(\) got an unknown keyword argument polcy=None \(did you mean 'policy'\?\)"):
        BlockInference(Model.sklearn(paths["sum"]), key_field="id", feature_fields="f", polcy=None)


def test_a_misspelled_required_keyword_is_named_with_the_right_one(regressors):
    paths, _ = regressors
    with pytest.raises(TypeError, match=r"^Inference\(\) got an unknown keyword argument key_fields='id' \(did you mean 'key_field'\?\)"):
        Inference(Model.sklearn(paths["sum"]), key_fields="id", feature_fields="f")
    with pytest.raises(TypeError, match=r"^BlockInference\(\) needs feature_fields=\.\.\., the name of the input's feature field"):
        BlockInference(Model.sklearn(paths["sum"]), key_field="id")


def test_a_misspelled_model_keyword_is_named_with_the_right_one():
    with pytest.raises(TypeError, match=r"^Model\.sklearn\(\) got an unknown keyword argument modelid='a' \(did you mean 'model_id'\?\); allowed keywords: uri, format, output, model_id, keys, options, sha256, watch_pattern, env_vars$"):
        Model.sklearn("/m/a.pkl", modelid="a")
    # Model.pytorch makes the options itself, from model_class, model_params and device.
    with pytest.raises(TypeError, match=r"^Model\.pytorch\(\) got an unknown keyword argument options=\{\}; allowed keywords: uri, model_class, model_params, device, output, model_id, keys, sha256,"):
        Model.pytorch("/m/net.pt", options={})
    # Every listed keyword is taken.
    model = Model.onnx("/m/a.onnx", output="number", model_id="a", keys=["k"], options={"output_name": "label"},
                       sha256="0" * 64, watch_pattern="/m/a*.onnx", env_vars={"OMP_NUM_THREADS": "1"})
    assert (model.model_id, model.keys, model.options, model.env_vars) == ("a", ("k",), {"output_name": "label"}, {"OMP_NUM_THREADS": "1"})


def test_every_listed_keyword_is_accepted(regressors):
    paths, policy = regressors
    values = {"min_batch_size": 1, "max_batch_size": 2, "max_batch_duration_secs": 1.0, "variable_length": "pad",
              "pad_value": 0.0, "max_models_per_worker": 1, "watch_interval_secs": 60.0, "min_ram": "1GB",
              "accelerator": "type:nvidia-tesla-t4;count:1", "metrics_namespace": "ns", "passthrough_fields": ["x"],
              "preprocess": [], "postprocess": [], "model_updates": None, "policy": policy}
    assert set(values) | {"key_field", "feature_fields"} <= set(KEYWORDS)
    assert _inference(paths, **values).spec.max_batch_size == 2


# 4. integer keys


def test_integer_keys_are_kept_as_their_decimal_text():
    model = Model.sklearn("/m.pkl", keys=[1, 2, np.int64(30), -4, "north"])
    assert model.keys == ("1", "2", "30", "-4", "north")
    assert Model.sklearn("/m.pkl", keys=[1]) == Model.sklearn("/m.pkl", keys=["1"])
    spec = InferenceSpec("id", "f", [model, Model.sklearn("/d.pkl", model_id="d")])
    assert [spec.model_for_key(k).id for k in ("1", "30", "-4", "3")] == ["/m.pkl", "/m.pkl", "/m.pkl", "d"]
    assert spec.to_config().models[0].keys == ["1", "2", "30", "-4", "north"]


def test_keys_given_as_one_string_fail_instead_of_being_split_into_characters():
    with pytest.raises(ValueError, match=r"keys='north' is one string; allowed: a list of keys, e.g. keys=\['north'\]"):
        Model.sklearn("/m.pkl", keys="north")


@pytest.mark.parametrize("key", [True, 1.0, None, ""])
def test_keys_that_are_neither_strings_nor_integers_fail(key):
    with pytest.raises(ValueError) as raised:
        InferenceSpec("id", "f", Model.sklearn("/m.pkl", keys=[key]))
    assert str(raised.value) == (
        f"models[0].keys holds {key!r}; allowed: non-empty strings, or integers (kept as their decimal "
        "text, which is how integer key fields are routed)"
    )


def test_integer_keys_route_rows_of_an_integer_key_field(regressors):
    paths, policy = regressors
    rows = [beam.Row(id=i, f=[float(i), 1.0]) for i in (1, 2, 3)]
    with beam.Pipeline() as p:
        source = p | beam.Create(rows)
        assert dict(source.element_type._fields)["id"] is int
        routed = source | "Routed" >> Inference(
            [Model.sklearn(paths["sum"], model_id="sum", keys=[1, 2]), Model.sklearn(paths["seven"], model_id="seven")],
            key_field="id", feature_fields="f", policy=policy,
        )
        assert_that(
            routed.inferences | beam.Map(lambda r: (r.key, r.model_id, round(r.inference, 6))),
            equal_to([(1, "sum", 2.0), (2, "sum", 3.0), (3, "seven", 7.0)]),
        )
        assert_that(routed.failures, equal_to([]), label="NoFailures")
        # Without a default model, the key no model lists is a routing failure that names the keys.
        only = source | "Only" >> Inference(
            Model.sklearn(paths["sum"], model_id="sum", keys=[1, 2]), key_field="id", feature_fields="f", policy=policy
        )
        assert_that(only.inferences | beam.Map(lambda r: r.key), equal_to([1, 2]), label="OnlyServed")
        assert_that(
            only.failures | beam.Map(lambda f: (f.stage, f.error_type, f.key, f.message)),
            equal_to([("routing", "UnmappedKey", "3", "no model serves key '3' and no default model is configured; mapped keys: 1, 2")]),
            label="OnlyUnmapped",
        )


def test_keys_no_integer_key_can_match_are_refused_for_an_integer_key_field(regressors):
    """Rows are routed by the decimal text of an integer key: 'north' or '01' would never
    match, and their rows would go to the default model without a word."""
    paths, policy = regressors
    rows = [beam.Row(id=i, f=[float(i), 1.0]) for i in (1, 2)]
    packed_type = beam.typehints.row_type.RowTypeConstraint.from_fields(
        [("key", list[int]), ("features", bytes), ("feature_count", np.int32)]
    )
    for key in ("north", "01", "1.0", " 1"):
        models = [Model.sklearn(paths["sum"], model_id="sum", keys=[2, key]), Model.sklearn(paths["seven"], model_id="seven")]
        message = (
            f"models[0].keys[1]={key!r} can never match: key_field 'id' is an integer field, whose keys are "
            "matched by their decimal text; allowed: integer keys, e.g. keys=[1, 2] or keys=['1', '2']"
        )
        with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
            beam.Pipeline() | beam.Create(rows) | Inference(models, key_field="id", feature_fields="f", policy=policy)
        # Packed blocks from Java, whose key array holds integers.
        packed = BlockInference(models, key_field="id", feature_fields="f", policy=policy)
        with pytest.raises(ValueError, match="can never match: key_field 'id' is an integer field"):
            beam.Pipeline() | beam.Create([]).with_output_types(packed_type) | packed
    # A string key field takes any key; an integer one takes negative keys and zero.
    text_rows = [beam.Row(id=str(i), f=[float(i), 1.0]) for i in (1, 2)]
    beam.Pipeline() | beam.Create(text_rows) | Inference(
        [Model.sklearn(paths["sum"], keys=["north", "01"])], key_field="id", feature_fields="f", policy=policy
    )
    beam.Pipeline() | beam.Create(rows) | Inference(
        [Model.sklearn(paths["sum"], keys=[-4, 0, "12"])], key_field="id", feature_fields="f", policy=policy
    )


# 5. PyTorch files of the other kind


@pytest.fixture(scope="module")
def torch_files(tmp_path_factory):
    """A tiny TinyNet trained a few steps, saved as a state_dict and as TorchScript."""
    import torch
    import tiny_torch

    rng = np.random.default_rng(0)
    features = rng.normal(size=(40, 4))
    net = tiny_torch.train(features, (features[:, 0] > 0).astype(np.int64), steps=5)
    root = tmp_path_factory.mktemp("torch")
    paths = {"state_dict": str(root / "net.pt"), "torchscript": str(root / "net.ts")}
    torch.save(net.state_dict(), paths["state_dict"])
    torch.jit.script(net).save(paths["torchscript"])
    return paths, LoadPolicy(trusted_roots=(str(root),), allowed_model_classes=("tiny_torch",))


def _apply(model, policy):
    with beam.Pipeline() as p:
        _ = p | beam.Create([beam.Row(id=1, f=[0.0, 1.0, 2.0, 3.0])]) | Inference(
            model, key_field="id", feature_fields="f", policy=policy
        )


def test_a_state_dict_without_model_class_fails_at_construction(torch_files):
    paths, policy = torch_files
    with pytest.raises(ValueError) as raised:
        _apply(Model.pytorch(paths["state_dict"]), policy)
    message = str(raised.value)
    assert message.startswith(
        f"models[0].uri={paths['state_dict']!r} is a torch.save file (a state_dict), not TorchScript, and no "
        "model_class is given; allowed: a state_dict with model_class='package.module:Class'"
    ), message
    assert "torch.jit.save" in message


def test_a_torchscript_file_with_model_class_fails_at_construction(torch_files):
    paths, policy = torch_files
    with pytest.raises(ValueError) as raised:
        _apply(Model.pytorch(paths["torchscript"], model_class="tiny_torch:TinyNet", model_params={"n_features": 4}), policy)
    message = str(raised.value)
    assert message.startswith(
        f"models[0].uri={paths['torchscript']!r} is a TorchScript archive, not a state_dict, but "
        "models[0].options.model_class='tiny_torch:TinyNet' is given; allowed: a TorchScript file without model_class"
    ), message


def test_model_params_the_class_does_not_take_fail_at_construction(torch_files):
    paths, policy = torch_files
    with pytest.raises(ValueError) as raised:
        _apply(Model.pytorch(paths["state_dict"], model_class="tiny_torch:TinyNet", model_params={"hidden": 4}), policy)
    assert str(raised.value).startswith(
        "models[0].options.model_params={'hidden': 4} does not fit tiny_torch:TinyNet(n_features: int = 64, "
        "n_hidden: int = 16, n_outputs: int = 10): got an unexpected keyword argument 'hidden'; allowed: the keyword "
        "arguments of the class's __init__"
    ), raised.value


def test_pytorch_files_of_the_declared_kind_run(torch_files):
    paths, policy = torch_files
    with beam.Pipeline() as p:
        rows = p | beam.Create([beam.Row(id=1, f=[0.0, 1.0, 2.0, 3.0])])
        for name, model in {
            "state_dict": Model.pytorch(paths["state_dict"], model_class="tiny_torch:TinyNet", model_params={"n_features": 4}),
            "torchscript": Model.pytorch(paths["torchscript"]),
        }.items():
            result = rows | name >> Inference(model, key_field="id", feature_fields="f", policy=policy)
            assert_that(result.inferences | f"{name}Width" >> beam.Map(lambda r: len(r.inference)), equal_to([10]), label=f"{name}Served")


def test_a_refresh_to_a_file_of_the_other_kind_is_not_refused_when_the_path_changes(torch_files):
    from inferbridge import models

    paths, policy = torch_files
    handler = models.handler_for(Model.pytorch(paths["torchscript"]), policy, "models[0]")
    # Only the configured file is checked, when the pipeline is built: an update's file fails
    # when it loads, where a model slot logs it and keeps serving the model it has.
    handler.update_model_path(paths["state_dict"])
    with pytest.raises(Exception):
        handler.load_model()


# 6. elements that are not schema'd Rows


@pytest.mark.parametrize(
    "elements, shown",
    [
        ([{"id": "a", "f": [1.0]}], "Dict[<class 'str'>"),
        ([("a", [1.0])], "Tuple[<class 'str'>"),
        (["a"], "<class 'str'>"),
    ],
)
def test_elements_of_a_known_type_that_is_not_a_row_fail_at_construction(regressors, elements, shown):
    paths, policy = regressors
    p = beam.Pipeline()
    with pytest.raises(TypeError) as raised:
        _ = p | beam.Create(elements) | _inference(paths, policy=policy)
    message = str(raised.value)
    assert message.startswith(f"Inference needs schema'd Rows as input, but the input PCollection's elements are {shown}"), message
    assert "key_field='id' and feature_fields ['f']" in message
    assert "beam.Map(lambda d: beam.Row(**d))" in message and "RowCoder" in message


def test_arrow_elements_point_to_block_inference(regressors):
    import pyarrow as pa

    paths, policy = regressors
    p = beam.Pipeline()
    batch = pa.RecordBatch.from_pydict({"id": ["a"], "f": [[1.0, 2.0]]})
    with pytest.raises(TypeError, match="for pyarrow RecordBatch or Table elements use BlockInference"):
        _ = p | beam.Create([batch]) | _inference(paths, policy=policy)


def test_elements_of_an_unknown_type_that_are_not_rows_are_input_failures(regressors):
    paths, policy = regressors
    # (A dict first: Beam infers a Create's type from its first element.)
    elements = [{"id": "b", "f": [1.0, 2.0]}, beam.Row(id="a", f=[1.0, 2.0]), ("c", [1.0, 2.0])]
    with beam.Pipeline() as p:
        result = p | beam.Create(elements).with_output_types(typing.Any) | _inference(paths, policy=policy)
        assert_that(result.inferences | beam.Map(lambda r: (r.key, round(r.inference, 6))), equal_to([("a", 3.0)]))

        def check(failures):
            assert sorted((f.stage, f.error_type, f.key) for f in failures) == [("input", "TypeError", None)] * 2
            for f, kind in zip(sorted(failures, key=lambda f: f.message), ("dict", "tuple")):
                assert f.message.startswith(
                    f"the element is a {kind}, not a schema'd Row with key_field 'id' and feature_fields ['f']; "
                    "Inference reads Rows: make Rows with beam.Map(lambda d: beam.Row(**d))"
                ), f.message
                assert "RowCoder" in f.message

        assert_that(result.failures, check, label="Failures")
