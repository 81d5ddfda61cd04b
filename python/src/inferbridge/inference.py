"""The ``Inference`` composite: input Rows -> preprocess -> Beam RunInference -> postprocess.

Every input row leaves as exactly one output: an inference Row, or a failure Row naming the
stage that failed (input, routing, preprocess, inference, postprocess, output) and why.
"""

from __future__ import annotations

import collections
import json
import logging
import threading
import time
import typing
import uuid
from typing import Any, Callable, Iterable, Mapping, NamedTuple, Optional, Sequence

import apache_beam as beam
import numpy as np
from apache_beam.coders import RowCoder
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import (
    ModelHandler,
    ModelMetadata,
    PredictionResult,
    RunInference,
)
from apache_beam.portability.api import external_transforms_pb2
from apache_beam.transforms import trigger, window
from apache_beam.transforms.external import NamedTupleBasedPayloadBuilder
from apache_beam.typehints.row_type import RowTypeConstraint

from inferbridge import model_files, models, steps
from inferbridge.policy import LoadPolicy, OutsideRoots
from inferbridge.spec import (
    RUN_INFERENCE_URN,
    InferenceSpec,
    Model,
    StepLike,
    input_fields,
    require_input_fields,
)

_LOGGER = logging.getLogger("inferbridge.inference")

# Input tags when the composite gets model updates as a second input (cross-language).
ROWS_TAG = "rows"
MODEL_UPDATES_TAG = "model_updates"
FAILURES_TAG = "failures"

# Per kind of inference value: the Beam type of the ``inference`` field, and the conversion to it.
_INFERENCE_FIELDS: dict[str, tuple[Any, Callable[[Any], Any]]] = {
    steps.VECTOR: (typing.Sequence[float], lambda v: [float(x) for x in np.ravel(v)]),
    steps.NUMBER: (float, float),
    steps.INTEGER: (int, int),
    steps.LABEL: (str, lambda v: v if isinstance(v, str) else str(v)),
    steps.MAP: (typing.Mapping[str, float], lambda v: {str(k): float(x) for k, x in dict(v).items()}),
    steps.ANY: (typing.Any, lambda v: v),
}
_KEY_TYPES = (str, int, np.int64, np.int32, np.int16, np.int8)
_NON_NUMERIC_TYPES = (str, bytes, bool)

FAILURE_ROW = RowTypeConstraint.from_fields(
    [
        ("stage", str),
        ("step", typing.Optional[str]),
        ("error_type", str),
        ("message", str),
        ("element", str),
        ("key", typing.Optional[str]),
        ("model_id", typing.Optional[str]),
    ]
)

_load_policy: Optional[LoadPolicy] = None


def configure_load_policy(policy: Optional[LoadPolicy]) -> None:
    """Sets the policy for composites built from a wire spec (the expansion service's)."""
    global _load_policy
    _load_policy = policy


class InferenceResult(NamedTuple):
    """The composite's outputs: one inference Row or one failure Row per input row."""

    inferences: beam.PCollection
    failures: beam.PCollection


def output_row_type(
    spec: InferenceSpec, key_type: Any = str, passthrough: Sequence[tuple[str, Any]] = ()
) -> RowTypeConstraint:
    """The schema of the composite's inference Rows for ``spec``."""
    return RowTypeConstraint.from_fields(
        [
            ("key", key_type),
            ("example", typing.Sequence[float]),
            ("inference", _INFERENCE_FIELDS[spec.inference_kind][0]),
            ("model_id", str),
            *passthrough,
        ]
    )


