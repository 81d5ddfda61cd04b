"""Layouts: how the elements of a PCollection become blocks of rows, and outputs become elements.

The engine (engine.py) sees only ``Block``s: a matrix of features with the keys, passthrough
values and timestamps of its rows. A layout reads its elements into ``Columns`` and writes the
served rows back:

- ``RowLayout``: schema'd Rows, gathered from a bundle (the ``Inference`` composite); one output
  Row per served row, with its own timestamp;
- ``ArrowLayout``: ``pyarrow.RecordBatch`` or ``Table`` elements, RecordBatches out;
- ``WireLayout``: packed block Rows from the Java wrapper, packed block Rows out:
    in:  key ARRAY<INT64|STRING>, features BYTES (float64 little-endian, row-major),
         feature_count INT32, then each passthrough field as ARRAY<T>
    out: key, inference (BYTES: float64 vectors/numbers or int64 integers; ARRAY<STRING>
         labels), inference_width INT32, model_id STRING, then the passthrough fields.

A value that cannot be the declared kind of inference fails its own row at stage ``output``.
"""

from __future__ import annotations

import numbers
import pickle
import typing
from bisect import bisect_right
from itertools import accumulate, chain, repeat
from operator import itemgetter
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

import apache_beam as beam
import numpy as np
from apache_beam.typehints.row_type import RowTypeConstraint
from apache_beam.utils.timestamp import Timestamp
from apache_beam.utils.windowed_value import WindowedValue

from inferbridge import steps
from inferbridge.engine import Failed, describe_element
from inferbridge.spec import InferenceSpec, input_fields

WIRE_FIELDS = ("key", "features", "feature_count")
_WIRE_INFERENCE = {
    steps.VECTOR: (bytes, "<f8"),
    steps.NUMBER: (bytes, "<f8"),
    steps.INTEGER: (bytes, "<i8"),
    steps.LABEL: (typing.Sequence[str], None),
}
_ARROW_KINDS = (steps.VECTOR, steps.NUMBER, steps.INTEGER, steps.LABEL, steps.MAP)

# Per kind of inference value: the Beam type of an output Row's ``inference`` field, and the
# conversion of one value to it.
INFERENCE_FIELDS: dict[str, tuple[Any, Callable[[Any], Any]]] = {
    steps.VECTOR: (typing.Sequence[float], lambda v: [float(x) for x in np.ravel(v)]),
    steps.NUMBER: (float, float),
    steps.INTEGER: (int, int),
    steps.LABEL: (str, lambda v: v if isinstance(v, str) else str(v)),
    steps.MAP: (typing.Mapping[str, float], lambda v: {str(k): float(x) for k, x in dict(v).items()}),
    steps.ANY: (typing.Any, lambda v: v),
}


# --- Blocks and columns --------------------------------------------------------------------------


class Columns:
    """Rows read from elements, as columns: keys, the feature matrix per shape, passthrough values.

    ``groups`` are (row positions, float64 matrix) pairs, one per feature shape; ``bad`` are the
    rows that cannot be read, with why. Columns are pyarrow arrays (Arrow layout) or numpy
    arrays; ``take`` and ``value`` hide which. ``timestamps`` are each row's own, in
    microseconds, where the rows of a block have different ones (else None). ``arrays``: the
    rows gave their features as numpy arrays (then so are their output Rows' examples).
    """

    __slots__ = ("size", "keys", "groups", "passthrough", "bad", "describe", "timestamps", "arrays")

    def __init__(self, size, keys, groups, passthrough, bad, describe, timestamps=None, arrays=False) -> None:
        self.size, self.keys, self.groups, self.passthrough, self.bad, self.describe = (
            size, keys, groups, passthrough, bad, describe
        )
        self.timestamps, self.arrays = timestamps, arrays


