"""``BlockInference``: the ``Inference`` composite on columnar blocks of rows — the fast path.

Each element is a block of many rows: a ``pyarrow.RecordBatch`` (or ``Table``) in Python
pipelines, or a packed block Row from the Java wrapper (``Inference.withBlockSize``). Routing,
steps and the model run on whole matrices, so Beam's per-element cost is paid once per block
instead of once per row. Every row still ends as exactly one output: a row of an output block,
or a failure Row naming the stage that failed.

Packed block Rows (the wire layout, written by Java):
  in:  key ARRAY<INT64|STRING>, features BYTES (float64 little-endian, row-major),
       feature_count INT32, then each passthrough field as ARRAY<T>
  out: key, inference (BYTES: float64 vectors/numbers or int64 integers; ARRAY<STRING> labels),
       inference_width INT32, model_id STRING, then the passthrough fields
"""

from __future__ import annotations

import pickle
import time
import typing
from typing import Any, Iterable, Optional, Sequence

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import PredictionResult
from apache_beam.portability.api import external_transforms_pb2
from apache_beam.transforms import window
from apache_beam.typehints.row_type import RowTypeConstraint

from inferbridge import inference as row_inference
from inferbridge import steps
from inferbridge.inference import (
    FAILURE_ROW,
    FAILURES_TAG,
    Inference,
    InferenceResult,
    _AllModels,
    _check_model_exists,
    _describe_element,
    _Failed,
    _failure_row,
    _IsolatingHandler,
    _model_metadata,
    _numeric_array,
    _ResidentModels,
    _same_length,
    _StageError,
    run_inference,
)
from inferbridge.policy import LoadPolicy
from inferbridge.spec import RUN_INFERENCE_BLOCKS_URN, InferenceSpec, input_fields

WIRE_FIELDS = ("key", "features", "feature_count")
# Rows per model call when the spec sets no batch sizes: blocks of this size go one per call,
# smaller ones (keyed sub-blocks) are gathered into calls of about this size.
DEFAULT_BATCH_ROWS = 1024
_WIRE_INFERENCE = {
    steps.VECTOR: (bytes, "<f8"),
    steps.NUMBER: (bytes, "<f8"),
    steps.INTEGER: (bytes, "<i8"),
    steps.LABEL: (typing.Sequence[str], None),
}
_ARROW_KINDS = (steps.VECTOR, steps.NUMBER, steps.INTEGER, steps.LABEL, steps.MAP)


@beam.PTransform.register_urn(RUN_INFERENCE_BLOCKS_URN, external_transforms_pb2.ExternalConfigurationPayload)
class BlockInference(Inference):
    """``Inference`` on blocks of rows: same arguments, same models, steps and failures.

    ::

        result = record_batches | BlockInference(
            Model.sklearn("/models/digits.pkl", output="predict_proba"),
            key_field="id", feature_fields="pixels",
            preprocess=[Step("scale", factor=1 / 16)],
            postprocess=[Step("argmax")])
        result.inferences  # pyarrow.RecordBatch(key, inference, model_id, *passthrough_fields)
        result.failures    # Row(stage, step, error_type, message, element, key, model_id)

    Input elements are ``pyarrow.RecordBatch`` or ``pyarrow.Table`` with the key column, the
    features (one list-of-numbers column, or numeric columns) and the passthrough columns. Each
    output block holds the rows of one input block that one model served; ``inference`` is a
    fixed-size list of float64 (vector), float64, int64, string or map<string, float64>. Output
    blocks carry no ``example`` column: the model input stays on the worker. Batching sizes
    count rows.
    """

    urn = RUN_INFERENCE_BLOCKS_URN

    def expand(self, inputs: Any) -> InferenceResult:
        spec = self._spec
        blocks, updates = self._split_inputs(inputs)
        layout = _layout_for(spec, blocks.element_type)
        policy = self._policy or row_inference._load_policy or LoadPolicy.from_env()
        handler = _BlockModels(spec, policy)
        for i, model in enumerate(spec.models):
            _check_model_exists(f"models[{i}]", model)

        prepared = blocks | "PrepareBlocks" >> beam.ParDo(_PrepareBlocks(spec, layout)).with_output_types(
            _Block
        ).with_outputs(FAILURES_TAG, main="blocks")
        run = run_inference(spec, handler, _model_metadata(spec, updates))
        finished = (
            prepared.blocks
            | "RunInference" >> run
            | "FinishBlocks" >> beam.ParDo(_FinishBlocks(spec, layout)).with_outputs(FAILURES_TAG, main="inferences")
        )
        inferences = finished.inferences
        if layout.output_type is not None:
            inferences = inferences | "TypeBlocks" >> beam.Map(lambda r: r).with_output_types(layout.output_type)
        failures = (
            (prepared[FAILURES_TAG], finished[FAILURES_TAG]) | "Failures" >> beam.Flatten()
        ) | "TypeFailures" >> beam.Map(lambda r: r).with_output_types(FAILURE_ROW)
        return InferenceResult(inferences, failures)

    @staticmethod
    def from_runner_api_parameter(unused_ptransform: Any, payload: Any, unused_context: Any) -> "BlockInference":
        return BlockInference.from_payload(payload)


