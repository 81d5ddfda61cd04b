"""Model files: opened once, confined to the roots, regular files only; watch patterns; echoes.

Refusals at expansion are asked of running services (the suite's default one, and one of this
module without --model-root); refusals at load time go through the real loader and real
DirectRunner pipelines. While each attack is in flight and after it, the service must answer its
health check: each check within HEALTH_SECS of wall time (generous, for a busy machine).
"""

from __future__ import annotations

import os
import pickle
import sys
import threading
import time
import uuid

import apache_beam as beam
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.testing.util import assert_that, equal_to
from sklearn.linear_model import LogisticRegression

from apache_beam.transforms.external import NamedTupleBasedPayloadBuilder

from attack_support import (
    START_TIMEOUT_SECS,
    Service,
    WritesMarker,
    expand,
    expansion_request,
    launch,
    native_request,
    stop,
)
from inferbridge import Inference, Model, healthcheck, models
from inferbridge.local_services import wait_until_serving
from inferbridge.policy import LoadPolicy
from inferbridge.spec import RUN_INFERENCE_URN

HEALTH_SECS = 5.0
# Classes a PyTorch model_class may name on the service of this module: an InferBridge-unrelated
# module that imports torch (so that torch.nn is reachable through its attributes), and the
# module that defines torch.nn.Linear.
WALK_MODULE = "apache_beam.ml.inference.pytorch_inference"
LINEAR_MODULE = "torch.nn.modules.linear"


@pytest.fixture(scope="module")
def anywhere_service(layout):
    """A service without --model-root: safe formats load from anywhere the process can read."""
    args = [f"--trusted-model-root={layout.trusted}", f"--allow-model-class={WALK_MODULE}", f"--allow-model-class={LINEAR_MODULE}"]
    process, port, log_path = launch("model_files_anywhere", layout.base / "logs", args)
    service = Service("model_files_anywhere", port, process, log_path)
    try:
        wait_until_serving(service.address, process, START_TIMEOUT_SECS)
        yield service
    finally:
        stop(process)


def healthy_throughout(service: Service, attack):
    """Runs ``attack()`` in a thread while checking the service's health; returns its result.

    Each check must answer SERVING within HEALTH_SECS, while the attack runs and once after it.
    """
    outcome: dict = {}
    done = threading.Event()

    def run():
        try:
            outcome["value"] = attack()
        except BaseException as e:  # noqa: BLE001 - re-raised below, in the test's thread
            outcome["error"] = e
        finally:
            done.set()

    thread = threading.Thread(target=run)
    thread.start()
    checks = 0
    while True:
        finished = done.is_set()
        start = time.monotonic()
        assert service.process.poll() is None, f"the service exited:\n{service.log()}"
        assert healthcheck.check(service.address, timeout_secs=HEALTH_SECS) == "SERVING"
        assert time.monotonic() - start < HEALTH_SECS
        checks += 1
        if finished:
            break
        done.wait(0.1)
    thread.join()
    assert checks >= 1
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def expansion_error(service: Service, model: Model, **options) -> str:
    return healthy_throughout(service, lambda: expand(service, native_request(model, **options)).error)


@pytest.fixture
def evil_pickle(layout, marker):
    """A pickle outside every root whose loading writes the marker."""
    path = layout.outside / f"evil-{uuid.uuid4().hex}.pkl"
    path.write_bytes(pickle.dumps(WritesMarker(marker)))
    return path


# --- only regular files -------------------------------------------------------------------------


@pytest.fixture(params=["device", "fifo", "directory"])
def not_a_file(request, tmp_path):
    """(path, what the refusal says it is) of things that are not regular files."""
    if request.param == "device":
        return "/dev/zero", "is a character device"  # read until memory runs out, were it read
    if request.param == "fifo":
        fifo = tmp_path / "model.skops"
        os.mkfifo(fifo)  # would block a reader until a writer comes, were it opened for reading
        return str(fifo), "is a FIFO"
    return str(tmp_path), "is a directory"


def test_only_regular_files_are_accepted_at_expansion(anywhere_service, not_a_file):
    path, kind = not_a_file
    error = expansion_error(anywhere_service, Model.sklearn(path, format="skops"))
    assert f"models[0].uri={path!r} {kind}; allowed: a regular file" in error, error


def test_only_regular_files_are_loaded(not_a_file):
    """Past expansion (a file replaced later), the loader refuses them too, without reading."""
    path, kind = not_a_file
    handler = models.handler_for(Model.sklearn(path, format="skops"), LoadPolicy())
    with pytest.raises(ValueError, match=f"{kind}; allowed: a regular file"):
        handler.load_model()


# --- the check/open race ------------------------------------------------------------------------


