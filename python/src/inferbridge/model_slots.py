"""Model slots: which model file each configured model serves, and the models a worker holds.

A ``ModelSlot`` is one configured model in one worker: its framework handler, the file it
serves, refresh (an update, a newer match of its watch pattern) and the fallback to the last
file that loaded when an update is broken. ``ResidentModels`` holds the loaded models of a
worker, at most ``max_models_per_worker``. ``model_metadata`` turns model updates (Rows, Beam's
``ModelMetadata``, ``(model_id, ModelMetadata or uri)`` pairs) into the side input that refreshes
every slot.
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
from apache_beam.transforms import trigger, window

from inferbridge import models
from inferbridge.beam_ml import ModelMetadata
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


# How long a model whose file failed to load fails its rows before the file is read again.
RETRY_FAILED_LOAD_SECS = 60.0


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
        # Loads that failed: model id -> (its file, when, the error), raised again until the
        # file changes or RETRY_FAILED_LOAD_SECS pass, so that a broken file is not read per batch.
        self._failed: dict[str, tuple[str, float, BaseException]] = {}
        self._lock = threading.Lock()
        self._namespace = namespace
        self._loads = Metrics.counter(namespace, "model_loads")
        self._load_failures = Metrics.counter(namespace, "model_load_failures")

    def report_zero_counters(self) -> None:
        """Reports the load and refresh counters (as 0 until they count)."""
        for name in ("model_loads", "model_load_failures", "model_reload_failures", "model_watch_reloads"):
            Metrics.counter(self._namespace, name).inc(0)

    def resident_first(self, model_ids: Iterable[str]) -> list[str]:
        """Serving loaded models first spares reloads when a batch needs more than the limit."""
        return sorted(model_ids, key=lambda model_id: model_id not in self._loaded)

    def get(self, model_id: str) -> Any:
        with self._lock:
            if model_id in self._loaded:
                self._loaded.move_to_end(model_id)
                return self._loaded[model_id]
            slot = self._slots[model_id]
            failed = self._failed.get(model_id)
            if failed and failed[0] == slot.uri and time.monotonic() - failed[1] < RETRY_FAILED_LOAD_SECS:
                raise failed[2]
            if self._limit and len(self._loaded) >= self._limit:
                self._loaded.popitem(last=False)
            try:
                model = slot.load_model()
            except Exception as e:
                _LOGGER.error("Model %r: %s; its rows go to the failures output", model_id, e)
                self._load_failures.inc()
                self._failed[model_id] = (slot.uri, time.monotonic(), e)
                raise
            self._failed.pop(model_id, None)
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
            # An older update arriving late. (A bare ``return``, with no comment on its line:
            # Beam's ParDo reads this method's source and warns on a ``return`` it takes for a
            # value in a generator.)
            return
        paths[model_id] = (ts, uri)
        latest.write(paths)
        current = {m.id: paths.get(m.id, (0, m.uri))[1] for m in self._models}
        yield ModelMetadata(model_id=json.dumps(current, sort_keys=True), model_name="models")


class _ToModelUpdate(beam.DoFn):
    """One model update -> (model_id, uri, event time); the updates it cannot apply are counted
    and logged. The forms (see the README):

    - a Row (or any object) with ``model_id`` and ``uri``;
    - Beam's ``ModelMetadata`` (what ``WatchFilePattern`` emits): its ``model_id`` is the new
      file; it replaces the composite's only model, or, among several, the model whose id is its
      ``model_name`` (else it names no model and is rejected). An empty ``model_id`` is
      ``WatchFilePattern``'s "no newer file" and is skipped, as Beam's RunInference skips it;
    - a 2-tuple ``(model_id, ModelMetadata)`` or ``(model_id, uri)``.

    Only the model id and the file are read here: the file is loaded, and checked against the
    load policy and the model's sha256 pin, by the slot that serves it, as every update is.
    """

    def __init__(self, spec: InferenceSpec) -> None:
        self._ids = {m.id for m in spec.models}
        self._only = spec.models[0].id if len(spec.models) == 1 else None
        self._namespace = spec.metrics_namespace
        # Names this composite's updates: every copy of the DoFn logs an ambiguous update once
        # per worker process.
        self._token = uuid.uuid4().hex

    def setup(self) -> None:
        self._rejected = Metrics.counter(self._namespace, "model_updates_rejected")

    def start_bundle(self) -> None:
        self._rejected.inc(0)  # reported as 0 until it counts

    def process(self, update: Any, ts=beam.DoFn.TimestampParam) -> Iterable[tuple]:
        model_id, uri, problem = self._read(update)
        if problem is None and uri is None:
            return
        if problem is None:
            yield model_id, uri, float(ts)
            return
        self._rejected.inc()
        if problem is _AMBIGUOUS:
            with _ambiguous_lock:
                if self._token in _ambiguous_logged:
                    return
                _ambiguous_logged.add(self._token)
            _LOGGER.error(
                "Model update %r rejected: a bare ModelMetadata names no model of a composite with "
                "several models %s (its model_name is none of their ids). Key it: "
                "(model_id, ModelMetadata), e.g. WatchFilePattern(...) | beam.Map(lambda m: (%r, m)), "
                "or set its model_name to a model_id. Further such updates are counted in "
                "model_updates_rejected, not logged again.",
                update, sorted(self._ids), sorted(self._ids)[0],
            )
            return
        _LOGGER.error("Model update %r rejected: %s", update, problem)

    def _read(self, update: Any) -> tuple[Any, Optional[str], Any]:
        """(model_id, uri, None) for an update to apply; (None, None, None) for one to skip;
        (None, None, problem) for one to reject."""
        known = f"a model_id among {sorted(self._ids)}"
        if isinstance(update, ModelMetadata):  # before the 2-tuples: ModelMetadata is a NamedTuple
            model_id = self._only if self._only is not None else update.model_name
            if not update.model_id:
                return None, None, None
            if model_id not in self._ids:
                return None, None, _AMBIGUOUS
            return self._checked(model_id, update.model_id, "ModelMetadata.model_id")
        # A plain pair; a Row with fields (a NamedTuple, as cross-language Rows decode) is read
        # by name below, whatever the order of its fields.
        if isinstance(update, tuple) and not hasattr(update, "_fields") and len(update) == 2:
            model_id, value = update
            if not isinstance(model_id, str) or model_id not in self._ids:
                return None, None, f"a keyed update needs {known} as its first item"
            if isinstance(value, ModelMetadata):
                if not value.model_id:
                    return None, None, None
                return self._checked(model_id, value.model_id, "ModelMetadata.model_id")
            return self._checked(model_id, value, "its second item (a ModelMetadata or a uri)")
        model_id, uri = getattr(update, "model_id", None), getattr(update, "uri", None)
        if model_id not in self._ids:
            return None, None, f"it needs {known} and a non-empty uri (or a ModelMetadata, or a (model_id, uri) pair)"
        return self._checked(model_id, uri, "uri")

    @staticmethod
    def _checked(model_id: str, uri: Any, what: str) -> tuple[Any, Optional[str], Any]:
        if not isinstance(uri, str) or not uri:
            return None, None, f"{what} must be a non-empty string (the new model file)"
        return model_id, uri, None


# A bare ModelMetadata that names no model of a composite with several: logged once per worker
# process and composite (the tokens of the composites that logged it).
_AMBIGUOUS = object()
_ambiguous_logged: set[str] = set()
_ambiguous_lock = threading.Lock()


def model_metadata(spec: InferenceSpec, updates: Optional[beam.PCollection]) -> Optional[beam.PCollection]:
    """The RunInference side input that swaps models, from model updates: each update is one
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