@beam.PTransform.register_urn(RUN_INFERENCE_URN, external_transforms_pb2.ExternalConfigurationPayload)
class Inference(beam.PTransform):
    """Runs one or many keyed models on schema'd Rows; see the README for every option.

    ::

        result = rows | Inference(
            Model.sklearn("/models/digits.pkl", output="predict_proba"),
            key_field="id", feature_fields="pixels",
            preprocess=[Step("scale", factor=1 / 16)],
            postprocess=[Step("argmax")])
        result.inferences  # Row(key, example, inference, model_id, *passthrough_fields)
        result.failures    # Row(stage, step, error_type, message, element, key, model_id)

    Steps run in the order given (preprocess first to last before the model, postprocess first
    to last after it). ``model_updates`` is a PCollection of Rows ``(model_id, uri)``: each
    replaces the named model, in streaming pipelines, without a restart. ``policy`` decides
    which model files may be loaded (default: ``LoadPolicy.from_env()``). ``options`` are the
    other ``InferenceSpec`` fields: batching, ``variable_length``, ``max_models_per_worker``,
    resource hints, ``metrics_namespace``.
    """

    urn = RUN_INFERENCE_URN

    def __init__(
        self,
        models: Model | Sequence[Model],
        *,
        key_field: str,
        feature_fields: str | Sequence[str],
        preprocess: Sequence[StepLike] = (),
        postprocess: Sequence[StepLike] = (),
        passthrough_fields: Sequence[str] = (),
        model_updates: Optional[beam.PCollection] = None,
        policy: Optional[LoadPolicy] = None,
        **options: Any,
    ) -> None:
        super().__init__()
        self._spec = InferenceSpec(
            key_field=key_field,
            feature_fields=feature_fields,
            models=models,
            preprocess=tuple(preprocess),
            postprocess=tuple(postprocess),
            passthrough_fields=tuple(passthrough_fields),
            **options,
        )
        self._model_updates = model_updates
        self._policy = policy

    @classmethod
    def from_spec(cls, spec: InferenceSpec) -> "Inference":
        """The composite for a spec received on the wire (no Python-only options)."""
        transform = cls.__new__(cls)
        beam.PTransform.__init__(transform)
        transform._spec = spec
        transform._model_updates = None
        transform._policy = None
        return transform

    @property
    def spec(self) -> InferenceSpec:
        return self._spec

    def expand(self, inputs: Any) -> InferenceResult:
        spec = self._spec
        rows, updates = self._split_inputs(inputs)
        key_type, passthrough = _check_input_schema(spec, rows.element_type)
        policy = self._policy or _load_policy or LoadPolicy.from_env()
        # Building the handlers checks each model against the policy, before its file is looked at.
        handler = _KeyedModels(spec, policy)
        for i, model in enumerate(spec.models):
            _check_model_exists(f"models[{i}]", model)

        prepared = rows | "Prepare" >> beam.ParDo(
            _Prepare(spec, convert_key=key_type is str)
        ).with_outputs(FAILURES_TAG, main="examples")
        run = run_inference(spec, handler, _model_metadata(spec, updates))
        finished = (
            prepared.examples
            | "RunInference" >> run
            | "Finish" >> beam.ParDo(_Finish(spec)).with_outputs(FAILURES_TAG, main="inferences")
        )
        inferences = finished.inferences | "TypeInferences" >> beam.Map(lambda r: r).with_output_types(
            output_row_type(spec, key_type, passthrough)
        )
        failures = (
            (prepared[FAILURES_TAG], finished[FAILURES_TAG])
            | "Failures" >> beam.Flatten()
        ) | "TypeFailures" >> beam.Map(lambda r: r).with_output_types(FAILURE_ROW)
        return InferenceResult(inferences, failures)

    def _split_inputs(self, inputs: Any) -> tuple[beam.PCollection, Optional[beam.PCollection]]:
        if isinstance(inputs, dict):
            if set(inputs) != {ROWS_TAG, MODEL_UPDATES_TAG}:
                raise ValueError(
                    f"inputs are tagged {sorted(inputs)}; expected one PCollection of rows, or "
                    f"the tags {ROWS_TAG!r} and {MODEL_UPDATES_TAG!r}"
                )
            if self._model_updates is not None:
                raise ValueError("model updates were given both as an input and as model_updates=")
            return inputs[ROWS_TAG], inputs[MODEL_UPDATES_TAG]
        return inputs, self._model_updates

    def to_runner_api_parameter(self, context: Any) -> tuple[str, Any]:
        if self._spec.has_callables or self._model_updates is not None or self._policy is not None:
            # Python-only state: Beam's own (pickled) form, understood by Python runners.
            return super().to_runner_api_parameter(context)
        return self.urn, NamedTupleBasedPayloadBuilder(self._spec.to_config()).build()

    @classmethod
    def from_payload(cls, payload: external_transforms_pb2.ExternalConfigurationPayload) -> "Inference":
        """The composite for a configuration payload (decoded with its own schema)."""
        return cls.from_spec(InferenceSpec.from_config(RowCoder(payload.schema).decode(payload.payload)))

    @staticmethod
    def from_runner_api_parameter(unused_ptransform: Any, payload: Any, unused_context: Any) -> "Inference":
        return Inference.from_payload(payload)