class Block:
    """Rows of one window on their way through the models: columns, the feature matrix, the
    index (in spec.models) of the model that serves each row (None: the only model), and once
    the models ran, their ``engine.Outcome``. ``arrays`` as in ``Columns``."""

    __slots__ = (
        "keys", "features", "models", "passthrough", "describe", "positions", "timestamp", "timestamps", "arrays", "outcome"
    )

    def __init__(self, keys, features, models, passthrough, describe, positions, timestamp, timestamps=None, arrays=False) -> None:
        self.keys, self.features, self.models, self.passthrough = keys, features, models, passthrough
        self.describe, self.positions, self.timestamp, self.timestamps = describe, positions, timestamp, timestamps
        self.arrays = arrays
        self.outcome = None

    def model_index(self, row: int) -> int:
        return 0 if self.models is None else int(self.models[row])

    def timestamp_of(self, row: int) -> Timestamp:
        return self.timestamp if self.timestamps is None else Timestamp(micros=int(self.timestamps[row]))


class _BlockCoder(beam.coders.Coder):
    """Pickles blocks; estimates their size from the features (Beam samples element sizes,
    and pickling a block only to measure it costs as much as moving it)."""

    def encode(self, value: Block) -> bytes:
        return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)

    def decode(self, encoded: bytes) -> Block:
        return pickle.loads(encoded)

    def estimate_size(self, value: Block) -> int:
        return value.features.nbytes

    def is_deterministic(self) -> bool:
        return False


beam.coders.registry.register_coder(Block, _BlockCoder)


def take(column: Any, positions: Any) -> Any:
    if isinstance(column, np.ndarray):
        return column[positions]
    return column.take(positions)


def value(column: Any, i: int) -> Any:
    if isinstance(column, np.ndarray):
        item = column[i]
        return item.item() if isinstance(item, np.generic) else item
    return column[i].as_py()


def _objects(values: Sequence[Any]) -> np.ndarray:
    """One object per row (numpy would make nested lists a matrix)."""
    return np.fromiter(values, dtype=object, count=len(values))


def _floats(values: list) -> np.ndarray:
    """``np.asarray(values, dtype=np.float64)``; lists of one length are read in one pass over
    their items (numpy's own reading goes over them twice: for the shape, then the values)."""
    if set(map(type, values)) == {list} and len(widths := set(map(len, values))) == 1:
        width = widths.pop()
        try:
            return np.fromiter(chain.from_iterable(values), np.float64, len(values) * width).reshape(len(values), width)
        except (TypeError, ValueError):  # items that are sequences themselves, or no numbers
            pass
    return np.asarray(values, dtype=np.float64)


# --- Rows -----------------------------------------------------------------------------------------


class _Part:
    """Rows gathered for a block, by field: the values of each field of beam.Rows that have the
    same fields (the common case) or of NamedTuples of one type, else the rows as they came.

    Keeping the values rather than the Rows lets each Row and its dict go at once: rows wait to
    fill a block, then in Beam's batching until the next block comes, and the more objects live
    that long, the more often the garbage collector runs full collections, whose cost then
    dominates. The values are the rows' own objects: rows are read, and described in failure
    Rows, exactly as they came.
    """

    def __init__(self, rows: list) -> None:
        self.size = len(rows)
        self._fields: Optional[dict[str, list]] = None
        self._rows = rows
        kinds = set(map(type, rows))
        if kinds == {beam.Row}:
            fields = list(map(vars, rows))
            names = set(map(tuple, fields))  # a dict's tuple: its keys, in order
            if len(names) == 1:
                self._fields = {name: list(map(itemgetter(name), fields)) for name in names.pop()}
                self._rows = []
        elif len(kinds) == 1 and _is_named_tuple(kind := kinds.pop()):
            # NamedTuples (what Beam's RowCoder decodes, e.g. Rows from Java): one transpose.
            self._fields = dict(zip(kind._fields, map(list, zip(*rows))))
            self._rows = []

    def values(self, name: str) -> list:
        """A field's value in each row (KeyError or AttributeError: a row without the field)."""
        if self._fields is None:
            return [getattr(row, name) for row in self._rows]
        return self._fields[name]

    def rows(self) -> list:
        """The rows: beam.Rows made again from the values of their fields, if those were kept
        (not their own type: a part is pickled when a runner moves a block, and the types
        Beam makes for schemas are no module's attributes)."""
        if self._fields is None:
            return self._rows
        return [beam.Row(**dict(zip(self._fields, values))) for values in zip(*self._fields.values())]

    def describe(self, i: int) -> str:
        if self._fields is None:
            return describe_element(self._rows[i])
        return describe_element({name: column[i] for name, column in self._fields.items()})