# --- Layouts: a block element <-> columns ---------------------------------------------------------


class _Columns:
    """A block's rows as columns: keys, the feature matrix (per width group), passthrough values.

    ``groups`` are (row positions, float64 matrix) pairs, one per feature width; ``bad`` are the
    rows that cannot be read, with why. Columns are pyarrow arrays (Arrow layout) or numpy
    arrays (wire layout); ``take`` and ``value`` hide which.
    """

    __slots__ = ("size", "keys", "groups", "passthrough", "bad", "describe")

    def __init__(self, size, keys, groups, passthrough, bad, describe) -> None:
        self.size, self.keys, self.groups, self.passthrough, self.bad, self.describe = (
            size, keys, groups, passthrough, bad, describe
        )


def _take(column: Any, positions: np.ndarray) -> Any:
    if isinstance(column, np.ndarray):
        return column[positions]
    return column.take(positions)


def _value(column: Any, i: int) -> Any:
    if isinstance(column, np.ndarray):
        value = column[i]
        return value.item() if isinstance(value, np.generic) else value
    return column[i].as_py()


class _ArrowRows:
    """Describes a row of a RecordBatch, for its failure Row: every column, as JSON."""

    def __init__(self, batch: Any) -> None:
        self._batch = batch

    def __call__(self, i: int) -> str:
        batch = self._batch
        return _describe_element(beam.Row(**{n: batch.column(n)[i].as_py() for n in batch.schema.names}))


class _PackedRows:
    """Describes a row of a packed block: key, features and passthrough fields, as JSON."""

    def __init__(self, key_field: str, keys: Any, feature_name: str, matrix: Optional[np.ndarray], passthrough: dict) -> None:
        self._key_field, self._keys, self._feature_name = key_field, keys, feature_name
        self._matrix, self._passthrough = matrix, passthrough

    def __call__(self, i: int) -> str:
        values = {self._key_field: _value(self._keys, i)}
        if self._matrix is not None:
            values[self._feature_name] = self._matrix[i].tolist()
        values.update({name: _value(column, i) for name, column in self._passthrough.items()})
        return _describe_element(beam.Row(**values))