def run_inference(spec: InferenceSpec, handler: ModelHandler, metadata: Optional[beam.PCollection]) -> RunInference:
    """Beam's RunInference for ``handler`` with the spec's metrics namespace and resource hints."""
    run = RunInference(handler, metrics_namespace=spec.metrics_namespace, model_metadata_pcoll=metadata)
    hints = {k: v for k, v in (("min_ram", spec.min_ram), ("accelerator", spec.accelerator)) if v}
    return run.with_resource_hints(**hints) if hints else run


# --- Stage 1: input rows -> (model_id, example) -------------------------------------------------


class _Example:
    """An element on its way through the model: its key, passthrough values, features, source."""

    __slots__ = ("key", "key_text", "passthrough", "features", "row", "timestamp")

    def __init__(self, key, key_text: str, passthrough: dict, features: np.ndarray, row, timestamp):
        self.key, self.key_text, self.passthrough, self.features, self.row, self.timestamp = (
            key, key_text, passthrough, features, row, timestamp
        )


class _Failed(NamedTuple):
    """Why an example got no inference; becomes a failure Row."""

    stage: str
    step: Optional[str]
    error: BaseException


class _Prepare(beam.DoFn):
    """Extracts key and features, routes the row to a model, and runs per-element preprocessing."""

    def __init__(self, spec: InferenceSpec, convert_key: bool) -> None:
        self._spec = spec
        self._convert_key = convert_key
        element_steps, _ = _split_preprocess(spec)
        self._step_specs = element_steps

    def setup(self) -> None:
        self._steps = _build(steps.PREPROCESS, self._step_specs)
        ns = self._spec.metrics_namespace
        self._rows_in = Metrics.counter(ns, "rows_in")
        self._failed = {s: Metrics.counter(ns, f"{s}_failures") for s in ("input", "routing", "preprocess")}

    def process(self, row: Any, timestamp=beam.DoFn.TimestampParam) -> Iterable[Any]:
        self._rows_in.inc()
        spec = self._spec
        key = None
        try:
            key = getattr(row, spec.key_field)
            if key is None:
                raise ValueError(f"key_field {spec.key_field!r} is null")
            key_text = str(key)
            features = _features(row, spec.feature_fields)
            passthrough = {name: getattr(row, name) for name in spec.passthrough_fields}
        except Exception as e:  # noqa: BLE001 - any bad row becomes a failure Row
            yield self._failure("input", None, e, row, key)
            return
        model = spec.model_for_key(key_text)
        if model is None:
            mapped = sorted(k for m in spec.models for k in m.keys)
            error = LookupError(
                f"no model serves key {key_text!r} and no default model is configured; mapped "
                f"keys: {', '.join(mapped[:20])}{' ...' if len(mapped) > 20 else ''}"
            )
            yield self._failure("routing", None, error, row, key_text, error_type="UnmappedKey")
            return
        for name, step in self._steps:
            try:
                features = _numeric_array(step(features))
            except Exception as e:  # noqa: BLE001
                yield self._failure("preprocess", name, e, row, key_text, model.id)
                return
        out_key = key_text if self._convert_key else key
        yield model.id, _Example(out_key, key_text, passthrough, features, row, timestamp)

    def _failure(self, stage, step, error, row, key, model_id=None, error_type=None):
        self._failed[stage].inc()
        return beam.pvalue.TaggedOutput(
            FAILURES_TAG, _failure_row(stage, step, error, row, key, model_id, error_type)
        )


