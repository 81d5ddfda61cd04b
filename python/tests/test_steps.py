"""Steps: their values, batched runs, parameter checks, kinds, and user steps from entry points."""

import textwrap

import numpy as np
import pytest

from inferbridge import steps

PRE, POST = steps.PREPROCESS, steps.POSTPROCESS


def run(stage, name, x, **params):
    """One example through the built step."""
    definition = steps.lookup(stage, name)
    return definition.build(steps.check_params(definition, params))(x)


def error(stage, name, **params):
    """The message of the error that checking ``params`` raises."""
    with pytest.raises(ValueError) as raised:
        steps.check_params(steps.lookup(stage, name), params)
    return str(raised.value)


def test_kinds():
    assert (steps.VECTOR, steps.NUMBER, steps.INTEGER, steps.LABEL, steps.MAP, steps.ANY) == (
        "vector", "number", "integer", "label", "map", "any",
    )
    assert set(steps.KINDS) == {"vector", "number", "integer", "label", "map", "any"}


# name, stage, params (name: required), accepts, produces, batched
TABLE = [
    ("scale", PRE, {"factor": True}, (), "", True),
    ("normalize", PRE, {"mean": True, "std": True}, (), "", True),
    ("reshape", PRE, {"shape": True}, (), "", True),
    ("cast", PRE, {"dtype": True}, (), "", True),
    ("pad", PRE, {"length": True, "value": False}, (), "", False),
    ("truncate", PRE, {"length": True}, (), "", False),
    ("argmax", POST, {}, ("vector",), "integer", True),
    ("softmax", POST, {}, ("vector",), "vector", True),
    ("top_k", POST, {"k": True, "names": False}, ("vector",), "map", False),
    ("threshold", POST, {"value": True}, ("number",), "integer", True),
    ("round", POST, {}, ("number",), "integer", True),
    ("labels", POST, {"names": True}, ("integer",), "label", False),
    ("label_map", POST, {"mapping": True}, ("integer", "label"), "label", False),
    ("scores", POST, {"names": True}, ("vector",), "map", False),
]


@pytest.mark.parametrize("name, stage, params, accepts, produces, batched", TABLE)
def test_declarations(name, stage, params, accepts, produces, batched):
    definition = steps.lookup(stage, name)
    assert (definition.name, definition.stage) == (name, stage)
    assert {p.name: p.required for p in definition.params} == params
    assert (definition.accepts, definition.produces, definition.batched) == (accepts, produces, batched)
    assert definition.origin == ""


def test_catalog_lists_the_built_ins_in_table_order():
    assert [d.name for d in steps.catalog()][: len(TABLE)] == [row[0] for row in TABLE]


# -- preprocessing values --


def test_scale():
    np.testing.assert_array_equal(run(PRE, "scale", np.array([2.0, 4.0]), factor=0.5), [1.0, 2.0])


def test_normalize_with_numbers_and_per_feature_lists():
    x = np.array([[1.0, 2.0], [3.0, 6.0]])
    np.testing.assert_allclose(run(PRE, "normalize", x, mean=1, std=2), [[0.0, 0.5], [1.0, 2.5]])
    np.testing.assert_allclose(run(PRE, "normalize", x, mean=[1, 2], std=[2, 4]), [[0.0, 0.0], [1.0, 1.0]])
    np.testing.assert_allclose(run(PRE, "normalize", np.array([3.0, 4.0]), mean=[1, 2], std=2), [1.0, 1.0])


def test_normalize_names_a_feature_count_that_does_not_fit():
    with pytest.raises(ValueError, match=r"normalize': mean/std give 2 features but the input has shape \(3,\)"):
        run(PRE, "normalize", np.zeros(3), mean=[1, 2], std=1)


def test_reshape():
    x = np.arange(6.0)
    assert run(PRE, "reshape", x, shape=[2, 3]).shape == (2, 3)
    assert run(PRE, "reshape", x, shape=[-1, 2]).shape == (3, 2)
    with pytest.raises(ValueError, match=r"'reshape': cannot reshape an input of shape \(6,\) to \(4,\)"):
        run(PRE, "reshape", x, shape=[4])