class _Gathered:
    """The rows of a block, from their parts: a field's values, the rows, and (called with a
    row's position) the row described for its failure Row."""

    def __init__(self, parts: list[_Part]) -> None:
        self._parts = parts
        self._ends = list(accumulate(part.size for part in parts))

    def values(self, name: str) -> list:
        return list(chain.from_iterable(part.values(name) for part in self._parts))

    def rows(self) -> list:
        return list(chain.from_iterable(part.rows() for part in self._parts))

    def __call__(self, i: int) -> str:
        k = bisect_right(self._ends, i)
        return self._parts[k].describe(i - (self._ends[k - 1] if k else 0))


class RowLayout:
    """Rows in, gathered from a bundle into blocks; one output Row per served row.

    Keys are emitted as strings when the input's key type is (or is unknown), else as given.
    Output Rows carry the model input as ``example`` and get their input row's timestamp back.
    """

    gathers = True
    keeps_inputs = True
    one_model_per_block = False
    output_type = None
    # Rows gathered for a block are made a part (see _Part) every this many: few enough that
    # the garbage collector (by default every 700 new objects) seldom runs while they are Rows.
    part_rows = 128

    def __init__(self, spec: InferenceSpec, convert_key: bool) -> None:
        self._spec = spec
        self._convert_key = convert_key

    def gather(self, rows: list) -> _Part:
        return _Part(rows)

    def read(self, items: list) -> Columns:
        """Reads a block from its gathered rows: the parts ``gather`` made, then the rows since."""
        parts = [item for item in items if type(item) is _Part]
        if len(parts) < len(items):
            parts.append(_Part(items[len(parts) :]))
        gathered = _Gathered(parts)
        try:
            columns = self._read_all(gathered)
        except Exception:  # noqa: BLE001 - some row is bad: read each, to say which and why
            columns = None
        return columns or self._read_each(gathered.rows(), gathered)

    def _read_all(self, gathered: _Gathered) -> Optional[Columns]:
        """Every row at once, for the common case: no nulls, numbers of one shape."""
        spec = self._spec
        keys = gathered.values(spec.key_field)
        if None in keys:
            return None
        given = [gathered.values(name) for name in spec.feature_fields]
        matrices = [_floats(values) for values in given]
        if len(matrices) == 1:
            matrix = matrices[0] if matrices[0].ndim > 1 else matrices[0].reshape(len(keys), 1)
        else:
            matrix = np.hstack([m.reshape(len(keys), -1) for m in matrices])
        # NaN may stand for a null inside an array, and an empty array has nothing to predict on.
        if matrix.size == 0 or matrix.shape[1] == 0 or np.isnan(matrix).any():
            return None
        passthrough = {name: _objects(gathered.values(name)) for name in spec.passthrough_fields}
        arrays = len(given) == 1 and set(map(type, given[0])) == {np.ndarray}
        return Columns(len(keys), self._keys(keys), [(np.arange(len(keys)), matrix)], passthrough, {}, gathered, arrays=arrays)

    def _read_each(self, rows: list, describe: Callable[[int], str]) -> Columns:
        spec = self._spec
        keys: list[Any] = [None] * len(rows)
        passthrough: dict[str, list] = {name: [None] * len(rows) for name in spec.passthrough_fields}
        bad: dict[int, BaseException] = {}
        shapes: dict[tuple, list[tuple[int, np.ndarray]]] = {}
        one_field = spec.feature_fields[0] if len(spec.feature_fields) == 1 else None
        arrays = one_field is not None
        for i, row in enumerate(rows):
            try:
                if _not_a_row(row):
                    raise TypeError(
                        f"the element is a {type(row).__name__}, not a schema'd Row with key_field "
                        f"{spec.key_field!r} and feature_fields {list(spec.feature_fields)}; Inference "
                        f"reads Rows: {ROWS_HINT}"
                    )
                key = getattr(row, spec.key_field)
                if key is None:
                    raise ValueError(f"key_field {spec.key_field!r} is null")
                keys[i] = key
                features = _features(row, spec.feature_fields)
                for name in spec.passthrough_fields:
                    passthrough[name][i] = getattr(row, name)
            except Exception as e:  # noqa: BLE001 - any bad row becomes a failure Row
                bad[i] = e
                continue
            arrays = arrays and type(getattr(row, one_field)) is np.ndarray
            shapes.setdefault(features.shape, []).append((i, features))
        groups = [
            (np.array([i for i, _ in members]), np.stack([x for _, x in members])) for members in shapes.values()
        ]
        passthrough_columns = {n: _objects(v) for n, v in passthrough.items()}
        return Columns(len(rows), self._keys(keys), groups, passthrough_columns, bad, describe, arrays=arrays)

    def _keys(self, keys: list) -> np.ndarray:
        if self._convert_key:
            keys = [k if isinstance(k, str) or k is None else str(k) for k in keys]
        return _objects(keys)

    def write(self, block: Block, served: np.ndarray, outputs: Any, inputs: Any, ids: Sequence[str], kind: str, windows: tuple):
        """(the WindowedValue of each output Row, rows written, {row: Failed} for wrong values).

        Output Rows are made one at a time, as the runner takes them: each can be released
        before the next is made. (A block's worth of live Rows would outlive the young
        generations of Python's garbage collector, and full collections would then dominate.)
        """
        values, wrong = _field_values(kind, outputs)
        bad = {int(served[j]): Failed("output", None, error) for j, error in wrong.items()}
        rows = self._rows(block, served, values, inputs, ids, windows, wrong)
        return rows, len(served) - len(wrong), bad

    @staticmethod
    def _rows(block: Block, served: np.ndarray, values: Any, inputs: Any, ids: Sequence[str], windows: tuple, wrong: dict):
        count = len(served)
        examples = inputs.reshape(count, -1).astype(np.float64, copy=False)
        if not block.arrays:
            examples = map(np.ndarray.tolist, examples)
        keys = take(block.keys, served).tolist()
        model_ids = repeat(ids[0]) if block.models is None else [ids[m] for m in block.models[served].tolist()]
        if isinstance(values, np.ndarray):
            values = map(np.ndarray.tolist, values)
        names = list(block.passthrough)
        passthrough = zip(*(take(column, served).tolist() for column in block.passthrough.values())) if names else repeat(())
        # One timestamp for the block: copies of one WindowedValue spare parsing it per row.
        with_value = WindowedValue(None, block.timestamp, windows).with_value
        micros = repeat(None) if block.timestamps is None else block.timestamps[served].tolist()
        new_row, Row = object.__new__, beam.Row
        rows = zip(range(count), keys, examples, values, model_ids, passthrough, micros)
        for j, key, example, value, model_id, extra, at in rows:
            if j in wrong:
                continue
            # What beam.Row(**fields) does, in half the time: a Row is its __dict__.
            row = new_row(Row)
            row.__dict__ = {"key": key, "example": example, "inference": value, "model_id": model_id}
            if names:
                row.__dict__.update(zip(names, extra))
            yield with_value(row) if at is None else WindowedValue(row, Timestamp(micros=at), windows)