class _ArrowLayout:
    """pyarrow RecordBatches (or Tables) in, RecordBatches out."""

    output_type = None
    one_model_per_block = False

    def __init__(self, spec: InferenceSpec) -> None:
        self._spec = spec

    def split(self, element: Any) -> Iterable[Any]:
        import pyarrow as pa

        if isinstance(element, pa.Table):
            return element.to_batches()
        return [element]

    def read(self, batch: Any) -> _Columns:
        import pyarrow as pa

        spec = self._spec
        if not isinstance(batch, pa.RecordBatch):
            raise TypeError(
                f"BlockInference takes pyarrow RecordBatch or Table elements; got "
                f"{type(batch).__name__}. Use Inference for one row per element"
            )
        size = batch.num_rows
        names = batch.schema.names
        wanted = [spec.key_field, *spec.feature_fields, *spec.passthrough_fields]
        missing = [name for name in wanted if name not in names]
        bad: dict[int, BaseException] = {}
        keys = batch.column(spec.key_field) if spec.key_field in names else None
        passthrough = {n: batch.column(n) for n in spec.passthrough_fields if n in names}
        describe = _ArrowRows(batch)

        if missing:
            error = ValueError(f"the block has no column {missing[0]!r}; its columns: {', '.join(names)}")
            return _Columns(size, keys, [], passthrough, {i: error for i in range(size)}, describe)
        if not (pa.types.is_integer(keys.type) or pa.types.is_string(keys.type) or pa.types.is_large_string(keys.type)):
            error = ValueError(f"key_field {spec.key_field!r} has Arrow type {keys.type}; allowed: a string or integer column")
            return _Columns(size, keys, [], passthrough, {i: error for i in range(size)}, describe)
        for i in _null_positions(keys):
            bad[i] = ValueError(f"key_field {spec.key_field!r} is null")
        try:
            groups = self._features(batch, bad)
        except ValueError as e:  # the layout of the feature columns, the same for every row
            return _Columns(size, keys, [], passthrough, {i: e for i in range(size)}, describe)
        return _Columns(size, keys, groups, passthrough, bad, describe)

    def _features(self, batch: Any, bad: dict) -> list[tuple[np.ndarray, np.ndarray]]:
        import pyarrow as pa
        import pyarrow.compute as pc

        spec = self._spec
        columns = [batch.column(name) for name in spec.feature_fields]
        listed = [pa.types.is_list(c.type) or pa.types.is_large_list(c.type) or pa.types.is_fixed_size_list(c.type) for c in columns]
        for name, column, is_list in zip(spec.feature_fields, columns, listed):
            value_type = column.type.value_type if is_list else column.type
            if not (pa.types.is_integer(value_type) or pa.types.is_floating(value_type)):
                raise ValueError(
                    f"feature field {name!r} has Arrow type {column.type}; allowed: a list of "
                    "numbers, or numeric columns"
                )
        if any(listed) and len(columns) > 1:
            raise ValueError(
                f"feature_fields {list(spec.feature_fields)} mix a list column with others; in "
                "blocks give one list-of-numbers column, or only numeric columns"
            )
        for name, column in zip(spec.feature_fields, columns):
            for i in _null_positions(column):
                bad.setdefault(i, ValueError(f"feature field {name!r} is null"))
        if not listed[0]:
            matrix = np.column_stack([c.to_numpy(zero_copy_only=False).astype(np.float64, copy=False) for c in columns])
            return self._without(bad, [(np.arange(batch.num_rows), matrix)])
        column = columns[0]
        if pa.types.is_fixed_size_list(column.type) and not column.null_count and not column.values.null_count:
            width = column.type.list_size
            flat = column.flatten().to_numpy(zero_copy_only=False)
            return self._without(bad, [(np.arange(batch.num_rows), flat.reshape(batch.num_rows, width).astype(np.float64, copy=False))])
        lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
        valid = ~np.isnan(lengths) if lengths.dtype.kind == "f" else np.ones(len(lengths), bool)
        positions = np.flatnonzero(valid)
        lengths = lengths[valid].astype(np.int64)
        values = column.flatten()
        if values.null_count:
            starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
            holes = np.flatnonzero(values.is_null().to_numpy(zero_copy_only=False))
            for row in set(positions[np.searchsorted(starts, holes, side="right") - 1].tolist()):
                bad.setdefault(row, ValueError(f"feature field {spec.feature_fields[0]!r} holds a null value"))
        flat = values.to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
        if len(positions) and (lengths == lengths[0]).all():
            return self._without(bad, [(positions, flat.reshape(len(positions), int(lengths[0])))])
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        if spec.variable_length == "pad" and len(positions):
            longest = int(lengths.max())
            matrix = np.full((len(positions), longest), spec.pad_value, dtype=np.float64)
            matrix[np.arange(longest) < lengths[:, None]] = flat
            return self._without(bad, [(positions, matrix)])
        groups = []
        for length in np.unique(lengths):
            members = np.flatnonzero(lengths == length)
            gather = starts[members][:, None] + np.arange(int(length))
            groups.append((positions[members], flat[gather]))
        return self._without(bad, groups)

    @staticmethod
    def _without(bad: dict, groups: list) -> list:
        if not bad:
            return groups
        drop = np.fromiter(bad, dtype=np.int64)
        kept = []
        for positions, matrix in groups:
            keep = ~np.isin(positions, drop)
            if keep.any():
                kept.append((positions[keep], matrix[keep]))
        return kept

    def write(self, keys: Any, inference: np.ndarray, kind: str, model_id: str, passthrough: dict) -> Any:
        import pyarrow as pa

        if kind == steps.VECTOR:
            width = inference.shape[1] if inference.ndim == 2 else 0
            column = pa.FixedSizeListArray.from_arrays(pa.array(inference.astype(np.float64).ravel()), width)
        elif kind == steps.NUMBER:
            column = pa.array(inference.astype(np.float64))
        elif kind == steps.INTEGER:
            column = pa.array(inference.astype(np.int64))
        elif kind == steps.LABEL:
            column = pa.array([v if isinstance(v, str) else str(v) for v in inference], type=pa.string())
        else:
            column = pa.array(
                [[(str(k), float(x)) for k, x in dict(v).items()] for v in inference],
                type=pa.map_(pa.string(), pa.float64()),
            )
        size = len(inference)
        model_ids = pa.repeat(model_id, size) if isinstance(model_id, str) else pa.array(model_id, type=pa.string())
        return pa.RecordBatch.from_arrays(
            [keys, column, model_ids, *passthrough.values()],
            names=["key", "inference", "model_id", *passthrough],
        )