def _features(row: Any, fields: Sequence[str]) -> np.ndarray:
    """The features of ``row``: one array field as is, or several fields concatenated."""
    values = []
    for name in fields:
        value = getattr(row, name)
        if value is None:
            raise ValueError(f"feature field {name!r} is null")
        try:
            values.append(np.asarray(value, dtype=np.float64))
        except (TypeError, ValueError):
            raise ValueError(f"feature field {name!r} is not numeric: {value!r}") from None
    if len(values) == 1:
        return values[0] if values[0].ndim else values[0].reshape(1)
    return np.concatenate([np.ravel(v) for v in values])


def _numeric_array(value: Any) -> np.ndarray:
    """A step's result as an array of numbers, or an error saying what it returned instead."""
    array = np.asarray(value)
    if array.dtype.kind not in "biuf":
        raise ValueError(f"the step returned {type(value).__name__} values of kind {array.dtype}, not numbers")
    return array


# --- Stage 2: RunInference, with failure isolation ----------------------------------------------


def _split_preprocess(spec: InferenceSpec) -> tuple[list, list]:
    """Preprocess steps run per element up to the last one that cannot run on a whole batch.

    With padding, every step runs per element, so that padding is the last thing before the
    model and the model sees ``pad_value`` itself.
    """
    resolved = [(s.name, *s.resolve(steps.PREPROCESS)) for s in spec.preprocess]
    if spec.variable_length == "pad":
        return resolved, []
    cut = max((i + 1 for i, (_, d, _) in enumerate(resolved) if not d.batched), default=0)
    return resolved[:cut], resolved[cut:]


def _split_postprocess(spec: InferenceSpec) -> tuple[list, list]:
    """Postprocess steps run on the whole batch while they can, then per element."""
    resolved = [(s.name, *s.resolve(steps.POSTPROCESS)) for s in spec.postprocess]
    cut = next((i for i, (_, d, _) in enumerate(resolved) if not d.batched), len(resolved))
    return resolved[:cut], resolved[cut:]


def _build(stage: str, resolved: Sequence[tuple[str, Any, dict]], batch: bool = False) -> list[tuple[str, Callable]]:
    """Step functions; with ``batch``, the forms that take a whole batch (first axis)."""
    return [
        (name, definition.build_for_batch(params) if batch else definition.build(params))
        for name, definition, params in resolved
    ]


# The last file of each model that loaded in this process. Beam shares loaded models between
# copies of a handler, so the copy that meets a broken update may never have loaded the model
# now serving; this is what it falls back to.
_last_good_uris: dict[str, str] = {}
_last_good_lock = threading.Lock()
# Models loaded from a watch pattern in this process: handler token -> (uri, model).
_watched_models: dict[str, tuple[str, Any]] = {}
# Uris of a watch pattern that failed to load: handler token -> uri (not retried until a newer file).
_watch_failures: dict[str, str] = {}
_watch_lock = threading.Lock()