def test_cast():
    for dtype in ("float32", "float64", "int32", "int64"):
        out = run(PRE, "cast", np.array([1.7, -2.2]), dtype=dtype)
        assert out.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(run(PRE, "cast", np.array([1.7, -2.2]), dtype="int64"), [1, -2])


def test_pad_fills_the_last_axis_and_leaves_longer_inputs():
    np.testing.assert_array_equal(run(PRE, "pad", np.array([1.0, 2.0]), length=4), [1, 2, 0, 0])
    np.testing.assert_array_equal(run(PRE, "pad", np.array([1.0]), length=3, value=-1), [1, -1, -1])
    np.testing.assert_array_equal(run(PRE, "pad", np.array([1.0, 2.0, 3.0]), length=2), [1, 2, 3])
    np.testing.assert_array_equal(run(PRE, "pad", np.ones((2, 1)), length=2, value=5), [[1, 5], [1, 5]])


def test_truncate_cuts_the_last_axis():
    np.testing.assert_array_equal(run(PRE, "truncate", np.arange(5.0), length=2), [0, 1])
    np.testing.assert_array_equal(run(PRE, "truncate", np.arange(2.0), length=4), [0, 1])
    assert run(PRE, "truncate", np.ones((3, 5)), length=2).shape == (3, 2)


# -- postprocessing values --


def test_argmax_gives_a_python_int():
    result = run(POST, "argmax", np.array([0.1, 0.7, 0.2]))
    assert result == 1 and type(result) is int


def test_softmax():
    v = np.array([1.0, 2.0, 3.0])
    expected = np.exp(v) / np.exp(v).sum()
    np.testing.assert_allclose(run(POST, "softmax", v), expected)
    # Large scores do not overflow.
    np.testing.assert_allclose(run(POST, "softmax", v + 1000), expected)


def test_top_k_keys_by_index_or_by_name_in_descending_order():
    v = np.array([0.1, 0.5, 0.3, 0.5])
    result = run(POST, "top_k", v, k=3)
    assert list(result.items()) == [("1", 0.5), ("3", 0.5), ("2", 0.3)]
    assert run(POST, "top_k", v, k=1, names=["a", "b", "c", "d"]) == {"b": 0.5}
    assert run(POST, "top_k", [1, 2], k=1, names=None) == {"1": 2.0}


def test_top_k_errors_name_the_counts():
    with pytest.raises(ValueError, match=r"'top_k': k=3 but the model gave 2 scores"):
        run(POST, "top_k", np.array([0.1, 0.2]), k=3)
    with pytest.raises(ValueError, match=r"'top_k': 3 names are configured but the model gave 2 scores"):
        run(POST, "top_k", np.array([0.1, 0.2]), k=1, names=["a", "b", "c"])


def test_threshold():
    assert run(POST, "threshold", 0.5, value=0.5) == 1
    assert run(POST, "threshold", np.float32(0.49), value=0.5) == 0
    assert type(run(POST, "threshold", np.float64(2), value=0)) is int


def test_round_goes_half_to_even_and_rejects_non_finite():
    assert [run(POST, "round", x) for x in (2.5, 3.5, -1.4, np.float32(0.6))] == [2, 4, -1, 1]
    assert type(run(POST, "round", 1.2)) is int
    with pytest.raises(ValueError, match=r"'round' cannot round nan to an integer"):
        run(POST, "round", float("nan"))


def test_labels():
    assert run(POST, "labels", 1, names=["a", "b"]) == "b"
    assert run(POST, "labels", np.int64(0), names=["a", "b"]) == "a"
    for index in (2, -1):
        with pytest.raises(ValueError, match=rf"'labels': index {index} is outside the 2 configured names \(0 to 1\)"):
            run(POST, "labels", index, names=["a", "b"])
    with pytest.raises(ValueError, match=r"'labels' takes an integer index, got 1.5"):
        run(POST, "labels", 1.5, names=["a", "b"])