def _null_positions(column: Any) -> list[int]:
    if not column.null_count:
        return []
    return np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False)).tolist()


class _WireLayout:
    """Packed block Rows from the Java wrapper in, packed block Rows out."""

    one_model_per_block = True  # model_id is one string per packed block

    def __init__(self, spec: InferenceSpec, fields: dict[str, Any]) -> None:
        self._spec = spec
        self._feature_name = spec.feature_fields[0] if len(spec.feature_fields) == 1 else "features"
        if spec.inference_kind not in _WIRE_INFERENCE:
            raise ValueError(
                f"the inference is a {spec.inference_kind} after the postprocess steps, which "
                f"packed blocks cannot carry (allowed: {', '.join(_WIRE_INFERENCE)}); use the "
                "row path (no block size) for it"
            )
        self.output_type = RowTypeConstraint.from_fields(
            [
                ("key", fields["key"]),
                ("inference", _WIRE_INFERENCE[spec.inference_kind][0]),
                ("inference_width", np.int32),
                ("model_id", str),
                *[(name, fields[name]) for name in spec.passthrough_fields],
            ]
        )

    def split(self, element: Any) -> Iterable[Any]:
        return [element]

    def read(self, block: Any) -> _Columns:
        spec = self._spec
        keys = _column(block.key)
        size = len(keys)
        passthrough = {name: _column(getattr(block, name)) for name in spec.passthrough_fields}
        width = block.feature_count or 0
        data = block.features or b""
        if width <= 0 or len(data) != size * width * 8:
            error = ValueError(
                f"the packed block holds {len(data)} feature bytes for {size} rows of "
                f"feature_count={block.feature_count}; it needs rows x feature_count x 8 bytes"
            )
            describe = _PackedRows(spec.key_field, keys, self._feature_name, None, passthrough)
            return _Columns(size, keys, [], passthrough, {i: error for i in range(size)}, describe)
        matrix = np.frombuffer(data, dtype="<f8").reshape(size, width)
        describe = _PackedRows(spec.key_field, keys, self._feature_name, matrix, passthrough)
        return _Columns(size, keys, [(np.arange(size), matrix)], passthrough, {}, describe)

    def write(self, keys: Any, inference: np.ndarray, kind: str, model_id: str, passthrough: dict) -> beam.Row:
        dtype = _WIRE_INFERENCE[kind][1]
        if dtype is None:
            value, width = [v if isinstance(v, str) else str(v) for v in inference], 1
        else:
            value = np.ascontiguousarray(inference, dtype=dtype).tobytes()
            width = inference.shape[1] if inference.ndim == 2 else 1
        return beam.Row(
            key=keys.tolist(),
            inference=value,
            inference_width=width,
            model_id=model_id,
            **{name: column.tolist() for name, column in passthrough.items()},
        )


def _column(values: Sequence[Any]) -> np.ndarray:
    """A decoded ARRAY field as a numpy array: int64 for integers, else one object per row."""
    values = list(values or ())
    if values and all(isinstance(v, int) for v in values):
        return np.asarray(values, dtype=np.int64)
    column = np.empty(len(values), dtype=object)
    for i, value in enumerate(values):
        column[i] = value
    return column


def _layout_for(spec: InferenceSpec, element_type: Any) -> Any:
    fields = input_fields(element_type)
    if fields is None:
        if spec.inference_kind not in _ARROW_KINDS:
            raise ValueError(
                f"the inference is a {spec.inference_kind} after the postprocess steps; blocks "
                f"need a declared kind ({', '.join(_ARROW_KINDS)}): give the last step's output kind"
            )
        return _ArrowLayout(spec)
    missing = [name for name in (*WIRE_FIELDS, *spec.passthrough_fields) if name not in fields]
    if missing:
        raise ValueError(
            f"BlockInference got Rows without the packed block field {missing[0]!r}; it takes "
            "pyarrow RecordBatches, or packed block Rows (key, features, feature_count, "
            "passthrough fields) as the Java wrapper's withBlockSize sends them"
        )
    return _WireLayout(spec, fields)