class _IsolatingHandler(ModelHandler):
    """Wraps a framework handler so that failures are per example, never per batch.

    A batch is split by shape (or padded), run through the batch-capable steps and the model;
    when any of that raises, the batch is halved and each half retried, so only the examples
    that fail on their own are reported as failed. A model refresh that fails to load keeps
    the last model that loaded.
    """

    def __init__(self, spec: InferenceSpec, model: Model, policy: LoadPolicy, where: str) -> None:
        super().__init__()
        self._inner = models.handler_for(model, policy, where)
        self._model_id = model.id
        self._uri = model.uri
        self._configured_uri = model.uri
        self._watch_pattern = model.watch_pattern
        self._watch_interval = spec.watch_interval_secs
        self._next_watch = 0.0
        # Names this model of this pipeline: every copy of the handler carries the same token.
        self._token = uuid.uuid4().hex
        self._variable_length = spec.variable_length
        self._pad_value = spec.pad_value
        self._namespace = spec.metrics_namespace
        _, self._pre_specs = _split_preprocess(spec)
        self._post_specs, _ = _split_postprocess(spec)
        self._batching = {
            k: v
            for k, v in (
                ("min_batch_size", spec.min_batch_size),
                ("max_batch_size", spec.max_batch_size),
                ("max_batch_duration_secs", spec.max_batch_duration_secs),
            )
            if v is not None
        }
        self._built = False

    def _setup(self) -> None:
        if self._built:
            return
        self._pre, self._post = self._build_steps()
        prefix = f"model_{self._model_id}_"
        self._examples = Metrics.counter(self._namespace, prefix + "examples")
        self._failed = Metrics.counter(self._namespace, prefix + "failed_examples")
        self._splits = Metrics.counter(self._namespace, prefix + "batch_splits")
        self._batch_size = Metrics.distribution(self._namespace, prefix + "batch_size_examples")
        self._latency = Metrics.distribution(self._namespace, prefix + "batch_latency_micros")
        self._built = True

    def _build_steps(self) -> tuple[list, list]:
        return (
            _build(steps.PREPROCESS, self._pre_specs, batch=True),
            _build(steps.POSTPROCESS, self._post_specs, batch=True),
        )

    # Loading and refresh.
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
                self._model_id, self._uri, type(e).__name__, e, fallback,
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

    def _current_model(self, model: Any) -> Any:
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
            _LOGGER.warning("Model %r: watch pattern %r could not be read: %s", self._model_id, self._watch_pattern, e)
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
            _LOGGER.error("Model %r: loading %s failed (%s: %s); keeping %s", self._model_id, newest, type(e).__name__, e, current)
            Metrics.counter(self._namespace, "model_reload_failures").inc()
            self._inner.update_model_path(previous)
            return
        _LOGGER.info("Model %r: now serving %s (newest match of %s)", self._model_id, newest, self._watch_pattern)
        Metrics.counter(self._namespace, "model_watch_reloads").inc()

    # Inference.
    def run_inference(
        self, batch: Sequence[_Example], model: Any, inference_args: Optional[dict] = None
    ) -> Iterable[PredictionResult]:
        self._setup()
        model = self._current_model(model)
        start = time.perf_counter()
        results: list[Any] = [None] * len(batch)
        inputs: list[Any] = [None] * len(batch)
        for group in self._groups(batch):
            self._run_group(group, batch, model, inference_args, inputs, results)
        self._batch_size.update(len(batch))
        self._latency.update(int((time.perf_counter() - start) * 1e6))
        failed = sum(isinstance(r, _Failed) for r in results)
        self._examples.inc(len(batch) - failed)
        if failed:
            self._failed.inc(failed)
        return [
            PredictionResult((ex, x), r, self._model_id) for ex, x, r in zip(batch, inputs, results)
        ]

    def _groups(self, batch: Sequence[_Example]) -> list[list[int]]:
        """Indices of examples that can be stacked together: same shape (bucket) or same rank."""
        groups: dict[Any, list[int]] = {}
        for i, ex in enumerate(batch):
            shape = ex.features.shape
            key = shape if self._variable_length == "bucket" else shape[:-1]
            groups.setdefault(key, []).append(i)
        return list(groups.values())

    def _run_group(self, idx, batch, model, inference_args, inputs, results) -> None:
        arrays = [batch[i].features for i in idx]
        try:
            model_inputs, outputs = self._call(arrays, model, inference_args)
        except Exception as e:  # noqa: BLE001 - every failure is isolated, whatever raised it
            if not isinstance(e, _StageError):
                e = _StageError("inference", None, e)
            if len(idx) == 1:
                results[idx[0]] = _Failed(e.stage, e.step, e.error)
                inputs[idx[0]] = arrays[0]
                return
            self._splits.inc()
            half = len(idx) // 2
            self._run_group(idx[:half], batch, model, inference_args, inputs, results)
            self._run_group(idx[half:], batch, model, inference_args, inputs, results)
            return
        for i, x, y in zip(idx, model_inputs, outputs):
            inputs[i], results[i] = x, y

    def _call(self, arrays, model, inference_args):
        """Batch steps and the model on one group; raises _StageError naming what failed."""
        try:
            if self._variable_length == "pad":
                longest = max(a.shape[-1] for a in arrays)
                arrays = [
                    np.pad(a, [(0, 0)] * (a.ndim - 1) + [(0, longest - a.shape[-1])], constant_values=self._pad_value)
                    for a in arrays
                ]
            x = np.stack(arrays)
        except Exception as e:  # noqa: BLE001
            raise _StageError("preprocess", None, e) from e
        for name, step in self._pre:
            try:
                x = _same_length(step(x), len(arrays))
            except Exception as e:  # noqa: BLE001
                raise _StageError("preprocess", name, e) from e
        model_inputs = list(x)
        try:
            predictions = _same_length(list(self._inner.run_inference(model_inputs, model, inference_args)), len(arrays))
        except Exception as e:  # noqa: BLE001
            raise _StageError("inference", None, e) from e
        outputs = [p.inference for p in predictions]
        for name, step in self._post:
            try:
                outputs = list(_same_length(step(np.stack([np.asarray(o) for o in outputs])), len(arrays)))
            except Exception as e:  # noqa: BLE001
                raise _StageError("postprocess", name, e) from e
        return model_inputs, outputs

    def batch_elements_kwargs(self) -> Mapping[str, Any]:
        """The spec's batching, which the handler serving every model applies."""
        return self._batching


