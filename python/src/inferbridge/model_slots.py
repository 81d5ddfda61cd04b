"""Model slots: which model file each configured model serves, and the models a worker holds.

A ``ModelSlot`` is one configured model in one worker: its framework handler, the file it
serves, refresh (an update, a newer match of its watch pattern) and the fallback to the last
file that loaded when an update is broken. ``ResidentModels`` holds the loaded models of a
worker, at most ``max_models_per_worker``. ``model_metadata`` turns model-update Rows into the
side input that refreshes every slot.
"""

from __future__ import annotations

import collections
import json
import logging
import threading
import time
import uuid
from typing import Any, Iterable, Mapping, Optional

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import ModelMetadata
from apache_beam.transforms import trigger, window

from inferbridge import models
from inferbridge.policy import LoadPolicy, OutsideRoots
from inferbridge.spec import InferenceSpec, Model

_LOGGER = logging.getLogger("inferbridge.model_slots")

# The last file of each model that loaded in this process. Beam shares loaded models between
# copies of a handler, so the copy that meets a broken update may never have loaded the model
# now serving; this is what it falls back to.
_last_good_uris: dict[str, str] = {}
_last_good_lock = threading.Lock()
# Models loaded from a watch pattern in this process: slot token -> (uri, model).
_watched_models: dict[str, tuple[str, Any]] = {}
# Uris of a watch pattern that failed to load: slot token -> uri (not retried until a newer file).
_watch_failures: dict[str, str] = {}
_watch_lock = threading.Lock()


class ModelSlot:
    """One configured model: loads its file, follows updates and its watch pattern, and keeps
    the last model that loaded when a refresh fails to load."""

    def __init__(self, spec: InferenceSpec, model: Model, policy: LoadPolicy, where: str) -> None:
        self._inner = models.handler_for(model, policy, where)
        self.model_id = model.id
        self._uri = model.uri
        self._configured_uri = model.uri
        self._watch_pattern = model.watch_pattern
        self._watch_interval = spec.watch_interval_secs
        self._next_watch = 0.0
        # Names this model of this pipeline: every copy of the slot carries the same token.
        self._token = uuid.uuid4().hex
        self._namespace = spec.metrics_namespace

    def load_model(self) -> Any:
        try:
            loaded = self._inner.load_model()
        except Exception as e:
            with _last_good_lock:
                fallback = _last_good_uris.get(self._token, self._configured_uri)
            if fallback == self._uri:
                raise
            _LOGGER.error(
                "Model %r: loading the update %s failed (%s: %s); keeping %s",
                self.model_id, self._uri, type(e).__name__, e, fallback,
            )
            Metrics.counter(self._namespace, "model_reload_failures").inc()
            self._uri = fallback
            self._inner.update_model_path(fallback)
            return self._inner.load_model()
        with _last_good_lock:
            _last_good_uris[self._token] = self._uri
        return loaded

    def update_model_path(self, model_path: Optional[str] = None) -> None:
        if model_path:
            self._uri = model_path
            self._inner.update_model_path(model_path)
            with _watch_lock:  # an update replaces a model loaded from the watch pattern
                _watched_models.pop(self._token, None)

    @property
    def uri(self) -> str:
        """The file this slot serves now."""
        return self._uri

    def declared_example_shape(self) -> Optional[tuple[int, ...]]:
        return self._inner.declared_example_shape()

    def predict_matrix(self, features: Any, model: Any, inference_args: Optional[dict]) -> Any:
        return self._inner.predict_matrix(features, model, inference_args)

    def current(self, model: Any) -> Any:
        """``model``, or the newest file of the watch pattern where that is another file.

        Each worker process checks the pattern itself, every ``watch_interval_secs``, and loads a
        newer file once: no side input is involved, so this works the same on every runner.
        """
        if not self._watch_pattern:
            return model
        now = time.monotonic()
        if now >= self._next_watch:  # between checks, a batch takes no lock
            with _watch_lock:
                self._next_watch = now + self._watch_interval
                self._load_newest_watched()
        watched = _watched_models.get(self._token)
        return model if watched is None else watched[1]

    def _load_newest_watched(self) -> None:
        try:
            newest = self._inner.newest_watched()
        except Exception as e:  # noqa: BLE001 - an unreadable pattern keeps the current model
            _LOGGER.warning("Model %r: watch pattern %r could not be read: %s", self.model_id, self._watch_pattern, e)
            return
        current = _watched_models.get(self._token, (self._uri, None))[0]
        if newest is None or newest in (current, _watch_failures.get(self._token)):
            return
        previous = self._inner.uri
        try:
            self._inner.update_model_path(newest)
            _watched_models[self._token] = (newest, self._inner.load_model())
        except OutsideRoots:
            # Switched to lead outside the roots since it was listed: as if it did not exist, so
            # neither a log line nor a metric tells what is there.
            self._inner.update_model_path(previous)
            return
        except Exception as e:  # noqa: BLE001 - a bad file keeps the current model
            _watch_failures[self._token] = newest
            _LOGGER.error("Model %r: loading %s failed (%s: %s); keeping %s", self.model_id, newest, type(e).__name__, e, current)
            Metrics.counter(self._namespace, "model_reload_failures").inc()
            self._inner.update_model_path(previous)
            return
        _LOGGER.info("Model %r: now serving %s (newest match of %s)", self.model_id, newest, self._watch_pattern)
        Metrics.counter(self._namespace, "model_watch_reloads").inc()