# --- Stage 1: blocks -> (model_id, rows of one model) -------------------------------------------


class _Block:
    """Rows of one input block on their way through the models: columns, raw features, and the
    index (in spec.models) of the model that serves each row (None: the only model)."""

    __slots__ = ("keys", "features", "models", "passthrough", "describe", "positions", "timestamp")

    def __init__(self, keys, features, models, passthrough, describe, positions, timestamp) -> None:
        self.keys, self.features, self.models, self.passthrough = keys, features, models, passthrough
        self.describe, self.positions, self.timestamp = describe, positions, timestamp

    def model_index(self, row: int) -> int:
        return 0 if self.models is None else int(self.models[row])


class _BlockCoder(beam.coders.Coder):
    """Pickles blocks; estimates their size from the features (Beam samples element sizes,
    and pickling a block only to measure it costs as much as moving it)."""

    def encode(self, value: _Block) -> bytes:
        return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)

    def decode(self, encoded: bytes) -> _Block:
        return pickle.loads(encoded)

    def estimate_size(self, value: _Block) -> int:
        return value.features.nbytes

    def is_deterministic(self) -> bool:
        return False


beam.coders.registry.register_coder(_Block, _BlockCoder)


class _PrepareBlocks(beam.DoFn):
    """Reads a block, fails the rows it cannot read, and splits the rest by model and width."""

    def __init__(self, spec: InferenceSpec, layout: Any) -> None:
        self._spec = spec
        self._layout = layout
        self._single = len(spec.models) == 1 and not spec.models[0].keys

    def setup(self) -> None:
        ns = self._spec.metrics_namespace
        self._rows_in = Metrics.counter(ns, "rows_in")
        self._failed = {s: Metrics.counter(ns, f"{s}_failures") for s in ("input", "routing")}

    def process(self, element: Any, timestamp=beam.DoFn.TimestampParam) -> Iterable[Any]:
        for part in self._layout.split(element):
            yield from self._process_block(part, timestamp)

    def _process_block(self, element: Any, timestamp) -> Iterable[Any]:
        try:
            columns = self._layout.read(element)
        except Exception as e:  # noqa: BLE001 - not a block at all: one failure for the element
            self._rows_in.inc()
            self._failed["input"].inc()
            yield beam.pvalue.TaggedOutput(FAILURES_TAG, _failure_row("input", None, e, element, None, None))
            return
        self._rows_in.inc(columns.size)
        for i, error in sorted(columns.bad.items()):
            key = None if columns.keys is None else _value(columns.keys, i)
            yield self._failure("input", error, columns.describe(i), key)
        for positions, matrix in columns.groups:
            route = self._route(columns.keys, positions)
            if route is not None and (route < 0).any():
                for i in positions[route < 0].tolist():
                    key = str(_value(columns.keys, i))
                    yield self._failure("routing", self._unmapped(key), columns.describe(i), key, "UnmappedKey")
                served = route >= 0
                positions, matrix, route = positions[served], matrix[served], route[served]
                if not len(positions):
                    continue
            whole = len(positions) == columns.size  # every row, in order: no copies
            yield _Block(
                columns.keys if whole else _take(columns.keys, positions),
                matrix,
                route,
                columns.passthrough if whole else {n: _take(c, positions) for n, c in columns.passthrough.items()},
                columns.describe,
                positions,
                timestamp,
            )

    def _route(self, keys: Any, positions: np.ndarray) -> Optional[np.ndarray]:
        """The index of each row's model (-1: none), or None when one model serves every key."""
        if self._single:
            return None
        keys = _take(keys, positions)
        if isinstance(keys, np.ndarray):
            unique, inverse = np.unique(keys, return_inverse=True)
            unique = unique.tolist()
        else:
            encoded = keys.dictionary_encode()
            unique = encoded.dictionary.to_pylist()
            inverse = encoded.indices.to_numpy(zero_copy_only=False)
        index = {model.id: m for m, model in enumerate(self._spec.models)}
        served = []
        for key in unique:
            model = self._spec.model_for_key(str(key))
            served.append(-1 if model is None else index[model.id])
        return np.asarray(served, dtype=np.int64)[inverse]

    def _unmapped(self, key: str) -> LookupError:
        mapped = sorted(k for m in self._spec.models for k in m.keys)
        return LookupError(
            f"no model serves key {key!r} and no default model is configured; mapped keys: "
            f"{', '.join(mapped[:20])}{' ...' if len(mapped) > 20 else ''}"
        )

    def _failure(self, stage, error, element_json, key, error_type=None):
        self._failed[stage].inc()
        row = beam.Row(
            stage=stage,
            step=None,
            error_type=error_type or type(error).__name__,
            message=str(error),
            element=element_json,
            key=None if key is None else str(key),
            model_id=None,
        )
        return beam.pvalue.TaggedOutput(FAILURES_TAG, row)