def test_label_map_looks_up_the_string_form():
    mapping = {"0": "cat", "1": "dog", "fish": "carp"}
    assert run(POST, "label_map", 1, mapping=mapping) == "dog"
    assert run(POST, "label_map", np.int64(0), mapping=mapping) == "cat"
    assert run(POST, "label_map", "fish", mapping=mapping) == "carp"
    with pytest.raises(ValueError, match=r"'label_map' has no label for '7'; known keys: '0', '1', 'fish'"):
        run(POST, "label_map", 7, mapping=mapping)


def test_scores():
    assert run(POST, "scores", np.array([0.25, 0.75]), names=["no", "yes"]) == {"no": 0.25, "yes": 0.75}
    with pytest.raises(ValueError, match=r"'scores': 2 names are configured but the model gave 3 scores"):
        run(POST, "scores", np.array([0.1, 0.2, 0.7]), names=["no", "yes"])


# -- batched steps: one call on a batch equals one call per row --

BATCHED = [
    (PRE, "scale", {"factor": -1.5}, (5, 4)),
    (PRE, "normalize", {"mean": 0.5, "std": 2}, (5, 4)),
    (PRE, "normalize", {"mean": [0, 1, 2, 3], "std": [1, 2, 3, 4]}, (5, 4)),
    (PRE, "reshape", {"shape": [2, 2]}, (5, 4)),
    (PRE, "reshape", {"shape": [-1]}, (5, 2, 2)),
    (PRE, "cast", {"dtype": "int32"}, (5, 4)),
    (POST, "argmax", {}, (5, 4)),
    (POST, "softmax", {}, (5, 4)),
    (POST, "threshold", {"value": 0.0}, (5,)),
    (POST, "threshold", {"value": 0.0}, (5, 4)),
    (POST, "round", {}, (5,)),
    (POST, "round", {}, (5, 4)),
]


def test_every_batched_step_is_covered():
    assert {(stage, name) for stage, name, _, _ in BATCHED} == {
        (d.stage, d.name) for d in steps.catalog() if d.batched
    }


@pytest.mark.parametrize("stage, name, params, shape", BATCHED)
def test_batched_equals_per_row(stage, name, params, shape):
    definition = steps.lookup(stage, name)
    checked = steps.check_params(definition, params)
    batch = np.random.default_rng(7).normal(scale=3, size=shape)
    batched = definition.build_for_batch(checked)(batch)
    per_element = definition.build(checked)
    assert batched.shape[0] == shape[0]
    for row, result in zip(batch, batched):
        np.testing.assert_array_equal(result, per_element(row))


def test_build_for_batch_refuses_a_step_that_is_not_batched():
    with pytest.raises(ValueError, match=r"preprocess step 'pad' is not batched"):
        steps.lookup(PRE, "pad").build_for_batch({"length": 2, "value": 0.0})


# -- parameter checks --

NUMBERS = "a finite number or a non-empty list of finite numbers"
SHAPE = "a non-empty list of positive integers with at most one -1"
STRING_MAP = "a non-empty JSON object of strings to strings"
DISTINCT = "distinct strings (they become map keys)"