class Flipper:
    """Switches ``link`` between two targets, atomically (rename), until stopped."""

    def __init__(self, link, targets):
        self._link, self._targets = str(link), [str(t) for t in targets]
        self._stop = threading.Event()
        self.flips = 0
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        staging = f"{self._link}.next"
        while not self._stop.is_set():
            os.symlink(self._targets[self.flips % 2], staging)
            os.replace(staging, self._link)
            self.flips += 1

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def test_a_link_switched_between_check_and_load_never_loads_the_outside_file(layout, good_model, evil_pickle, marker):
    """The old loader checked the resolved path, then Beam opened the path again: a link switched
    in between loaded a pickle from outside the trusted roots. Now the file is opened once and
    checked by its descriptor: each load serves the good model or is refused."""
    link = layout.trusted / f"race-{uuid.uuid4().hex}.pkl"
    link.symlink_to(good_model)
    handler = models.handler_for(Model.sklearn(str(link)), LoadPolicy(trusted_roots=(str(layout.trusted),)))
    served = refused = 0
    deadline = time.monotonic() + 60
    with Flipper(link, [good_model, evil_pickle]):
        # Until both outcomes were seen many times (the switch did fall between check and load),
        # within a bounded count and time.
        while (served < 50 or refused < 50) and served + refused < 5000 and time.monotonic() < deadline:
            try:
                loaded = handler.load_model()
            except ValueError as e:
                assert "is loaded only from trusted roots" in str(e)
                assert str(evil_pickle) not in str(e)
                refused += 1
                continue
            assert isinstance(loaded, LogisticRegression)
            served += 1
    assert not marker.exists()
    assert served > 0 and refused > 0, (served, refused)


def test_a_link_switched_while_a_pipeline_runs_never_loads_the_outside_file(layout, good_model, evil_pickle, marker):
    """The same race through real DirectRunner pipelines: each is refused at construction naming
    the trusted roots, or serves the good model's predictions, or (the link switched when the
    worker loads the model) fails every row naming the trusted roots; the pickle outside is
    never loaded."""
    link = layout.trusted / f"race-{uuid.uuid4().hex}.pkl"
    link.symlink_to(good_model)
    rows = [beam.Row(id=i, pixels=[float(i % 2), float(i % 2)]) for i in range(4)]
    served = sorted(("served", i, float(i % 2)) for i in range(4))
    refused = sorted(("refused", str(i), True) for i in range(4))

    def served_or_refused(outcomes):
        assert sorted(outcomes) in (served, refused), outcomes

    outcomes = []
    with Flipper(link, [good_model, evil_pickle]):
        for _ in range(3):
            try:
                with beam.Pipeline() as p:
                    result = p | beam.Create(rows) | Inference(
                        Model.sklearn(str(link)), key_field="id", feature_fields="pixels",
                        policy=LoadPolicy(trusted_roots=(str(layout.trusted),)),
                    )
                    assert_that(
                        (
                            result.inferences | beam.Map(lambda r: ("served", r.key, r.inference)),
                            result.failures | beam.Map(lambda f: ("refused", f.key, "is loaded only from trusted roots" in f.message)),
                        )
                        | beam.Flatten(),
                        served_or_refused,
                    )
                outcomes.append("expanded")
            except Exception as e:  # noqa: BLE001 - a refusal at construction
                assert "is loaded only from trusted roots" in str(e), e
                outcomes.append("refused")
    assert not marker.exists()
    assert len(outcomes) == 3


# --- model_class ----------------------------------------------------------------------------------


def test_model_class_cannot_walk_from_an_allowed_module_to_another(anywhere_service, layout, tmp_path):
    """--allow-model-class=apache_beam.ml.inference.pytorch_inference, which imports torch: the
    name '<it>:torch.nn.Conv1d' passes a prefix check, but the class is defined in torch.nn.modules.conv."""
    weights = tmp_path / "weights.pt"
    weights.write_bytes(b"")
    walk = f"{WALK_MODULE}:torch.nn.Conv1d"
    error = expansion_error(anywhere_service, Model.pytorch(str(weights), model_class=walk))
    assert f"models[0].options.model_class={walk!r} is a class defined in module 'torch.nn.modules.conv'" in error, error
    assert "not under an allowed model class prefix" in error
    # Control: classes whose own module is allowed, named directly or through the allowed module.
    for allowed in (f"{LINEAR_MODULE}:Linear", f"{WALK_MODULE}:torch.nn.Linear"):
        model = Model.pytorch(str(weights), model_class=allowed, model_params={"in_features": 2, "out_features": 2})
        assert expansion_error(anywhere_service, model) == ""


# --- echoes ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["pickle", "skops"])
def test_errors_never_name_where_a_path_leads(default_service, fmt):
    """/proc/self/exe leads to the service's interpreter: the refusal names the configured value only."""
    error = expansion_error(default_service, Model.sklearn("/proc/self/exe", format=fmt))
    assert "models[0].uri='/proc/self/exe'" in error, error
    assert os.path.realpath(sys.executable) not in error and "resolved" not in error, error


def test_a_refusal_outside_the_roots_reads_the_same_whether_or_not_the_file_exists(default_service, layout, evil_pickle):
    missing = layout.outside / f"missing-{uuid.uuid4().hex}.pkl"
    links = {}
    for name, target in (("existing", evil_pickle), ("missing", missing)):
        links[name] = layout.trusted / f"{name}-{uuid.uuid4().hex}.pkl"
        links[name].symlink_to(target)
    errors = {name: expansion_error(default_service, Model.sklearn(str(link))) for name, link in links.items()}
    assert errors["existing"].replace(str(links["existing"]), "LINK") == errors["missing"].replace(str(links["missing"]), "LINK")
    assert "is loaded only from trusted roots" in errors["existing"]