def _same_length(values: Any, expected: int) -> Any:
    """A batch result must have one entry per example, in order; anything else is an error."""
    try:
        size = len(values)
    except TypeError:  # a scalar, or a 0-d array
        size = None
    if size != expected:
        given = "a scalar" if size is None else f"{size} results"
        raise ValueError(f"gave {given} for a batch of {expected} examples")
    return values


class _StageError(Exception):
    def __init__(self, stage: str, step: Optional[str], error: BaseException) -> None:
        super().__init__(f"{stage} {step or ''}: {error}")
        self.stage, self.step, self.error = stage, step, error


class _ResidentModels:
    """The models loaded in one worker process: at most ``limit``, least recently used leave first.

    Loading is InferBridge's own: a model is an object of this process, dropped (and so freed,
    with whatever it made) when it is evicted or when a refresh replaces this set. Beam's model
    manager would instead start a server process per load, listening on a socket that unpickles.
    """

    def __init__(self, handlers: Mapping[str, "_IsolatingHandler"], limit: Optional[int], namespace: str) -> None:
        self._handlers = handlers
        self._limit = limit
        self._loaded: collections.OrderedDict[str, Any] = collections.OrderedDict()
        self._lock = threading.Lock()
        self._loads = Metrics.counter(namespace, "model_loads")

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
            model = self._handlers[model_id].load_model()
            self._loads.inc()
            self._loaded[model_id] = model
            return model