@pytest.mark.parametrize(
    "stage, name, params, param, what, shown",
    [
        (PRE, "scale", {"factor": "2"}, "factor", "a number", "'2'"),
        (PRE, "scale", {"factor": True}, "factor", "a number", "True"),
        (PRE, "scale", {"factor": None}, "factor", "a number", "None"),
        (PRE, "scale", {"factor": float("inf")}, "factor", "a finite number", "inf"),
        (POST, "threshold", {"value": float("nan")}, "value", "a finite number", "nan"),
        (PRE, "pad", {"length": 0}, "length", "a positive integer", "0"),
        (PRE, "pad", {"length": 2.0}, "length", "a positive integer", "2.0"),
        (PRE, "pad", {"length": True}, "length", "a positive integer", "True"),
        (PRE, "truncate", {"length": "3"}, "length", "a positive integer", "'3'"),
        (PRE, "pad", {"length": 2, "value": "x"}, "value", "a number", "'x'"),
        (POST, "top_k", {"k": -1}, "k", "a positive integer", "-1"),
        (PRE, "normalize", {"mean": [], "std": 1}, "mean", NUMBERS, "[]"),
        (PRE, "normalize", {"mean": [1, "a"], "std": 1}, "mean", NUMBERS, "[1, 'a']"),
        (PRE, "normalize", {"mean": 0, "std": [1, float("inf")]}, "std", NUMBERS, "[1, inf]"),
        (PRE, "normalize", {"mean": 0, "std": 0}, "std", "non-zero everywhere", "0.0"),
        (PRE, "normalize", {"mean": 0, "std": [1, 0]}, "std", "non-zero everywhere", "[1.0, 0.0]"),
        (POST, "labels", {"names": []}, "names", "a non-empty list of strings", "[]"),
        (POST, "labels", {"names": "ab"}, "names", "a non-empty list of strings", "'ab'"),
        (POST, "labels", {"names": ["a", 1]}, "names", "a non-empty list of strings", "['a', 1]"),
        (POST, "scores", {"names": ["a", "a"]}, "names", DISTINCT, "['a', 'a']"),
        (POST, "top_k", {"k": 1, "names": ["x", "x"]}, "names", DISTINCT, "['x', 'x']"),
        (POST, "top_k", {"k": 3, "names": ["a", "b"]}, "k", "at most the 2 names", "3"),
        (POST, "label_map", {"mapping": {}}, "mapping", STRING_MAP, "{}"),
        (POST, "label_map", {"mapping": ["a"]}, "mapping", STRING_MAP, "['a']"),
        (POST, "label_map", {"mapping": {"0": 1}}, "mapping", STRING_MAP, "{'0': 1}"),
        (PRE, "reshape", {"shape": []}, "shape", SHAPE, "[]"),
        (PRE, "reshape", {"shape": [2, 0]}, "shape", SHAPE, "[2, 0]"),
        (PRE, "reshape", {"shape": [-1, 2, -1]}, "shape", SHAPE, "[-1, 2, -1]"),
        (PRE, "reshape", {"shape": [-2]}, "shape", SHAPE, "[-2]"),
        (PRE, "reshape", {"shape": 4}, "shape", SHAPE, "4"),
        (PRE, "cast", {"dtype": "float16"}, "dtype", "one of float32, float64, int32, int64", "'float16'"),
    ],
)
def test_parameter_errors_name_the_step_the_parameter_and_the_value(stage, name, params, param, what, shown):
    assert error(stage, name, **params) == f"{stage} step {name!r}: parameter {param!r} must be {what}, got {shown}"


def test_mean_and_std_lists_must_have_the_same_length():
    assert error(PRE, "normalize", mean=[1, 2], std=[1, 2, 3]) == (
        "preprocess step 'normalize': parameters 'mean' and 'std' must have the same length, got 2 and 3"
    )


def test_unknown_and_missing_parameters_list_what_is_allowed():
    allowed = "allowed: length (a positive integer), value (a number, default 0.0)"
    assert error(PRE, "pad", length=2, width=3) == f"preprocess step 'pad': unknown parameter(s) 'width'; {allowed}"
    assert error(PRE, "pad", value=1) == f"preprocess step 'pad': parameter 'length' is required; {allowed}"
    assert error(POST, "argmax", axis=0) == "postprocess step 'argmax': unknown parameter(s) 'axis'; allowed: none"
    assert error(POST, "top_k") == (
        "postprocess step 'top_k': parameter 'k' is required; "
        "allowed: k (a positive integer), names (a non-empty list of strings, optional)"
    )


def test_optional_parameters_take_their_defaults_and_values_are_normalised():
    assert steps.check_params(steps.lookup(PRE, "pad"), {"length": 3}) == {"length": 3, "value": 0.0}
    assert steps.check_params(steps.lookup(PRE, "pad"), {"length": 3, "value": None}) == {"length": 3, "value": 0.0}
    assert steps.check_params(steps.lookup(POST, "top_k"), {"k": 2}) == {"k": 2, "names": None}
    assert steps.check_params(steps.lookup(PRE, "normalize"), {"mean": 1, "std": (2, 4)}) == {
        "mean": 1.0,
        "std": [2.0, 4.0],
    }