# --- watch patterns -------------------------------------------------------------------------------


def _watch_cases(layout):
    """(watch pattern, expected error text) of patterns refused at expansion."""
    out_link = layout.trusted / f"out-{uuid.uuid4().hex}"
    out_link.symlink_to(layout.outside)
    outside = "is outside the roots its model may be loaded from"
    return {
        "outside_every_root": (f"{layout.outside}/*.pkl", outside),
        "dotdot_out": (f"{layout.trusted}/../outside/*.pkl", outside),
        "directory_link_out": (f"{out_link}/*.pkl", outside),
        "pickle_in_a_model_root_that_is_not_trusted": (f"{layout.models}/*.pkl", outside),
        "recursive": (f"{layout.trusted}/**/*.pkl", "contains '**': nothing is matched recursively"),
        "many_stars": (f"{layout.trusted}/" + "**a" * 300, "contains '**'"),
        "brackets": (f"{layout.trusted}/model-[0-9].pkl", "contains '[', ']'"),
        "wildcard_directory": (f"{layout.trusted}/*/model.pkl", "contains '*'"),
        "too_long": (f"{layout.trusted}/" + "a" * 2000 + "*.pkl", "characters; allowed: at most 1024"),
    }


@pytest.mark.parametrize(
    "case",
    ["outside_every_root", "dotdot_out", "directory_link_out", "pickle_in_a_model_root_that_is_not_trusted",
     "recursive", "many_stars", "brackets", "wildcard_directory", "too_long"],
)
def test_watch_patterns_are_confined_and_simple(default_service, layout, good_model, case):
    pattern, expected = _watch_cases(layout)[case]
    # The client's own checks would refuse these patterns: the request is crafted past them.
    config = Inference(Model.sklearn(good_model), key_field="id", feature_fields="pixels").spec.to_config()
    config.models[0] = config.models[0]._replace(watch_pattern=pattern)
    payload = NamedTupleBasedPayloadBuilder(config).build().SerializeToString()
    request = expansion_request(RUN_INFERENCE_URN, payload)
    error = healthy_throughout(default_service, lambda: expand(default_service, request).error)
    assert "models[0].watch_pattern=" in error and expected in error, error
    if len(pattern) > 1024:
        assert pattern not in error  # a long pattern is not echoed whole


def _watched_run(folder, marker):
    """A real pipeline watching ``folder/model-*.pkl`` (every check, one row per batch): its
    predictions, and its reload metrics."""
    rows = [beam.Row(id=i, pixels=[float(i % 2), float(i % 2)]) for i in range(6)]
    with beam.Pipeline() as p:
        result = p | beam.Create(rows) | Inference(
            Model.sklearn(str(folder / "model-1.pkl"), model_id="m", watch_pattern=str(folder / "model-*.pkl")),
            key_field="id", feature_fields="pixels", watch_interval_secs=0.01, min_batch_size=1, max_batch_size=1,
            policy=LoadPolicy(trusted_roots=(str(folder),)),
        )
        assert_that(result.inferences | beam.Map(lambda r: (r.key, r.inference)), equal_to([(i, float(i % 2)) for i in range(6)]))
    metrics = p.result.metrics()
    return {
        name: sum(c.committed for c in metrics.query(MetricsFilter().with_name(name))["counters"])
        for name in ("model_reload_failures", "model_watch_reloads")
    }


def test_a_watched_link_out_of_the_roots_is_skipped_like_a_missing_file(tmp_path, good_model, evil_pickle, marker, caplog):
    """A newer match that leads outside the trusted roots is neither loaded nor reported: the
    metrics and logs are the same whether its target exists or not. A newer file inside that
    fails to load is reported (the control: the metric counts what it should)."""
    counts = {}
    for case in ("existing", "missing", "broken_inside"):
        folder = tmp_path / case
        folder.mkdir()
        (folder / "model-1.pkl").write_bytes(open(good_model, "rb").read())
        newest = folder / "model-9.pkl"
        if case == "broken_inside":
            newest.write_bytes(b"not a pickle")
        else:
            newest.symlink_to(evil_pickle if case == "existing" else tmp_path / "absent.pkl")
        later = os.stat(folder / "model-1.pkl").st_mtime + 60
        os.utime(newest, (later, later), follow_symlinks=case != "missing")
        caplog.clear()
        counts[case] = _watched_run(folder, marker)
        counts[case]["logged"] = sum("model-9" in r.getMessage() for r in caplog.records)
    assert not marker.exists()
    assert counts["existing"] == counts["missing"] == {"model_reload_failures": 0, "model_watch_reloads": 0, "logged": 0}
    assert counts["broken_inside"]["model_reload_failures"] >= 1 and counts["broken_inside"]["logged"] >= 1
