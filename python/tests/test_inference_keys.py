"""Per-key models: Beam's KeyModelMapping semantics, a default model, and unmapped keys."""

import pickle

import apache_beam as beam
import pytest
from apache_beam.testing.util import assert_that, equal_to
from sklearn.dummy import DummyClassifier
from sklearn.linear_model import LogisticRegression

from inferbridge import Inference, Model, Step
from inferbridge.policy import LoadPolicy


@pytest.fixture(scope="module")
def keyed_models(digits, tmp_path_factory):
    """Three real models saved as pickles: a full classifier, one on even rows, and a constant."""
    pixels, labels = digits
    root = tmp_path_factory.mktemp("keyed")
    trained = {
        "full": LogisticRegression(max_iter=3000).fit(pixels[:600] / 16, labels[:600]),
        "even": LogisticRegression(max_iter=3000).fit(pixels[:600:2] / 16, labels[:600:2]),
        "sevens": DummyClassifier(strategy="constant", constant=7).fit(pixels[:10], labels[:10]),
    }
    paths = {}
    for name, model in trained.items():
        paths[name] = str(root / f"{name}.pkl")
        with open(paths[name], "wb") as f:
            pickle.dump(model, f)
    return trained, paths, LoadPolicy(trusted_roots=(str(root),))


def rows_for(pixels, keys):
    return [beam.Row(id=i, region=key, pixels=[float(v) for v in pixels[i]]) for i, key in enumerate(keys)]


def test_keys_share_models_and_unmapped_keys_use_the_default(keyed_models, held_out):
    trained, paths, policy = keyed_models
    pixels, _ = held_out
    keys = ["north", "south", "east", "west", "elsewhere"] * 8
    names = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    with beam.Pipeline() as p:
        # Pre- and postprocessing around a keyed multi-model handler: this composition fails at
        # run time in Beam 2.77 when the steps are Beam pre/post functions (a regression test).
        result = p | beam.Create(rows_for(pixels, keys)) | Inference(
            [
                Model.sklearn(paths["even"], model_id="even", keys=["north", "south"]),
                Model.sklearn(paths["sevens"], model_id="sevens", keys=["east"]),
                Model.sklearn(paths["full"], model_id="full"),  # no keys: the default
            ],
            key_field="region",
            feature_fields="pixels",
            passthrough_fields=["id"],
            preprocess=[Step("scale", factor=1 / 16)],
            postprocess=[Step("round"), Step("labels", names=names)],
            policy=policy,
        )
        model_of = {"north": "even", "south": "even", "east": "sevens"}
        expected = []
        for i, key in enumerate(keys):
            model_id = model_of.get(key, "full")
            value = int(trained[model_id].predict(pixels[i : i + 1] / 16)[0])
            expected.append((i, key, names[value], model_id))
        assert_that(
            result.inferences | beam.Map(lambda r: (r.id, r.key, r.inference, r.model_id)),
            equal_to(expected),
        )
        assert_that(result.failures, equal_to([]), label="NoFailures")


def test_unmapped_keys_fail_without_a_default(keyed_models, held_out):
    trained, paths, policy = keyed_models
    pixels, _ = held_out
    keys = ["north", "east", "nowhere", "north"]
    with beam.Pipeline() as p:
        result = p | beam.Create(rows_for(pixels, keys)) | Inference(
            [
                Model.sklearn(paths["even"], model_id="even", keys=["north"]),
                Model.sklearn(paths["sevens"], model_id="sevens", keys=["east"]),
            ],
            key_field="region",
            feature_fields="pixels",
            preprocess=[Step("scale", factor=1 / 16)],
            policy=policy,
        )
        assert_that(result.inferences | beam.Map(lambda r: r.key), equal_to(["north", "east", "north"]))
        assert_that(
            result.failures | beam.Map(lambda f: (f.stage, f.error_type, f.key, f.message)),
            equal_to([("routing", "UnmappedKey", "nowhere", "no model serves key 'nowhere' and no default model is configured; mapped keys: east, north")]),
            label="Failures",
        )


def test_a_memory_bound_smaller_than_the_number_of_models(keyed_models, held_out):
    """max_models_per_worker=1 with three models and six keys: correct, just more loads."""
    trained, paths, policy = keyed_models
    pixels, _ = held_out
    keys = ["a", "b", "c", "d", "e", "f"] * 10
    with beam.Pipeline() as p:
        result = p | beam.Create(rows_for(pixels, keys)) | Inference(
            [
                Model.sklearn(paths["even"], model_id="even", keys=["a", "b"]),
                Model.sklearn(paths["sevens"], model_id="sevens", keys=["c", "d"]),
                Model.sklearn(paths["full"], model_id="full", keys=["e", "f"]),
            ],
            key_field="region",
            feature_fields="pixels",
            preprocess=[Step("scale", factor=1 / 16)],
            passthrough_fields=["id"],
            max_models_per_worker=1,
            policy=policy,
        )
        model_of = {"a": "even", "b": "even", "c": "sevens", "d": "sevens", "e": "full", "f": "full"}
        expected = [(i, float(trained[model_of[k]].predict(pixels[i : i + 1] / 16)[0]), model_of[k]) for i, k in enumerate(keys)]
        assert_that(result.inferences | beam.Map(lambda r: (r.id, r.inference, r.model_id)), equal_to(expected))