class _AllModels(ModelHandler):
    """Every model of the spec behind one Beam handler, the models routed inside it.

    The worker's models live in one ``_ResidentModels`` (at most ``max_models_per_worker``).
    Refresh: an update is the JSON object {model_id: uri} of every model, and replaces the set.
    Subclasses say which per-model handler serves a model (``model_handler``) and run batches.
    """

    model_handler: Callable[..., "_IsolatingHandler"]

    def __init__(self, spec: InferenceSpec, policy: LoadPolicy) -> None:
        super().__init__()
        self._handlers = {m.id: self.model_handler(spec, m, policy, f"models[{i}]") for i, m in enumerate(spec.models)}
        self._limit = spec.max_models_per_worker
        self._namespace = spec.metrics_namespace
        self._batching = next(iter(self._handlers.values())).batch_elements_kwargs()

    def load_model(self) -> _ResidentModels:
        return _ResidentModels(self._handlers, self._limit, self._namespace)

    def update_model_path(self, model_path: Optional[str] = None) -> None:
        if model_path:
            for model_id, uri in json.loads(model_path).items():
                self._handlers[model_id].update_model_path(uri)

    def batch_elements_kwargs(self) -> Mapping[str, Any]:
        return self._batching

    def get_metrics_namespace(self) -> str:
        return self._namespace


class _KeyedModels(_AllModels):
    """Elements (model_id, example), each batch routed to the models' ``_IsolatingHandler``."""

    model_handler = _IsolatingHandler

    def run_inference(
        self, batch: Sequence[tuple[str, _Example]], models: _ResidentModels, inference_args: Optional[dict] = None
    ) -> Iterable[tuple[str, PredictionResult]]:
        by_model: dict[str, list[_Example]] = {}
        for model_id, example in batch:
            by_model.setdefault(model_id, []).append(example)
        results: list[tuple[str, PredictionResult]] = []
        for model_id in models.resident_first(by_model):
            predictions = self._handlers[model_id].run_inference(by_model[model_id], models.get(model_id), inference_args)
            results.extend((model_id, p) for p in predictions)
        return results

    def get_num_bytes(self, batch: Sequence[tuple[str, _Example]]) -> int:
        return sum(ex.features.nbytes for _, ex in batch)


# --- Model refresh ------------------------------------------------------------------------------


class _LatestModelPaths(beam.DoFn):
    """Keeps the newest uri per model_id (state) and emits, on a change, the side input of the
    handlers that serve every model: the JSON object {model_id: uri} of them all."""

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