# --- Stage 2: the model on whole matrices, with failure isolation --------------------------------


class _Outcome:
    """A block's result: the outputs of the rows that succeeded, in order, and the failed rows."""

    __slots__ = ("outputs", "failed")

    def __init__(self, outputs: Any, failed: dict[int, _Failed]) -> None:
        self.outputs, self.failed = outputs, failed


def _default_batch_rows(spec: InferenceSpec) -> int:
    """Rows per batch: about DEFAULT_BATCH_ROWS per model call when keys mix in every block;
    four times that when fewer models than keys stay resident, to spread the reloads."""
    count = len(spec.models)
    if count == 1:
        return DEFAULT_BATCH_ROWS
    resident = min(count, spec.max_models_per_worker or count)
    return DEFAULT_BATCH_ROWS * count * (4 if resident < count else 1)


def _rows_of(block: _Block) -> int:
    return len(block.features)


class _BlockHandler(_IsolatingHandler):
    """Runs every step and the model on the concatenated matrix of a batch of blocks.

    Batch sizes count rows. When anything raises, the rows are halved and each half retried,
    so only the rows that fail on their own are reported as failed.
    """

    def __init__(self, spec: InferenceSpec, model, policy: LoadPolicy, where: str) -> None:
        super().__init__(spec, model, policy, where)
        self._pre_specs = [(s.name, *s.resolve(steps.PREPROCESS)) for s in spec.preprocess]
        self._post_specs = [(s.name, *s.resolve(steps.POSTPROCESS)) for s in spec.postprocess]
        # Sizes count rows. Without a size range, batches hold a fixed number of rows, which
        # spares Beam's adaptive batch sizing its per-batch regression (blocks are already big).
        batching = dict(self._batching)
        if "min_batch_size" not in batching and "max_batch_size" not in batching:
            batching["min_batch_size"] = batching["max_batch_size"] = _default_batch_rows(spec)
        self._batching = {**batching, "element_size_fn": _rows_of}

    def _build_steps(self) -> tuple[list, list]:
        return (
            [(n, _batch_function(d, p)) for n, d, p in self._pre_specs],
            [(n, _batch_function(d, p)) for n, d, p in self._post_specs],
        )

    def predict_rows(self, matrix: np.ndarray, model: Any, inference_args: Optional[dict]) -> tuple[Any, dict[int, _Failed]]:
        """Outputs for every row of ``matrix`` (placeholders where a row failed), and the failed rows."""
        self._setup()
        model = self._current_model(model)
        start = time.perf_counter()
        pieces: list[tuple[int, Any]] = []
        failed: dict[int, _Failed] = {}
        self._run_rows(matrix, 0, len(matrix), model, inference_args, pieces, failed)
        self._batch_size.update(len(matrix))
        self._latency.update(int((time.perf_counter() - start) * 1e6))
        self._examples.inc(len(matrix) - len(failed))
        if failed:
            self._failed.inc(len(failed))
        return _assemble(pieces, len(matrix), failed), failed

    def _run_rows(self, matrix, lo, hi, model, inference_args, pieces, failed) -> None:
        try:
            pieces.append((lo, self._call_matrix(matrix[lo:hi], model, inference_args)))
        except Exception as e:  # noqa: BLE001 - every failure is isolated, whatever raised it
            if not isinstance(e, _StageError):
                e = _StageError("inference", None, e)
            if hi - lo == 1:
                failed[lo] = _Failed(e.stage, e.step, e.error)
                return
            self._splits.inc()
            mid = (lo + hi) // 2
            self._run_rows(matrix, lo, mid, model, inference_args, pieces, failed)
            self._run_rows(matrix, mid, hi, model, inference_args, pieces, failed)

    def _call_matrix(self, x: np.ndarray, model: Any, inference_args: Optional[dict]) -> Any:
        count = len(x)
        for name, step in self._pre:
            try:
                x = _numeric_array(_same_length(step(x), count))
            except Exception as e:  # noqa: BLE001
                raise _StageError("preprocess", name, e) from e
        try:
            outputs = self._inner.predict_matrix(x, model, inference_args)
        except Exception as e:  # noqa: BLE001
            raise _StageError("inference", None, e) from e
        for name, step in self._post:
            try:
                outputs = _as_rows(_same_length(step(outputs), count))
            except Exception as e:  # noqa: BLE001
                raise _StageError("postprocess", name, e) from e
        return outputs