# -- lookup and definitions --


def test_lookup_lists_the_steps_of_the_stage():
    with pytest.raises(ValueError) as raised:
        steps.lookup(PRE, "blur")
    assert str(raised.value) == (
        "preprocess step 'blur' is not registered; available: cast, normalize, pad, reshape, scale, "
        "truncate; user steps: none"
    )
    with pytest.raises(ValueError, match=r"postprocess step 'scale' is not registered; available: argmax, "
                       r"label_map, labels, round, scores, softmax, threshold, top_k; user steps: none; "
                       r"'scale' is a preprocess step"):
        steps.lookup(POST, "scale")
    with pytest.raises(ValueError, match=r"stage must be one of preprocess, postprocess, got 'middle'"):
        steps.lookup("middle", "scale")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(name="", stage=PRE), "a step name must be a non-empty string, got ''"),
        (dict(stage="middle"), "step 'x': stage must be one of preprocess, postprocess, got 'middle'"),
        (dict(stage=POST, produces="tensor"), "step 'x': kind 'tensor' is not known; allowed: vector, number, integer, label, map, any"),
        (dict(stage=POST, accepts=["vector", "matrix"]), "step 'x': kind 'matrix' is not known"),
        (dict(stage=PRE, produces="label"), "step 'x': preprocessing steps turn examples into model input and declare no kinds"),
        (dict(stage=PRE, build_batch=lambda p: None), "step 'x': build_batch is only for batched steps"),
        (dict(stage=PRE, build=3), "step 'x': build must be a callable, got 3"),
        (dict(stage=PRE, params=[steps.Param("a", "number")] * 2), "step 'x': parameter names must be distinct, got ['a', 'a']"),
        (dict(stage=PRE, params=["a"]), "step 'x': params must be Param objects"),
        (
            dict(stage=PRE, params=[steps.Param("a", "positive_int", required=False, default=0)]),
            "preprocess step 'x': parameter 'a' must be a positive integer, got 0",
        ),
    ],
)
def test_define_checks_the_declaration(kwargs, message):
    arguments = dict(name="x", build=lambda params: lambda x: x)
    arguments.update(kwargs)
    with pytest.raises(ValueError) as raised:
        steps.define(**arguments)
    assert message in str(raised.value)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(kind="text"), "parameter 'p': kind 'text' is not known; allowed: number, positive_int, numbers"),
        (dict(kind="choice"), "parameter 'p': give choices exactly when the kind is 'choice'"),
        (dict(kind="number", choices=("a",)), "parameter 'p': give choices exactly when the kind is 'choice'"),
        (dict(kind="number", default=1.0), "parameter 'p' has a default, so it must have required=False"),
    ],
)
def test_param_checks_its_declaration(kwargs, message):
    with pytest.raises(ValueError) as raised:
        steps.Param("p", **kwargs)
    assert message in str(raised.value)


def test_define_normalises_kinds():
    build = lambda params: lambda x: x  # noqa: E731
    assert steps.define("a", POST, build, accepts="vector").accepts == ("vector",)
    assert steps.define("a", POST, build, accepts=["any"]).accepts == ()
    assert steps.define("a", POST, build).produces == steps.ANY
    assert steps.define("a", PRE, build, produces=steps.ANY).produces == ""


def test_a_user_validator_error_is_prefixed_with_the_step():
    def validate(params):
        if params["low"] > params["high"]:
            raise ValueError(f"parameter 'low' must be at most 'high', got {params['low']!r}")

    definition = steps.define(
        "clip", PRE, lambda p: lambda x: x, [steps.Param("low", "number"), steps.Param("high", "number")],
        validate=validate,
    )
    with pytest.raises(ValueError, match=r"^preprocess step 'clip': parameter 'low' must be at most 'high', got 2.0$"):
        steps.check_params(definition, {"low": 2, "high": 1})