# How to give the ``Inference`` composite Rows, for its errors about elements that are not.
ROWS_HINT = (
    "make Rows with beam.Map(lambda d: beam.Row(**d)) (from dicts), or use a typing.NamedTuple "
    "registered with beam.coders.registry.register_coder(YourRow, beam.coders.RowCoder)"
)


def _is_named_tuple(kind: type) -> bool:
    return issubclass(kind, tuple) and isinstance(getattr(kind, "_fields", None), tuple)


def _not_a_row(element: Any) -> bool:
    """Whether an element is surely no Row: a mapping, a plain tuple, a list, a string, a
    number, a numpy array or an Arrow batch (fields are read as attributes of the others)."""
    if element is None or isinstance(element, (Mapping, str, bytes, bytearray, list, set, frozenset, numbers.Number, np.ndarray)):
        return True
    if isinstance(element, tuple):
        return not hasattr(element, "_fields")
    return type(element).__module__.startswith("pyarrow")


# The input contract's messages, the same on every layout and in the Java wrapper's PackBlocks.
def _empty(name: str) -> ValueError:
    return ValueError(f"feature field {name!r} is empty; allowed: at least one number")


def _null_inside(name: str, position: str) -> ValueError:
    return ValueError(f"feature field {name!r} holds a null at position {position}; allowed: numbers")