class ResidentModels:
    """The models loaded in one worker process: at most ``limit``, least recently used leave first.

    Loading is InferBridge's own: a model is an object of this process, dropped (and so freed,
    with whatever it made) when it is evicted or when a refresh replaces this set. Beam's model
    manager would instead start a server process per load, listening on a socket that unpickles.
    """

    def __init__(self, slots: Mapping[str, ModelSlot], limit: Optional[int], namespace: str) -> None:
        self._slots = slots
        self._limit = limit
        self._loaded: collections.OrderedDict[str, Any] = collections.OrderedDict()
        self._lock = threading.Lock()
        self._namespace = namespace
        self._loads = Metrics.counter(namespace, "model_loads")

    def report_zero_counters(self) -> None:
        """Reports the load and refresh counters (as 0 until they count)."""
        for name in ("model_loads", "model_reload_failures", "model_watch_reloads"):
            Metrics.counter(self._namespace, name).inc(0)

    def resident_first(self, model_ids: Iterable[str]) -> list[str]:
        """Serving loaded models first spares reloads when a batch needs more than the limit."""
        return sorted(model_ids, key=lambda model_id: model_id not in self._loaded)

    def get(self, model_id: str) -> Any:
        with self._lock:
            if model_id in self._loaded:
                self._loaded.move_to_end(model_id)
                return self._loaded[model_id]
            if self._limit and len(self._loaded) >= self._limit:
                self._loaded.popitem(last=False)
            model = self._slots[model_id].load_model()
            self._loads.inc()
            self._loaded[model_id] = model
            return model


# --- Model updates: the side input that refreshes every slot ------------------------------------


class _LatestModelPaths(beam.DoFn):
    """Keeps the newest uri per model_id (state) and emits, on a change, the side input of the
    handler that serves every model: the JSON object {model_id: uri} of them all."""

    LATEST = beam.transforms.userstate.ReadModifyWriteStateSpec("latest", beam.coders.PickleCoder())

    def __init__(self, spec: InferenceSpec) -> None:
        self._models = spec.models

    def process(self, keyed: tuple, latest=beam.DoFn.StateParam(LATEST)) -> Iterable[Any]:
        _, (model_id, uri, ts) = keyed
        paths = dict(latest.read() or {})
        if model_id in paths and paths[model_id][0] > ts:
            return  # an older update arriving late
        paths[model_id] = (ts, uri)
        latest.write(paths)
        current = {m.id: paths.get(m.id, (0, m.uri))[1] for m in self._models}
        yield ModelMetadata(model_id=json.dumps(current, sort_keys=True), model_name="models")


class _ToModelUpdate(beam.DoFn):
    """A model-update Row (model_id, uri) -> (model_id, uri, event time); unknown ids are logged."""

    def __init__(self, spec: InferenceSpec) -> None:
        self._ids = {m.id for m in spec.models}
        self._namespace = spec.metrics_namespace

    def setup(self) -> None:
        self._rejected = Metrics.counter(self._namespace, "model_updates_rejected")

    def start_bundle(self) -> None:
        self._rejected.inc(0)  # reported as 0 until it counts

    def process(self, update: Any, ts=beam.DoFn.TimestampParam) -> Iterable[tuple]:
        model_id, uri = getattr(update, "model_id", None), getattr(update, "uri", None)
        if model_id not in self._ids or not isinstance(uri, str) or not uri:
            self._rejected.inc()
            _LOGGER.error(
                "Model update %r rejected: it needs a model_id among %s and a non-empty uri",
                update, sorted(self._ids),
            )
            return
        yield model_id, uri, float(ts)


def model_metadata(spec: InferenceSpec, updates: Optional[beam.PCollection]) -> Optional[beam.PCollection]:
    """The RunInference side input that swaps models, from model-update Rows: each update is one
    ModelMetadata whose model_id is the JSON object {model_id: uri} of all models. (Watch
    patterns are checked by the slots themselves, without a side input.)
    """
    if updates is None:
        return None
    # Like Beam's WatchFilePattern: the latest value, re-emitted into a global window that fires
    # on every element, so that each update replaces the side input.
    return (
        updates
        | "ToModelUpdate" >> beam.ParDo(_ToModelUpdate(spec))
        | "GlobalWindow" >> beam.WindowInto(window.GlobalWindows())
        | "OneKey" >> beam.Map(lambda update: ("models", update))
        | "LatestModelPaths" >> beam.ParDo(_LatestModelPaths(spec))
        | "EveryUpdate" >> beam.WindowInto(
            window.GlobalWindows(),
            trigger=trigger.Repeatedly(trigger.AfterCount(1)),
            accumulation_mode=trigger.AccumulationMode.DISCARDING,
        )
    )


def update_slots(slots: Mapping[str, ModelSlot], model_path: Optional[str]) -> None:
    """Applies one side-input update: the JSON object {model_id: uri} of every model."""
    if model_path:
        for model_id, uri in json.loads(model_path).items():
            slots[model_id].update_model_path(uri)