def _model_metadata(spec: InferenceSpec, updates: Optional[beam.PCollection]) -> Optional[beam.PCollection]:
    """The RunInference side input that swaps models, from model-update Rows: each update is one
    ModelMetadata whose model_id is the JSON object {model_id: uri} of all models. (Watch
    patterns are checked by the handlers themselves, without a side input.)
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


# --- Stage 3: predictions -> output Rows ---------------------------------------------------------


class _Finish(beam.DoFn):
    """Runs per-element postprocessing and builds the typed output Row, or a failure Row."""

    def __init__(self, spec: InferenceSpec) -> None:
        self._spec = spec
        _, self._step_specs = _split_postprocess(spec)

    def setup(self) -> None:
        self._steps = _build(steps.POSTPROCESS, self._step_specs)
        self._to_field = _INFERENCE_FIELDS[self._spec.inference_kind][1]
        ns = self._spec.metrics_namespace
        self._out = Metrics.counter(ns, "inferences_out")
        self._failed = {s: Metrics.counter(ns, f"{s}_failures") for s in ("preprocess", "inference", "postprocess", "output")}

    def process(self, keyed: tuple[str, PredictionResult]) -> Iterable[Any]:
        model_id, result = keyed
        example, model_input = result.example
        value = result.inference
        if isinstance(value, _Failed):
            yield self._failure(value.stage, value.step, value.error, example, model_id)
            return
        for name, step in self._steps:
            try:
                value = step(value)
            except Exception as e:  # noqa: BLE001
                yield self._failure("postprocess", name, e, example, model_id)
                return
        try:
            inference = self._to_field(value)
            flat_input = [float(x) for x in np.ravel(model_input)]
        except Exception as e:  # noqa: BLE001
            error = ValueError(f"cannot make the inference {value!r} a {self._spec.inference_kind}: {e}")
            yield self._failure("output", None, error, example, model_id)
            return
        self._out.inc()
        # Batching moves elements to the end of their window; give each its own time back.
        yield window.TimestampedValue(
            beam.Row(
                key=example.key,
                example=flat_input,
                inference=inference,
                model_id=model_id,
                **example.passthrough,
            ),
            example.timestamp,
        )

    def _failure(self, stage, step, error, example: _Example, model_id):
        self._failed[stage].inc()
        row = _failure_row(stage, step, error, example.row, example.key_text, model_id)
        return beam.pvalue.TaggedOutput(FAILURES_TAG, window.TimestampedValue(row, example.timestamp))


def _failure_row(stage, step, error, row, key, model_id, error_type=None) -> beam.Row:
    return beam.Row(
        stage=stage,
        step=step,
        error_type=error_type or type(error).__name__,
        message=str(error),
        element=_describe_element(row),
        key=None if key is None else str(key),
        model_id=model_id,
    )


def _describe_element(row: Any) -> str:
    """The input row as JSON (its fields), or its repr when it has no fields."""
    as_dict = getattr(row, "_asdict", None) or getattr(row, "as_dict", None)
    if as_dict is None:
        return repr(row)

    def plain(value: Any) -> Any:
        if isinstance(value, np.ndarray):
            return value.tolist()
        if isinstance(value, np.generic):
            return value.item()
        if isinstance(value, bytes):
            return value.hex()
        return repr(value)

    try:
        return json.dumps(dict(as_dict()), default=plain, allow_nan=True)
    except (TypeError, ValueError):  # e.g. a map with bytes keys
        return repr(row)


# --- Construction-time checks -------------------------------------------------------------------


def _check_input_schema(spec: InferenceSpec, element_type: Any) -> tuple[Any, list[tuple[str, Any]]]:
    """Checks the configured fields against the input schema.

    Returns the key's Beam type and the passthrough fields with their types. Without a known
    schema (plain Python objects) the key is emitted as a string and passthrough fields as Any.
    """
    fields = input_fields(element_type)
    if fields is None:
        return str, [(name, typing.Any) for name in spec.passthrough_fields]
    named = [("key_field", spec.key_field)]
    named += [(f"feature_fields[{i}]", f) for i, f in enumerate(spec.feature_fields)]
    named += [(f"passthrough_fields[{i}]", f) for i, f in enumerate(spec.passthrough_fields)]
    require_input_fields(fields, named)
    key_type = _non_null(fields[spec.key_field])  # a null key is a failure, so keys are never null
    if key_type not in _KEY_TYPES:
        raise ValueError(
            f"key_field={spec.key_field!r} has type {key_type}; allowed: a string or integer field"
        )
    for i, name in enumerate(spec.feature_fields):
        feature_type = _non_null(fields[name])
        if feature_type in _NON_NUMERIC_TYPES:
            raise ValueError(
                f"feature_fields[{i}]={name!r} has type {feature_type.__name__}; "
                "allowed: an array of numbers, or numeric fields"
            )
    return (int if key_type is not str else str), [(n, fields[n]) for n in spec.passthrough_fields]


def _non_null(field_type: Any) -> Any:
    from apache_beam.typehints import native_type_compatibility, typehints

    field_type = native_type_compatibility.convert_to_beam_type(field_type)
    if typehints.is_nullable(field_type):
        return typehints.get_concrete_type_from_nullable(field_type)
    return field_type


def _check_model_exists(where: str, model: Model) -> None:
    """Fails at construction for a model file that does not exist or is not a regular file (a
    directory, a device, a FIFO): the workers load only regular files."""
    model_files.check_regular_file(model.uri, where)


__all__ = ["Inference", "InferenceResult", "FAILURE_ROW", "configure_load_policy", "output_row_type"]
