"""The inference engine: user steps and the model on matrices of rows, failures isolated per row.

Every layout (Rows gathered from a bundle, Arrow record batches, packed Java blocks) reaches the
models as ``layouts.Block``s. ``BlockModels`` is the one Beam ``ModelHandler`` that serves them:
it concatenates a batch of blocks, routes each row to its model and runs that model's
``ModelRunner`` — preprocess steps, the model and postprocess steps on whole matrices. When
anything raises, the rows are halved and each half retried, so only the rows that fail on their
own are reported as failed, each with the stage and step that failed.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
import typing
from typing import Any, Callable, Mapping, NamedTuple, Optional, Sequence

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics
from apache_beam.typehints.row_type import RowTypeConstraint

from inferbridge import steps
from inferbridge.beam_ml import ModelHandler
from inferbridge.model_slots import ModelSlot, ResidentModels, update_slots
from inferbridge.policy import LoadPolicy
from inferbridge.spec import InferenceSpec

FAILURES_TAG = "failures"
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
# Rows per model call when the spec sets no batch sizes: blocks of this size go one per call,
# smaller ones (keyed sub-blocks) are gathered into calls of about this size.
DEFAULT_BATCH_ROWS = 1024


class Failed(NamedTuple):
    """Why a row got no inference; becomes a failure Row."""

    stage: str
    step: Optional[str]
    error: BaseException


class StageError(Exception):
    def __init__(self, stage: str, step: Optional[str], error: BaseException) -> None:
        super().__init__(f"{stage} {step or ''}: {error}")
        self.stage, self.step, self.error = stage, step, error


def failure_row(stage, step, error, element: str, key, model_id, error_type=None) -> beam.Row:
    return beam.Row(
        stage=stage,
        step=step,
        error_type=error_type or type(error).__name__,
        message=str(error),
        element=element,
        key=None if key is None else str(key),
        model_id=model_id,
    )


def describe_element(element: Any) -> str:
    """An input element as strict JSON (RFC 8259, what any standard parser reads): a row as an
    object of its fields; anything else as ``{"value": "<its repr>"}``.

    Non-finite numbers are written as the strings ``"NaN"``, ``"Infinity"`` and ``"-Infinity"``
    (as in protobuf's JSON mapping), bytes as hexadecimal strings, map keys as strings, and
    values JSON has no form for as their repr."""
    as_dict = getattr(element, "_asdict", None) or getattr(element, "as_dict", None)
    if as_dict is not None:
        fields = dict(as_dict())
    elif dataclasses.is_dataclass(element) and not isinstance(element, type):
        fields = {f.name: getattr(element, f.name) for f in dataclasses.fields(element)}
    elif isinstance(element, Mapping):
        fields = dict(element)
    else:
        fields = {"value": repr(element)}
    return json.dumps(_json_value(fields), allow_nan=False)


_NON_FINITE = {float("inf"): "Infinity", float("-inf"): "-Infinity"}


def _json_value(value: Any) -> Any:
    """``value`` as what ``json.dumps`` writes strictly."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else _NON_FINITE.get(value, "NaN")
    if isinstance(value, np.ndarray):
        return _json_value(value.tolist())
    if isinstance(value, np.generic):
        return _json_value(value.item())
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    if isinstance(value, Mapping):
        return {k if isinstance(k, str) else _key_text(k): _json_value(v) for k, v in value.items()}
    as_dict = getattr(value, "_asdict", None) or getattr(value, "as_dict", None)
    if as_dict is not None:  # a nested row
        return _json_value(dict(as_dict()))
    if isinstance(value, (list, tuple)):
        return [_json_value(v) for v in value]
    return repr(value)


def _key_text(key: Any) -> str:
    text = _json_value(key)
    return text if isinstance(text, str) else json.dumps(text)


def unmapped_key(spec: InferenceSpec, key: str) -> LookupError:
    mapped = sorted(k for m in spec.models for k in m.keys)
    return LookupError(
        f"no model serves key {key!r} and no default model is configured; mapped keys: "
        f"{', '.join(mapped[:20])}{' ...' if len(mapped) > 20 else ''}"
    )


# --- Steps on matrices ---------------------------------------------------------------------------


def resolved_steps(spec: InferenceSpec) -> tuple[list, list]:
    """(name, definition, params) of the preprocess and postprocess steps."""
    return (
        [(s.name, *s.resolve(steps.PREPROCESS)) for s in spec.preprocess],
        [(s.name, *s.resolve(steps.POSTPROCESS)) for s in spec.postprocess],
    )


def batch_function(definition: steps.StepDefinition, params: dict) -> Callable[[Any], Any]:
    """A step over a whole matrix: its batch form, or its per-row form row by row."""
    if definition.batched:
        return definition.build_for_batch(params)
    function = definition.build(params)

    def row_by_row(rows: Any) -> np.ndarray:
        # Refuses a batch whose results would be too big before making any (it is then halved).
        steps.check_allocation(definition, params, rows)
        return as_rows([function(row) for row in rows])

    return row_by_row


def as_rows(values: Any) -> np.ndarray:
    """Per-row results as one array (first axis = rows); objects when they are not numbers."""
    if isinstance(values, np.ndarray):
        return values
    array = None
    if len(values) and not isinstance(values[0], (str, dict)):
        try:
            array = np.asarray(values)
        except ValueError:  # rows of different shapes
            array = None
        if array is not None and array.dtype.kind in "US" and not isinstance(values[0], (str, bytes)):
            array = None  # numbers and text mixed: numpy would make the numbers text
    if array is None or array.dtype == object:
        array = np.empty(len(values), dtype=object)
        for i, value in enumerate(values):
            array[i] = value
    return array


def same_length(values: Any, expected: int) -> Any:
    """A batch result must have one entry per row, in order; anything else is an error."""
    try:
        size = len(values)
    except TypeError:  # a scalar, or a 0-d array
        size = None
    if size != expected:
        given = "a scalar" if size is None else f"{size} results"
        raise ValueError(f"gave {given} for a batch of {expected} examples")
    return values


def numeric_array(value: Any) -> np.ndarray:
    """A step's result as an array of numbers, or an error saying what it returned instead."""
    array = np.asarray(value)
    if array.dtype.kind not in "biuf":
        raise ValueError(f"the step returned {type(value).__name__} values of kind {array.dtype}, not numbers")
    return array


def place(pieces: Sequence[tuple[Any, np.ndarray]], size: int) -> np.ndarray:
    """Values for some rows each (row positions or a slice, values) as one array in row order;
    rows no piece covers hold placeholders. Pieces of different kinds or shapes (a row that
    gave text where others gave numbers, classifiers with different classes) make an array of
    one object per row."""
    if len(pieces) == 1 and len(pieces[0][1]) == size:
        return pieces[0][1]
    if not pieces:
        return np.empty(size, dtype=object)
    first = pieces[0][1]
    shaped = all(v.shape[1:] == first.shape[1:] for _, v in pieces)
    if shaped and all(v.dtype.kind in "biuf" for _, v in pieces):
        dtype = np.result_type(*[v.dtype for _, v in pieces])
    elif shaped and all(v.dtype == first.dtype for _, v in pieces):
        dtype = first.dtype
    else:
        dtype = object
    outputs = np.zeros((size, *first.shape[1:]), dtype=dtype) if dtype != object else np.empty(size, dtype=object)
    for rows, values in pieces:
        if dtype == object and values.ndim > 1:
            for r, value in zip(np.arange(size)[rows], values):
                outputs[r] = value
        else:
            outputs[rows] = values
    return outputs


# --- One model: steps and the model on a matrix -------------------------------------------------


class ModelRunner:
    """Preprocess steps, the model and postprocess steps for one model, on matrices of rows."""

    def __init__(self, spec: InferenceSpec, slot: ModelSlot, pre: list, post: list, metric_id: str) -> None:
        self._slot = slot
        self._metric_id = metric_id
        self._pre_specs, self._post_specs = pre, post
        self._namespace = spec.metrics_namespace
        self._max_rows = spec.max_batch_size
        self._built = False

    def _setup(self) -> None:
        if self._built:
            return
        self._pre = [(n, batch_function(d, p)) for n, d, p in self._pre_specs]
        self._post = [(n, batch_function(d, p)) for n, d, p in self._post_specs]
        prefix = f"model_{self._metric_id}_"
        self._examples = Metrics.counter(self._namespace, prefix + "examples")
        self._failed = Metrics.counter(self._namespace, prefix + "failed_examples")
        self._splits = Metrics.counter(self._namespace, prefix + "batch_splits")
        self._batch_size = Metrics.distribution(self._namespace, prefix + "batch_size_examples")
        self._latency = Metrics.distribution(self._namespace, prefix + "batch_latency_micros")
        self._built = True

    def report_zero_counters(self) -> None:
        """Reports this model's counters (as 0 until they count), so that every one is listed."""
        self._setup()
        for counter in (self._examples, self._failed, self._splits):
            counter.inc(0)

    def count_failed(self, rows: int) -> None:
        """Counts rows the model could not serve at all (its file did not load)."""
        self._setup()
        self._failed.inc(rows)

    def predict(
        self, matrix: np.ndarray, model: Any, inference_args: Optional[dict], keep_inputs: bool
    ) -> tuple[np.ndarray, Optional[np.ndarray], dict[int, Failed]]:
        """Outputs (and model inputs) for every row of ``matrix``, placeholders where a row
        failed, and the failed rows. Model calls take at most ``max_batch_size`` rows."""
        self._setup()
        model = self._slot.current(model)
        size = len(matrix)
        step = self._max_rows or size or 1
        pieces: list[tuple[slice, np.ndarray, np.ndarray]] = []
        failed: dict[int, Failed] = {}
        for lo in range(0, size, step):
            hi = min(lo + step, size)
            start = time.perf_counter()
            self._run_rows(matrix, lo, hi, model, inference_args, pieces, failed)
            self._batch_size.update(hi - lo)
            self._latency.update(int((time.perf_counter() - start) * 1e6))
        # The model's own counts: rows it predicted, rows it failed on (not the steps' failures).
        unpredicted = sum(f.stage in ("preprocess", "inference") for f in failed.values())
        model_failures = sum(f.stage == "inference" for f in failed.values())
        self._examples.inc(size - unpredicted)
        if model_failures:
            self._failed.inc(model_failures)
        outputs = place([(rows, y) for rows, _, y in pieces], size)
        inputs = place([(rows, x) for rows, x, _ in pieces], size) if keep_inputs else None
        return outputs, inputs, failed

    def _run_rows(self, matrix, lo, hi, model, inference_args, pieces, failed) -> None:
        try:
            x, outputs = self._call(matrix[lo:hi], model, inference_args)
            pieces.append((slice(lo, hi), x, outputs))
        except Exception as e:  # noqa: BLE001 - every failure is isolated, whatever raised it
            if not isinstance(e, StageError):
                e = StageError("inference", None, e)
            # An error that says so is the call's, not a row's (an endpoint down after its
            # retries): splitting would only call it again, once per half.
            if hi - lo == 1 or not getattr(e.error, "isolate_rows", True):
                for row in range(lo, hi):
                    failed[row] = Failed(e.stage, e.step, e.error)
                return
            self._splits.inc()
            mid = (lo + hi) // 2
            self._run_rows(matrix, lo, mid, model, inference_args, pieces, failed)
            self._run_rows(matrix, mid, hi, model, inference_args, pieces, failed)

    def _call(self, x: np.ndarray, model: Any, inference_args: Optional[dict]) -> tuple[np.ndarray, np.ndarray]:
        count = len(x)
        for name, step in self._pre:
            try:
                x = numeric_array(same_length(step(x), count))
            except Exception as e:  # noqa: BLE001
                raise StageError("preprocess", name, e) from e
        try:
            outputs = self._slot.predict_matrix(x, model, inference_args)
        except Exception as e:  # noqa: BLE001
            raise StageError("inference", None, e) from e
        for name, step in self._post:
            try:
                outputs = as_rows(same_length(step(outputs), count))
            except Exception as e:  # noqa: BLE001
                raise StageError("postprocess", name, e) from e
        return x, outputs


# --- Every model behind one Beam handler ---------------------------------------------------------


class Outcome:
    """A block's result: outputs (and model inputs) of the rows that succeeded, in order, and
    the failed rows by position in the block."""

    __slots__ = ("outputs", "inputs", "failed")

    def __init__(self, outputs: Any, inputs: Optional[np.ndarray], failed: dict[int, Failed]) -> None:
        self.outputs, self.inputs, self.failed = outputs, inputs, failed


def default_batch_rows(spec: InferenceSpec) -> int:
    """Rows per batch: about DEFAULT_BATCH_ROWS per model call when keys mix in every block;
    four times that when fewer models than keys stay resident, to spread the reloads."""
    count = len(spec.models)
    if count == 1:
        return DEFAULT_BATCH_ROWS
    resident = min(count, spec.max_models_per_worker or count)
    return DEFAULT_BATCH_ROWS * count * (4 if resident < count else 1)


def _rows_of(block: Any) -> int:
    return len(block.features)


class BlockModels(ModelHandler):
    """Every model of the spec behind one Beam handler; the rows of each batch of blocks are
    routed to their models inside it.

    The worker's models live in one ``ResidentModels`` (at most ``max_models_per_worker``).
    Beam batches blocks (sizes count rows), shares the models between threads and refreshes
    them: an update is the JSON object {model_id: uri} of every model. With
    ``variable_length="pad"`` the preprocess steps run before padding, as rows are read.
    """

    def __init__(self, spec: InferenceSpec, policy: LoadPolicy, keep_inputs: bool = False, bounded: bool = False) -> None:
        super().__init__()
        self._slots = {m.id: ModelSlot(spec, m, policy, f"models[{i}]") for i, m in enumerate(spec.models)}
        pre, post = resolved_steps(spec)
        if spec.variable_length == "pad":
            pre = []
        # Metric names: the model_id, else the model's position (a URI changes with every release).
        self._runners = {
            m.id: ModelRunner(spec, self._slots[m.id], pre, post, m.model_id or str(i)) for i, m in enumerate(spec.models)
        }
        self._counters_reported = False
        self._ids = [m.id for m in spec.models]
        self._limit = spec.max_models_per_worker
        self._namespace = spec.metrics_namespace
        self._keep_inputs = keep_inputs
        # On bounded input a batch never waits (it closes with its bundle), so the duration is
        # not passed on: Beam's stateful batching it would switch to loses every element a step
        # emits at the end of its bundle on Beam's bundle-based DirectRunner (which runs
        # pipelines with its real-time timer), as InferBridge's steps do.
        duration = None if bounded else spec.max_batch_duration_secs
        batching = {
            k: v
            for k, v in (
                ("min_batch_size", spec.min_batch_size),
                ("max_batch_size", spec.max_batch_size),
                ("max_batch_duration_secs", duration),
            )
            if v is not None
        }
        # Batches hold a fixed number of rows. Beam's batching aims between min and max and
        # takes no element bigger than its aim: it emits an empty batch before it, and in
        # windowed pipelines soon fails fitting those (numpy's LinAlgError); blocks hold up to
        # max_batch_size rows (input blocks: any number). Beam's stateful batching
        # (max_batch_duration_secs) counts elements and never emits an empty batch: it gets the
        # sizes given, if any.
        if duration is None or not {"min_batch_size", "max_batch_size"} & batching.keys():
            rows = spec.max_batch_size or max(default_batch_rows(spec), spec.min_batch_size or 0)
            batching["min_batch_size"] = batching["max_batch_size"] = rows
        self._batching = {**batching, "element_size_fn": _rows_of}

    def check_example_shape(self, shape: tuple[int, ...], origin: str) -> None:
        """Raises ValueError for a model whose file declares another example shape than
        ``shape``, the one ``origin`` (e.g. the feature fields) gives every example."""
        for i, slot in enumerate(self._slots.values()):
            declared = slot.declared_example_shape()
            if declared is not None and declared != shape:
                raise ValueError(
                    f"models[{i}].uri={slot.uri!r} declares examples of shape {declared}; {origin} give "
                    f"examples of shape {shape}; allowed: feature fields (and preprocess steps) that give "
                    "the shape the model declares"
                )

    def load_model(self) -> ResidentModels:
        return ResidentModels(self._slots, self._limit, self._namespace)

    def update_model_path(self, model_path: Optional[str] = None) -> None:
        update_slots(self._slots, model_path)

    def batch_elements_kwargs(self) -> Mapping[str, Any]:
        return self._batching

    def get_metrics_namespace(self) -> str:
        # Beam's own RunInference metrics count batches of blocks, not rows: apart from ours.
        return f"{self._namespace}_beam"

    def get_num_bytes(self, batch: Sequence[Any]) -> int:
        return sum(block.features.nbytes for block in batch)

    def run_inference(self, batch: Sequence[Any], models: ResidentModels, inference_args: Optional[dict] = None) -> Sequence[Any]:
        """The blocks of the batch, each with its ``Outcome``: one model call per model and
        feature shape over the whole batch (at most ``max_batch_size`` rows each). Blocks, not
        PredictionResults, go on: their coder is InferBridge's, cheap to size."""
        if not self._counters_reported:  # once per copy of the handler: the runner keeps them
            for runner in self._runners.values():
                runner.report_zero_counters()
            models.report_zero_counters()
            self._counters_reported = True
        shapes: dict[tuple, list[Any]] = {}
        for block in batch:
            shapes.setdefault(block.features.shape[1:], []).append(block)
        for blocks in shapes.values():
            for block, outcome in zip(blocks, self._run_blocks(blocks, models, inference_args)):
                block.outcome = outcome
        return batch

    def _run_blocks(self, blocks: list, models: ResidentModels, inference_args: Optional[dict]) -> list[Outcome]:
        matrix = blocks[0].features if len(blocks) == 1 else np.concatenate([b.features for b in blocks])
        size = len(matrix)
        route = None
        if len(self._ids) > 1:
            route = np.concatenate([b.models if b.models is not None else np.zeros(len(b.features), np.int64) for b in blocks])
        outputs, inputs, failed = [], [], {}
        present = self._ids[:1] if route is None else [self._ids[m] for m in np.unique(route).tolist()]
        for model_id in models.resident_first(present):
            rows = slice(None) if route is None else np.flatnonzero(route == self._ids.index(model_id))
            try:
                model = models.get(model_id)
            except Exception as e:  # noqa: BLE001 - a model that does not load fails its rows only
                positions = range(size) if route is None else rows.tolist()
                failed.update({int(r): Failed("inference", None, e) for r in positions})
                self._runners[model_id].count_failed(len(positions))
                continue
            y, x, model_failed = self._runners[model_id].predict(
                matrix[rows], model, inference_args, self._keep_inputs
            )
            outputs.append((rows, y))
            inputs.append((rows, x))
            failed.update(model_failed if route is None else {int(rows[r]): f for r, f in model_failed.items()})
        outputs = place(outputs, size)
        inputs = place(inputs, size) if self._keep_inputs else None
        outcomes, offset = [], 0
        for block in blocks:
            count = len(block.features)
            mine = {r - offset: f for r, f in failed.items() if offset <= r < offset + count}
            kept = slice(offset, offset + count)
            if mine:
                kept = np.arange(offset, offset + count)
                kept = np.delete(kept, [r for r in mine])
            outcomes.append(Outcome(outputs[kept], None if inputs is None else inputs[kept], mine))
            offset += count
        return outcomes