def _features(row: Any, fields: Sequence[str]) -> np.ndarray:
    """The features of ``row``: one array field as is, or several fields concatenated."""
    values = []
    for name in fields:
        value = getattr(row, name)
        if value is None:
            raise ValueError(f"feature field {name!r} is null")
        try:
            array = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"feature field {name!r} is not numeric: {value!r}") from None
        if array.size == 0:
            raise _empty(name)
        if np.isnan(array).any():
            objects = np.asarray(value, dtype=object)
            nulls = np.argwhere(objects == None)  # noqa: E711 - elementwise, not identity
            if len(nulls):
                where = nulls[0]
                raise _null_inside(name, str(where[0]) if len(where) == 1 else "".join(f"[{i}]" for i in where))
        values.append(array)
    if len(values) == 1:
        return values[0] if values[0].ndim else values[0].reshape(1)
    return np.concatenate([np.ravel(v) for v in values])


def _field_values(kind: str, outputs: Any) -> tuple[list, dict[int, BaseException]]:
    """Output Row ``inference`` values, and the rows whose value cannot be ``kind``, with why."""
    count = len(outputs)
    numeric = isinstance(outputs, np.ndarray) and outputs.dtype.kind in "biuf"
    if numeric and kind == steps.VECTOR:  # an array: each row's list is made when its Row is
        return outputs.reshape(count, -1).astype(np.float64, copy=False), {}
    if numeric and kind == steps.NUMBER and outputs.ndim == 1:
        return outputs.astype(np.float64, copy=False).tolist(), {}
    if numeric and kind == steps.INTEGER and outputs.ndim == 1 and outputs.dtype.kind in "biu":
        return outputs.astype(np.int64, copy=False).tolist(), {}
    convert = INFERENCE_FIELDS[kind][1]
    values: list[Any] = [None] * count
    wrong: dict[int, BaseException] = {}
    for i in range(count):
        try:
            values[i] = convert(outputs[i])
        except Exception as e:  # noqa: BLE001
            wrong[i] = ValueError(f"cannot make the inference {outputs[i]!r} a {kind}: {e}")
    return values, wrong


def _check_values(kind: str, outputs: Any) -> dict[int, BaseException]:
    """The rows whose value cannot be ``kind`` in a block (per-row, after a block write failed)."""
    return _field_values(kind, outputs)[1]


# --- Arrow record batches ------------------------------------------------------------------------


class _ArrowRows:
    """Describes a row of a RecordBatch, for its failure Row: every column, as JSON."""

    def __init__(self, batch: Any) -> None:
        self._batch = batch

    def __call__(self, i: int) -> str:
        batch = self._batch
        return describe_element(beam.Row(**{n: batch.column(n)[i].as_py() for n in batch.schema.names}))