class _BlockModels(_AllModels):
    """Every model of the spec behind one Beam handler: blocks are routed inside it.

    As in the row path (``inference._KeyedModels``), the worker's models live in one
    ``_ResidentModels``, loaded on first use, at most ``max_models_per_worker`` at a time. Beam
    still batches, shares the models between threads, and refreshes them: an update is the
    JSON object {model_id: uri} of every model.
    """

    model_handler = _BlockHandler

    def __init__(self, spec: InferenceSpec, policy: LoadPolicy) -> None:
        super().__init__(spec, policy)
        self._ids = [m.id for m in spec.models]

    def run_inference(self, batch: Sequence[_Block], models: _ResidentModels, inference_args: Optional[dict] = None) -> Iterable[PredictionResult]:
        """One model call per model and feature width over the whole batch of blocks."""
        results: list[Any] = [None] * len(batch)
        widths: dict[int, list[int]] = {}
        for i, block in enumerate(batch):
            widths.setdefault(block.features.shape[1], []).append(i)
        for members in widths.values():
            blocks = [batch[i] for i in members]
            for i, outcome in zip(members, self._run_blocks(blocks, models, inference_args)):
                results[i] = PredictionResult(batch[i], outcome)
        return results

    def _run_blocks(self, blocks: list[_Block], models: _ResidentModels, inference_args: Optional[dict]) -> list[_Outcome]:
        matrix = blocks[0].features if len(blocks) == 1 else np.concatenate([b.features for b in blocks])
        size = len(matrix)
        route = None
        if len(self._ids) > 1:
            route = np.concatenate([b.models if b.models is not None else np.zeros(len(b.features), np.int64) for b in blocks])
        pieces, failed = [], {}
        present = self._ids[:1] if route is None else [self._ids[m] for m in np.unique(route).tolist()]
        for model_id in models.resident_first(present):
            rows = None if route is None else np.flatnonzero(route == self._ids.index(model_id))
            outputs, model_failed = self._handlers[model_id].predict_rows(
                matrix if rows is None else matrix[rows], models.get(model_id), inference_args
            )
            pieces.append((rows, outputs))
            failed.update(model_failed if rows is None else {int(rows[r]): f for r, f in model_failed.items()})
        outputs = pieces[0][1] if len(pieces) == 1 else _scatter(pieces, size)
        outcomes, offset = [], 0
        for block in blocks:
            count = len(block.features)
            mine = {r - offset: f for r, f in failed.items() if offset <= r < offset + count}
            block_outputs = outputs[offset : offset + count]
            if mine:
                kept = np.ones(count, bool)
                kept[list(mine)] = False
                block_outputs = block_outputs[kept]
            outcomes.append(_Outcome(block_outputs, mine))
            offset += count
        return outcomes

    def get_num_bytes(self, batch: Sequence[_Block]) -> int:
        return sum(block.features.nbytes for block in batch)


def _batch_function(definition: steps.StepDefinition, params: dict) -> Any:
    """A step over a whole matrix: its batch form, or its per-example form row by row."""
    if definition.batched:
        return definition.build_for_batch(params)
    function = definition.build(params)

    def row_by_row(rows: Any) -> np.ndarray:
        # Refuses a batch whose results would be too big before making any (it is then halved).
        steps.check_allocation(definition, params, rows)
        return _as_rows([function(row) for row in rows])

    return row_by_row


def _as_rows(values: Any) -> np.ndarray:
    """Per-row results as one array (first axis = rows); objects when they are not numbers."""
    if isinstance(values, np.ndarray):
        return values
    array = np.asarray(values) if values and not isinstance(values[0], (str, dict)) else None
    if array is None or array.dtype == object:
        array = np.empty(len(values), dtype=object)
        for i, value in enumerate(values):
            array[i] = value
    return array