def test_from_callable():
    def shout(label):
        return label.upper()

    definition = steps.from_callable(POST, shout, produces=steps.LABEL, accepts=[steps.LABEL])
    assert (definition.name, definition.stage, definition.params) == ("shout", POST, ())
    assert (definition.accepts, definition.produces, definition.batched) == (("label",), "label", False)
    assert definition.build(steps.check_params(definition, {}))("cat") == "CAT"
    assert definition.origin == "Python callable"

    anything = steps.from_callable(POST, lambda v: v)
    assert (anything.name, anything.accepts, anything.produces) == ("<lambda>", (), steps.ANY)

    double = steps.from_callable(PRE, np.negative, batched=True)
    assert (double.name, double.produces, double.batched) == ("negative", "", True)
    np.testing.assert_array_equal(double.build_for_batch({})(np.ones((2, 2))), -np.ones((2, 2)))

    with pytest.raises(ValueError, match=r"preprocess step must be a callable, got 3"):
        steps.from_callable(PRE, 3)
    with pytest.raises(ValueError, match=r"step 'shout': preprocessing steps .* declare no kinds"):
        steps.from_callable(PRE, shout, accepts=[steps.LABEL])


# -- user steps from the inferbridge.steps entry-point group --


@pytest.fixture
def install(tmp_path, monkeypatch):
    """Installs a distribution (metadata, entry points, modules) into a fresh sys.path entry."""
    monkeypatch.syspath_prepend(str(tmp_path))

    def install_(distribution, entry_points, modules):
        info = tmp_path / f"{distribution.replace('-', '_')}-1.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {distribution}\nVersion: 1.0\n")
        lines = "".join(f"{name} = {target}\n" for name, target in entry_points.items())
        (info / "entry_points.txt").write_text(f"[{steps.ENTRY_POINT_GROUP}]\n{lines}")
        for module, source in modules.items():
            (tmp_path / f"{module}.py").write_text(textwrap.dedent(source))
        return info

    steps._user_steps.cache_clear()
    yield install_
    # The next lookup reads the entry points again, without this test's sys.path entry.
    steps._user_steps.cache_clear()


CLIP = """
    import numpy as np
    from inferbridge import steps

    def _clip(params):
        return lambda x: np.clip(x, params["low"], params["high"])

    clip = steps.define(
        "clip", steps.PREPROCESS, _clip,
        params=[steps.Param("low", "number"), steps.Param("high", "number")], batched=True)
    """


def test_a_user_step_is_found_through_its_entry_point(install):
    install("clip-steps", {"clip": "ib_test_clip:clip"}, {"ib_test_clip": CLIP})
    definition = steps.lookup(PRE, "clip")
    assert definition.origin == "entry point 'clip = ib_test_clip:clip' of distribution 'clip-steps'"
    assert definition.batched
    np.testing.assert_array_equal(run(PRE, "clip", np.array([-5.0, 0.5, 5.0]), low=0, high=1), [0, 0.5, 1])
    assert error(PRE, "clip", low=0, high="1") == "preprocess step 'clip': parameter 'high' must be a number, got '1'"
    assert [d.name for d in steps.catalog()][len(TABLE):] == ["clip"]
    with pytest.raises(ValueError, match=r"available: cast, normalize, pad, reshape, scale, truncate; user steps: clip$"):
        steps.lookup(PRE, "blur")


def test_user_steps_are_loaded_once(install):
    info = install("clip-steps", {"clip": "ib_test_clip_once:clip"}, {"ib_test_clip_once": CLIP})
    assert steps.lookup(PRE, "clip").name == "clip"
    for path in info.iterdir():
        path.unlink()
    info.rmdir()
    assert steps.lookup(PRE, "clip").name == "clip"