class ArrowLayout:
    """pyarrow RecordBatches (or Tables) in, RecordBatches out."""

    gathers = False
    keeps_inputs = False
    output_type = None
    one_model_per_block = False

    def __init__(self, spec: InferenceSpec) -> None:
        self._spec = spec

    def split(self, element: Any) -> Iterable[Any]:
        import pyarrow as pa

        if isinstance(element, pa.Table):
            return element.to_batches()
        return [element]

    def read(self, batch: Any) -> Columns:
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
            return Columns(size, keys, [], passthrough, {i: error for i in range(size)}, describe)
        if not (pa.types.is_integer(keys.type) or pa.types.is_string(keys.type) or pa.types.is_large_string(keys.type)):
            error = ValueError(f"key_field {spec.key_field!r} has Arrow type {keys.type}; allowed: a string or integer column")
            return Columns(size, keys, [], passthrough, {i: error for i in range(size)}, describe)
        for i in _null_positions(keys):
            bad[i] = ValueError(f"key_field {spec.key_field!r} is null")
        try:
            groups = self._features(batch, bad)
        except ValueError as e:  # the layout of the feature columns, the same for every row
            return Columns(size, keys, [], passthrough, {i: e for i in range(size)}, describe)
        return Columns(size, keys, groups, passthrough, bad, describe)

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
        name = spec.feature_fields[0]
        if pa.types.is_fixed_size_list(column.type) and not column.null_count and not column.values.null_count:
            width = column.type.list_size
            if width == 0:
                raise _empty(name)
            flat = column.flatten().to_numpy(zero_copy_only=False)
            return self._without(bad, [(np.arange(batch.num_rows), flat.reshape(batch.num_rows, width).astype(np.float64, copy=False))])
        lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
        valid = ~np.isnan(lengths) if lengths.dtype.kind == "f" else np.ones(len(lengths), bool)
        positions = np.flatnonzero(valid)
        lengths = lengths[valid].astype(np.int64)
        values = column.flatten()
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        if values.null_count:
            holes = np.flatnonzero(values.is_null().to_numpy(zero_copy_only=False))
            owners = np.searchsorted(starts, holes, side="right") - 1
            for hole, owner in zip(holes.tolist(), owners.tolist()):
                bad.setdefault(
                    int(positions[owner]),
                    _null_inside(name, str(hole - int(starts[owner]))),
                )
        for row in positions[lengths == 0].tolist():
            bad.setdefault(row, _empty(name))
        flat = values.to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
        if len(positions) and (lengths == lengths[0]).all():
            return self._without(bad, [(positions, flat.reshape(len(positions), int(lengths[0])))])
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

    def write(self, block: Block, served: np.ndarray, outputs: Any, inputs: Any, ids: Sequence[str], kind: str, windows: tuple):
        return _write_blocks(self, block, served, outputs, ids, kind, windows)

    def write_one(self, keys: Any, inference: np.ndarray, kind: str, model_id: Any, passthrough: dict) -> Any:
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


# --- Packed blocks from the Java wrapper ----------------------------------------------------------


class _PackedRows:
    """Describes a row of a packed block: key, features and passthrough fields, as JSON."""

    def __init__(self, key_field: str, keys: Any, feature_name: str, matrix: Optional[np.ndarray], passthrough: dict) -> None:
        self._key_field, self._keys, self._feature_name = key_field, keys, feature_name
        self._matrix, self._passthrough = matrix, passthrough

    def __call__(self, i: int) -> str:
        values = {self._key_field: value(self._keys, i)}
        if self._matrix is not None:
            values[self._feature_name] = self._matrix[i].tolist()
        values.update({name: value(column, i) for name, column in self._passthrough.items()})
        return describe_element(beam.Row(**values))