def _assemble(pieces: list[tuple[int, Any]], size: int, failed: dict) -> Any:
    """The outputs of all rows in order (failed rows hold placeholders), from the run pieces."""
    if len(pieces) == 1 and not failed:
        return pieces[0][1]
    if not pieces:
        return np.empty(size, dtype=object)
    first = pieces[0][1]
    outputs = np.zeros((size, *first.shape[1:]), dtype=first.dtype)
    for lo, values in pieces:
        outputs[lo : lo + len(values)] = values
    return outputs


def _scatter(pieces: list[tuple[np.ndarray, Any]], size: int) -> Any:
    """Outputs of several models, each for its rows of the batch, as one array in row order."""
    first = pieces[0][1]
    if all(values.shape[1:] == first.shape[1:] for _, values in pieces):
        dtype = np.result_type(*[values.dtype for _, values in pieces])
        outputs = np.zeros((size, *first.shape[1:]), dtype=dtype)
    else:  # e.g. classifiers with different numbers of classes: one object per row
        outputs = np.empty(size, dtype=object)
    for rows, values in pieces:
        if outputs.dtype == object and values.ndim > 1:
            for r, value in zip(rows, values):
                outputs[r] = value
        else:
            outputs[rows] = values
    return outputs


# --- Stage 3: outputs -> output blocks ----------------------------------------------------------


class _FinishBlocks(beam.DoFn):
    """Writes the served rows of each block as an output block; failed rows as failure Rows."""

    def __init__(self, spec: InferenceSpec, layout: Any) -> None:
        self._spec = spec
        self._layout = layout
        self._ids = [m.id for m in spec.models]

    def setup(self) -> None:
        ns = self._spec.metrics_namespace
        self._out = Metrics.counter(ns, "inferences_out")
        self._failed = {s: Metrics.counter(ns, f"{s}_failures") for s in ("preprocess", "inference", "postprocess", "output")}

    def process(self, result: PredictionResult) -> Iterable[Any]:
        block, outcome = result.example, result.inference
        for row, failed in sorted(outcome.failed.items()):
            yield self._failure(failed.stage, failed.step, failed.error, block, row)
        served = np.arange(len(block.features))
        if outcome.failed:
            served = np.delete(served, list(outcome.failed))
        if not len(served):
            return
        whole = len(served) == len(block.features)
        models = block.models if block.models is None or whole else block.models[served]
        for rows, model_id in self._parts(models):
            chosen = served if rows is None else served[rows]
            every = whole and rows is None
            keys = block.keys if every else _take(block.keys, chosen)
            passthrough = block.passthrough if every else {n: _take(c, chosen) for n, c in block.passthrough.items()}
            outputs = outcome.outputs if rows is None else outcome.outputs[rows]
            try:
                out = self._layout.write(keys, outputs, self._spec.inference_kind, model_id, passthrough)
            except Exception as e:  # noqa: BLE001 - outputs of the wrong kind fail their rows
                error = ValueError(f"cannot make the inferences {self._spec.inference_kind}s: {e}")
                for row in chosen.tolist():
                    yield self._failure("output", None, error, block, row)
                continue
            self._out.inc(len(outputs))
            yield window.TimestampedValue(out, block.timestamp)

    def _parts(self, models: Optional[np.ndarray]) -> list[tuple[Optional[np.ndarray], Any]]:
        """(rows of the served outputs, model_id) per output block: one block when one model
        served them all or the layout takes a model_id per row, else one block per model."""
        if models is None:
            return [(None, self._ids[0])]
        present = np.unique(models)
        if len(present) == 1:
            return [(None, self._ids[int(present[0])])]
        if not self._layout.one_model_per_block:
            return [(None, np.asarray(self._ids, dtype=object)[models])]
        return [(np.flatnonzero(models == m), self._ids[int(m)]) for m in present]

    def _failure(self, stage, step, error, block: _Block, row: int):
        self._failed[stage].inc()
        failure = beam.Row(
            stage=stage,
            step=step,
            error_type=type(error).__name__,
            message=str(error),
            element=block.describe(int(block.positions[row])),
            key=str(_value(block.keys, row)),
            model_id=self._ids[block.model_index(row)],
        )
        return beam.pvalue.TaggedOutput(FAILURES_TAG, window.TimestampedValue(failure, block.timestamp))


__all__ = ["BlockInference", "WIRE_FIELDS"]