def test_an_entry_point_may_give_several_steps(install):
    source = """
        from inferbridge import steps

        def _invert(params):
            return lambda v: 1 - v

        ALL = [
            steps.define("invert", steps.POSTPROCESS, _invert, accepts="number", produces="number"),
            steps.define("ident", steps.PREPROCESS, lambda params: lambda x: x),
        ]
        """
    install("many-steps", {"bundle": "ib_test_bundle:ALL"}, {"ib_test_bundle": source})
    assert run(POST, "invert", 0.25) == 0.75
    assert steps.lookup(POST, "invert").produces == steps.NUMBER
    assert steps.lookup(PRE, "ident").origin == "entry point 'bundle = ib_test_bundle:ALL' of distribution 'many-steps'"
    with pytest.raises(ValueError, match=r"postprocess step 'bundle' is not registered; .* user steps: invert$"):
        steps.lookup(POST, "bundle")


def test_a_user_step_may_not_reuse_a_built_in_name(install):
    source = """
        from inferbridge import steps
        scale = steps.define("scale", steps.PREPROCESS, lambda params: lambda x: x)
        """
    install("shadow-steps", {"scale": "ib_test_shadow:scale"}, {"ib_test_shadow": source})
    with pytest.raises(ValueError) as raised:
        steps.lookup(PRE, "scale")
    assert str(raised.value) == (
        "preprocess step 'scale' cannot be used: entry point 'scale = ib_test_shadow:scale' of distribution "
        "'shadow-steps' defines 'scale', the name of a built-in step; rename it"
    )
    assert steps.lookup(PRE, "normalize").name == "normalize"


def test_two_user_steps_may_not_share_a_name(install):
    install("clip-a", {"clip": "ib_test_clip_a:clip"}, {"ib_test_clip_a": CLIP})
    install("clip-b", {"clip": "ib_test_clip_b:clip"}, {"ib_test_clip_b": CLIP})
    with pytest.raises(ValueError) as raised:
        steps.lookup(PRE, "clip")
    message = str(raised.value)
    assert message.startswith("preprocess step 'clip' cannot be used: entry point 'clip = ib_test_clip_")
    assert "of distribution 'clip-a'" in message and "of distribution 'clip-b'" in message
    assert message.endswith("both define 'clip'; rename one")


def test_a_broken_entry_point_fails_only_its_own_lookup(install):
    install(
        "broken-steps",
        {"clip": "ib_test_clip_ok:clip", "explode": "ib_test_explode:step", "missing": "ib_test_nowhere:step",
         "wrong": "ib_test_wrong:step"},
        {
            "ib_test_clip_ok": CLIP,
            "ib_test_explode": "raise RuntimeError('no GPU here')\n",
            "ib_test_wrong": "def step(x):\n    return x\n",
        },
    )
    assert steps.lookup(PRE, "clip").name == "clip"
    assert steps.lookup(POST, "argmax").name == "argmax"
    with pytest.raises(ValueError) as raised:
        steps.lookup(POST, "explode")
    assert str(raised.value) == (
        "postprocess step 'explode' cannot be used: entry point 'explode = ib_test_explode:step' of distribution "
        "'broken-steps' failed to load: RuntimeError: no GPU here"
    )
    with pytest.raises(ValueError, match=r"entry point 'missing = ib_test_nowhere:step' of distribution "
                       r"'broken-steps' failed to load: ModuleNotFoundError: No module named 'ib_test_nowhere'"):
        steps.lookup(PRE, "missing")
    with pytest.raises(ValueError, match=r"'wrong = ib_test_wrong:step' .* failed to load: TypeError: it must load to "
                       r"a StepDefinition \(see inferbridge.steps.define\) or an iterable of them, got <function"):
        steps.lookup(PRE, "wrong")
    with pytest.raises(ValueError, match=r"user steps: clip; entry points that cannot be used: 'explode', "
                       r"'missing', 'wrong'$"):
        steps.lookup(PRE, "blur")
    assert [d.name for d in steps.catalog()][len(TABLE):] == ["clip"]


def test_catalog_matches_the_golden_file_java_reads():
    import json
    from pathlib import Path

    golden = Path(__file__).resolve().parents[2] / "tests" / "golden" / "steps_v1.json"
    assert json.loads(golden.read_text()) == steps.catalog_description()