class WireLayout:
    """Packed block Rows from the Java wrapper in, packed block Rows out."""

    gathers = False
    keeps_inputs = False
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

    def read(self, block: Any) -> Columns:
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
            return Columns(size, keys, [], passthrough, {i: error for i in range(size)}, describe)
        matrix = np.frombuffer(data, dtype="<f8").reshape(size, width)
        describe = _PackedRows(spec.key_field, keys, self._feature_name, matrix, passthrough)
        return Columns(size, keys, [(np.arange(size), matrix)], passthrough, {}, describe)

    def write(self, block: Block, served: np.ndarray, outputs: Any, inputs: Any, ids: Sequence[str], kind: str, windows: tuple):
        return _write_blocks(self, block, served, outputs, ids, kind, windows)

    def write_one(self, keys: Any, inference: np.ndarray, kind: str, model_id: str, passthrough: dict) -> beam.Row:
        dtype = _WIRE_INFERENCE[kind][1]
        if dtype is None:
            values, width = [v if isinstance(v, str) else str(v) for v in inference], 1
        else:
            values = np.ascontiguousarray(inference, dtype=dtype).tobytes()
            width = inference.shape[1] if inference.ndim == 2 else 1
        return beam.Row(
            key=keys.tolist(),
            inference=values,
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
    for i, item in enumerate(values):
        column[i] = item
    return column


def _write_blocks(layout: Any, block: Block, served: np.ndarray, outputs: Any, ids: Sequence[str], kind: str, windows: tuple):
    """The served rows of ``block`` as output blocks: one block when one model served them all
    or the layout takes a model_id per row, else one per model. Rows whose value cannot be
    ``kind`` fail alone; the others are written."""
    elements, written, bad = [], 0, {}
    whole = len(served) == len(block.features)
    models = block.models if block.models is None or whole else block.models[served]
    for rows, model_id in _parts(models, ids, layout.one_model_per_block):
        chosen = served if rows is None else served[rows]
        values = outputs if rows is None else outputs[rows]
        every = whole and rows is None
        wrong = _check_values(kind, values) if values.dtype == object else {}
        if wrong:
            keep = np.ones(len(chosen), bool)
            keep[list(wrong)] = False
            for j, error in wrong.items():
                bad[int(chosen[j])] = Failed("output", None, error)
            chosen, values, every = chosen[keep], values[keep], False
            if isinstance(model_id, np.ndarray):
                model_id = model_id[keep]
            if not len(chosen):
                continue
        keys = block.keys if every else take(block.keys, chosen)
        passthrough = block.passthrough if every else {n: take(c, chosen) for n, c in block.passthrough.items()}
        try:
            out = layout.write_one(keys, values, kind, model_id, passthrough)
        except Exception as e:  # noqa: BLE001 - outputs no row alone explains: they fail together
            error = ValueError(f"cannot make the inferences {kind}s: {e}")
            bad.update({int(row): Failed("output", None, error) for row in chosen.tolist()})
            continue
        written += len(values)
        elements.append(WindowedValue(out, block.timestamp, windows))
    return elements, written, bad


def _parts(models: Optional[np.ndarray], ids: Sequence[str], one_model_per_block: bool) -> list[tuple[Optional[np.ndarray], Any]]:
    """(rows of the served outputs, model_id) per output block."""
    if models is None:
        return [(None, ids[0])]
    present = np.unique(models)
    if len(present) == 1:
        return [(None, ids[int(present[0])])]
    if not one_model_per_block:
        return [(None, np.asarray(ids, dtype=object)[models])]
    return [(np.flatnonzero(models == m), ids[int(m)]) for m in present]


def layout_for(spec: InferenceSpec, element_type: Any) -> Any:
    """The block layout of a PCollection: Arrow batches, or packed block Rows from Java."""
    fields = input_fields(element_type)
    if fields is None:
        if spec.inference_kind not in _ARROW_KINDS:
            raise ValueError(
                f"the inference is a {spec.inference_kind} after the postprocess steps; blocks "
                f"need a declared kind ({', '.join(_ARROW_KINDS)}): give the last step's output kind"
            )
        return ArrowLayout(spec)
    missing = [name for name in (*WIRE_FIELDS, *spec.passthrough_fields) if name not in fields]
    if missing:
        raise ValueError(
            f"BlockInference got Rows without the packed block field {missing[0]!r}; it takes "
            "pyarrow RecordBatches, or packed block Rows (key, features, feature_count, "
            "passthrough fields) as the Java wrapper's withBlockSize sends them"
        )
    key = fields["key"]
    key_items = (typing.get_args(key) or (getattr(key, "inner_type", None),))[0]
    if isinstance(key_items, type) and issubclass(key_items, (int, np.integer)) and key_items is not bool:
        spec.check_integer_keys()
    return WireLayout(spec, fields)
