"""The ``Inference`` composite: input Rows -> preprocess -> Beam RunInference -> postprocess.

Every input row leaves as exactly one output: an inference Row, or a failure Row naming the
stage that failed (input, routing, preprocess, inference, postprocess, output) and why.
"""

from __future__ import annotations

import logging
import typing
from typing import Any, Iterable, NamedTuple, Optional, Sequence

import apache_beam as beam
import numpy as np
from apache_beam.coders import RowCoder
from apache_beam.metrics import Metrics
from apache_beam.portability.api import external_transforms_pb2
from apache_beam.transforms.external import NamedTupleBasedPayloadBuilder
from apache_beam.transforms.window import FixedWindows, GlobalWindows, Sessions
from apache_beam.typehints.row_type import RowTypeConstraint
from apache_beam.utils.timestamp import Timestamp
from apache_beam.utils.windowed_value import WindowedValue

from inferbridge import model_files, steps
from inferbridge.frameworks import pytorch
from inferbridge.beam_ml import ModelHandler, RunInference
from inferbridge.bounds import shorten
from inferbridge.engine import (
    FAILURE_ROW,
    FAILURES_TAG,
    BlockModels,
    Failed,
    batch_function,
    default_batch_rows,
    describe_element,
    failure_row,
    numeric_array,
    unmapped_key,
)
from inferbridge.layouts import INFERENCE_FIELDS, ROWS_HINT, Block, Columns, RowLayout, take, value
from inferbridge.model_slots import model_metadata
from inferbridge.policy import LoadPolicy, local_path
from inferbridge.spec import (
    OPTIONS,
    RUN_INFERENCE_URN,
    InferenceSpec,
    Model,
    StepLike,
    input_fields,
    require_input_fields,
    unknown_keyword,
)

_LOGGER = logging.getLogger("inferbridge.inference")

# Input tags when the composite gets model updates as a second input (cross-language).
ROWS_TAG = "rows"
MODEL_UPDATES_TAG = "model_updates"
_INTEGER_TYPES = (int, np.int64, np.int32, np.int16, np.int8)
_KEY_TYPES = (str, *_INTEGER_TYPES)
_NUMBER_TYPES = (*_INTEGER_TYPES, float, np.float32, np.float64)
_NON_NUMERIC_TYPES = (str, bytes, bool)

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
            ("inference", INFERENCE_FIELDS[spec.inference_kind][0]),
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
    to last after it). ``model_updates`` is a PCollection of Rows ``(model_id, uri)``, Beam's
    ``ModelMetadata`` (what ``WatchFilePattern`` emits) or ``(model_id, ModelMetadata or uri)``
    pairs: each replaces a model, in streaming pipelines, without a restart. ``policy`` decides
    which model files may be loaded (default: ``LoadPolicy.from_env()``). ``options`` are the
    other ``InferenceSpec`` fields: batching, ``variable_length``, ``max_models_per_worker``,
    resource hints, ``metrics_namespace``.
    """

    urn = RUN_INFERENCE_URN

    def __init__(
        self,
        models: Model | Sequence[Model],
        *,
        key_field: str = None,  # type: ignore[assignment] - required: _check_arguments says so
        feature_fields: str | Sequence[str] = None,  # type: ignore[assignment] - likewise
        preprocess: Sequence[StepLike] = (),
        postprocess: Sequence[StepLike] = (),
        passthrough_fields: Sequence[str] = (),
        model_updates: Optional[beam.PCollection] = None,
        policy: Optional[LoadPolicy] = None,
        **options: Any,
    ) -> None:
        super().__init__()
        _check_arguments(type(self).__name__, options, model_updates, policy)
        for keyword, given, what in (
            ("key_field", key_field, "key field"), ("feature_fields", feature_fields, "feature field (or a list of them)")
        ):
            if given is None:
                raise TypeError(f"{type(self).__name__}() needs {keyword}=..., the name of the input's {what}")
        self._spec = InferenceSpec(
            key_field=key_field,
            feature_fields=feature_fields,
            models=models,
            preprocess=tuple(preprocess),
            postprocess=tuple(postprocess),
            passthrough_fields=passthrough_fields,
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
        elements, updates = self._split_inputs(inputs)
        layout, output_type = self._layout(elements.element_type)
        policy = self._policy or _load_policy or LoadPolicy.from_env()
        # Building the handler checks each model against the policy, before its file is looked at.
        handler = BlockModels(spec, policy, keep_inputs=layout.keeps_inputs, bounded=elements.is_bounded)
        for i, model in enumerate(spec.models):
            if model.has_file:
                _check_model_exists(f"models[{i}]", model, policy)
        shape = _known_example_shape(spec, elements.element_type)
        if shape is not None:
            handler.check_example_shape(shape, f"feature_fields {list(spec.feature_fields)}")

        # Rows that may be in several windows are prepared once per window (see _PrepareEachWindow).
        prepare = _Prepare if type(elements.windowing.windowfn) in _ONE_WINDOW_FNS else _PrepareEachWindow
        prepared = elements | "Prepare" >> beam.ParDo(prepare(spec, layout)).with_output_types(
            Block
        ).with_outputs(FAILURES_TAG, main="blocks")
        run = run_inference(spec, handler, model_metadata(spec, updates)).with_output_types(Block)
        finish = beam.ParDo(_Finish(spec, layout))
        if output_type is not None:
            finish = finish.with_output_types(output_type)
        finished = (
            prepared.blocks
            | "RunInference" >> run
            | "Finish" >> finish.with_outputs(FAILURES_TAG, main="inferences")
        )
        inferences = finished.inferences
        failures = (
            (prepared[FAILURES_TAG], finished[FAILURES_TAG]) | "Failures" >> beam.Flatten()
        ) | "TypeFailures" >> beam.Map(lambda r: r).with_output_types(FAILURE_ROW)
        return InferenceResult(inferences, failures)

    def _layout(self, element_type: Any) -> tuple[Any, Any]:
        """How elements become blocks, and the type of the output elements."""
        _require_rows(self._spec, element_type)
        key_type, passthrough = _check_input_schema(self._spec, element_type)
        layout = RowLayout(self._spec, convert_key=key_type is str)
        return layout, output_row_type(self._spec, key_type, passthrough)

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
        if self._spec.python_only or self._model_updates is not None or self._policy is not None:
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
    """Beam's RunInference for ``handler`` with its metrics namespace and the spec's resource hints."""
    run = RunInference(handler, metrics_namespace=handler.get_metrics_namespace(), model_metadata_pcoll=metadata)
    hints = {k: v for k, v in (("min_ram", spec.min_ram), ("accelerator", spec.accelerator)) if v}
    return run.with_resource_hints(**hints) if hints else run


# --- Stage 1: elements -> blocks of rows, by model and shape --------------------------------------

# Window functions that put each element in exactly one window (not their subclasses: those may not).
_ONE_WINDOW_FNS = (GlobalWindows, FixedWindows, Sessions)


class _Prepare(beam.DoFn):
    """Reads elements into blocks (gathering Rows of a bundle, per window), fails the rows it
    cannot read or route, and splits the rest by feature shape. With ``variable_length="pad"``
    the preprocess steps run here, per row, and the rows are padded after them.

    Only for elements in one window each (see ``_PrepareEachWindow``): blocks and failures are
    in the windows of the element being processed."""

    def __init__(self, spec: InferenceSpec, layout: Any) -> None:
        self._spec = spec
        self._layout = layout
        self._single = len(spec.models) == 1 and not spec.models[0].keys
        self._index = {m.id: i for i, m in enumerate(spec.models)}
        self._block_rows = spec.max_batch_size or default_batch_rows(spec)
        self._part_rows = layout.part_rows if layout.gathers else None
        self._pads = spec.variable_length == "pad"
        self._pad_steps = [(s.name, *s.resolve(steps.PREPROCESS)) for s in spec.preprocess] if self._pads else []

    def setup(self) -> None:
        ns = self._spec.metrics_namespace
        self._rows_in = Metrics.counter(ns, "rows_in")
        self._failed = {s: Metrics.counter(ns, f"{s}_failures") for s in ("input", "routing", "preprocess")}
        self._steps = [(name, batch_function(d, p)) for name, d, p in self._pad_steps]
        self._routes: dict[Any, int] = {}

    def start_bundle(self) -> None:
        for counter in (self._rows_in, *self._failed.values()):
            counter.inc(0)  # reported as 0 until it counts
        # Rows (in parts the layout makes of them, then as they came) and their timestamps
        # (microseconds) per window, until a block is full.
        self._pending: dict[tuple, tuple[list, list]] = {}
        self._windows: Optional[tuple] = None
        self._gathering: Optional[tuple[list, list]] = None  # the pending rows of self._windows

    def process(self, element: Any, windowed=beam.DoFn.WindowedValueParam) -> Iterable[Any]:
        # The whole WindowedValue, not TimestampParam/WindowParam: Beam would rebuild the
        # arguments of every call for those. Called once per row, it returns rather than
        # yields: that spares Beam a generator per row.
        if not self._layout.gathers:
            return self._split(element, windowed)
        windows = windowed.windows
        if windows is not self._windows:  # most rows share the windows of the one before
            self._gathering = self._pending.setdefault(tuple(windows), ([], []))
            self._windows = windows
        rows, micros = self._gathering
        rows.append(element)
        micros.append(windowed.timestamp_micros)
        gathered = len(micros)
        if not gathered % self._part_rows:  # the layout keeps what it needs of the last rows
            rows[-self._part_rows :] = [self._layout.gather(rows[-self._part_rows :])]
        if gathered < self._block_rows:
            return ()
        windows = tuple(windows)
        del self._pending[windows]
        self._windows = self._gathering = None
        return self._gathered(rows, micros, windows)

    def finish_bundle(self) -> Iterable[Any]:
        pending, self._pending, self._windows, self._gathering = self._pending, {}, None, None
        for windows, (rows, micros) in pending.items():
            yield from self._gathered(rows, micros, windows)

    def _split(self, element: Any, windowed: WindowedValue) -> Iterable[Any]:
        for part in self._layout.split(element):
            yield from self._blocks(part, lambda: self._layout.read(part), 1, None, windowed.timestamp, windowed.windows)

    def _gathered(self, rows: list, micros: list, windows: tuple) -> Iterable[Any]:
        # A block holds rows of one window; its own timestamp is its earliest row's.
        earliest, latest = min(micros), max(micros)
        timestamps = None if earliest == latest else np.asarray(micros, dtype=np.int64)
        yield from self._blocks(
            rows, lambda: self._layout.read(rows), len(micros), timestamps, Timestamp(micros=earliest), windows
        )

    def _blocks(self, element: Any, read, count: int, timestamps: Any, timestamp: Timestamp, window: tuple) -> Iterable[Any]:
        try:
            columns = read()
        except Exception as e:  # noqa: BLE001 - not a block at all: one failure for the element
            self._rows_in.inc(count)
            self._failed["input"].inc()
            row = failure_row("input", None, e, describe_element(element), None, None)
            yield beam.pvalue.TaggedOutput(FAILURES_TAG, WindowedValue(row, timestamp, window))
            return
        columns.timestamps = timestamps
        self._rows_in.inc(columns.size)
        describe, keys = columns.describe, columns.keys
        for i, error in sorted(columns.bad.items()):
            key = None if keys is None else value(keys, i)
            yield self._failure("input", None, error, describe(i), key, columns, i, timestamp, window)
        groups = self._padded(columns, timestamp, window) if self._pads else columns.groups
        if self._pads:
            groups, failures = groups
            yield from failures
        for positions, matrix in groups:
            route = self._route(keys, positions)
            if route is not None and (route < 0).any():
                for i in positions[route < 0].tolist():
                    key = str(value(keys, i))
                    yield self._failure(
                        "routing", None, unmapped_key(self._spec, key), describe(i), key, columns, i, timestamp, window,
                        error_type="UnmappedKey",
                    )
                served = route >= 0
                positions, matrix, route = positions[served], matrix[served], route[served]
                if not len(positions):
                    continue
            # Every row, in order: no copies.
            whole = len(positions) == columns.size and bool((np.diff(positions) > 0).all())
            block = Block(
                keys if whole else take(keys, positions),
                matrix,
                route,
                columns.passthrough if whole else {n: take(c, positions) for n, c in columns.passthrough.items()},
                describe,
                positions,
                timestamp,
                None if columns.timestamps is None else take(columns.timestamps, positions),
                columns.arrays,
            )
            yield WindowedValue(block, timestamp, window)

    def _padded(self, columns: Columns, timestamp: Any, window: Any) -> tuple[list, list]:
        """The rows after the preprocess steps, padded to the longest last axis (per leading shape)."""
        failures = []
        by_lead: dict[tuple, list[tuple[int, np.ndarray]]] = {}
        for positions, matrix in columns.groups:
            for i, x in zip(positions.tolist(), matrix):
                for name, step in self._steps:
                    try:
                        x = numeric_array(step(x[None, ...]))[0]
                    except Exception as e:  # noqa: BLE001
                        failures.append(
                            self._failure("preprocess", name, e, columns.describe(i), value(columns.keys, i), columns, i, timestamp, window)
                        )
                        break
                else:
                    x = x.reshape(1) if x.ndim == 0 else x
                    by_lead.setdefault(x.shape[:-1], []).append((i, x))
        groups = []
        for lead, members in by_lead.items():
            longest = max(x.shape[-1] for _, x in members)
            matrix = np.full((len(members), *lead, longest), self._spec.pad_value, dtype=np.float64)
            for j, (_, x) in enumerate(members):
                matrix[j, ..., : x.shape[-1]] = x
            groups.append((np.array([i for i, _ in members]), matrix))
        return groups, failures

    def _route(self, keys: Any, positions: np.ndarray) -> Optional[np.ndarray]:
        """The index of each row's model (-1: none), or None when one model serves every key."""
        if self._single:
            return None
        keys = take(keys, positions)
        if isinstance(keys, np.ndarray):
            routes = self._routes
            for key in set(keys.tolist()) - routes.keys():
                routes[key] = self._model_index(str(key))
            return np.fromiter((routes[k] for k in keys.tolist()), dtype=np.int64, count=len(keys))
        encoded = keys.dictionary_encode()
        served = [self._model_index(str(key)) for key in encoded.dictionary.to_pylist()]
        return np.asarray(served, dtype=np.int64)[encoded.indices.to_numpy(zero_copy_only=False)]

    def _model_index(self, key: str) -> int:
        model = self._spec.model_for_key(key)
        return -1 if model is None else self._index[model.id]

    def _failure(self, stage, step, error, element, key, columns, i, timestamp, window, error_type=None):
        self._failed[stage].inc()
        row = failure_row(stage, step, error, element, key, None, error_type)
        if columns.timestamps is not None:
            timestamp = Timestamp(micros=int(columns.timestamps[i]))
        return beam.pvalue.TaggedOutput(FAILURES_TAG, WindowedValue(row, timestamp, window))


class _PrepareEachWindow(_Prepare):
    """``_Prepare`` where an element may be in several windows (sliding windows, other window
    functions): taking the window makes Beam call it once per window of an element. Called once
    for an element in N windows, Beam would emit each block and failure of the call N times
    (it multiplies the windows of every WindowedValue a call outputs by the element's)."""

    def process(self, element: Any, windowed=beam.DoFn.WindowedValueParam, window=beam.DoFn.WindowParam) -> Iterable[Any]:
        return super().process(element, windowed)


# --- Stage 3: outcomes -> output elements ---------------------------------------------------------


class _Finish(beam.DoFn):
    """Writes the served rows of each block (output Rows or blocks, by layout); every failed row
    becomes a failure Row with its own timestamp."""

    def __init__(self, spec: InferenceSpec, layout: Any) -> None:
        self._spec = spec
        self._layout = layout
        self._ids = [m.id for m in spec.models]

    def setup(self) -> None:
        ns = self._spec.metrics_namespace
        self._out = Metrics.counter(ns, "inferences_out")
        self._failed = {s: Metrics.counter(ns, f"{s}_failures") for s in ("preprocess", "inference", "postprocess", "output")}

    def start_bundle(self) -> None:
        for counter in (self._out, *self._failed.values()):
            counter.inc(0)  # reported as 0 until it counts

    def process(self, block: Block, window=beam.DoFn.WindowParam) -> Iterable[Any]:
        outcome = block.outcome
        windows = (window,)
        size = len(block.features)
        failed = dict(outcome.failed)
        served = np.arange(size)
        if failed:
            served = np.delete(served, list(failed))
        if len(served):
            elements, written, wrong = self._layout.write(
                block, served, outcome.outputs, outcome.inputs, self._ids, self._spec.inference_kind, windows
            )
            failed.update(wrong)
            if written:
                self._out.inc(written)
            yield from elements
        for row, failure in sorted(failed.items()):
            yield self._failure(failure, block, row, windows)
        # Finished (a block is in one window). Beam holds on to the last element of each step
        # until the next one comes: what the block kept of its rows (for failure descriptions)
        # and its outputs go now, or they would live long enough to reach the oldest generation
        # of the garbage collector, whose full collections would then dominate.
        block.describe = block.passthrough = block.outcome = None

    def _failure(self, failed: Failed, block: Block, row: int, windows: tuple):
        self._failed[failed.stage].inc()
        row_out = failure_row(
            failed.stage,
            failed.step,
            failed.error,
            block.describe(int(block.positions[row])),
            value(block.keys, row),
            self._ids[block.model_index(row)],
        )
        return beam.pvalue.TaggedOutput(FAILURES_TAG, WindowedValue(row_out, block.timestamp_of(row), windows))


# --- Construction-time checks -------------------------------------------------------------------

# The keyword arguments of the composite besides ``models``: its own, then the spec's options.
_OWN_KEYWORDS = (
    "key_field", "feature_fields", "preprocess", "postprocess", "passthrough_fields", "model_updates", "policy",
)
_SPEC_OPTIONS = tuple(f.name for f, _ in OPTIONS if f.name not in (*_OWN_KEYWORDS, "models"))
KEYWORDS = (*_OWN_KEYWORDS, *_SPEC_OPTIONS)


def _check_arguments(name: str, options: dict[str, Any], model_updates: Any, policy: Any) -> None:
    """Fails for an unknown keyword argument, a ``policy`` that is not a LoadPolicy and
    ``model_updates`` that are not a PCollection: each names the argument, its value and what
    is allowed."""
    for keyword, given in options.items():
        if keyword not in _SPEC_OPTIONS:
            raise unknown_keyword(name, keyword, given, KEYWORDS)
    if policy is not None and not isinstance(policy, LoadPolicy):
        raise TypeError(
            f"policy={shorten(policy)} is a {type(policy).__name__}, not a LoadPolicy; allowed: a "
            "LoadPolicy, e.g. LoadPolicy(trusted_roots=['/models']), or None (the policy from the "
            "environment, LoadPolicy.from_env())"
        )
    if model_updates is not None and not isinstance(model_updates, beam.pvalue.PCollection):
        raise TypeError(
            f"model_updates={shorten(model_updates)} is a {type(model_updates).__name__}, not a "
            "PCollection; allowed: a PCollection of the same pipeline holding Row(model_id, uri), "
            "Beam's ModelMetadata (e.g. from WatchFilePattern), or (model_id, ModelMetadata or uri) "
            "pairs (e.g. p | beam.Create([beam.Row(model_id='a', uri='/models/a-v2.pkl')])), or None"
        )


def _require_rows(spec: InferenceSpec, element_type: Any) -> None:
    """Fails when the input's element type is known and is not a schema'd Row (dicts, tuples,
    lists, strings, numbers, numpy arrays, Arrow batches). Unknown types (Any, object) and
    plain objects of other classes are read by attribute, row by row."""
    if not _not_rows(element_type):
        return
    arrow = isinstance(element_type, type) and element_type.__module__.startswith("pyarrow")
    raise TypeError(
        f"Inference needs schema'd Rows as input, but the input PCollection's elements are "
        f"{shorten(element_type)}; allowed: beam.Row elements, or a NamedTuple or dataclass "
        f"with a schema, holding key_field={spec.key_field!r} and feature_fields "
        f"{list(spec.feature_fields)}: {ROWS_HINT}"
        + ("; for pyarrow RecordBatch or Table elements use BlockInference" if arrow else "")
    )


def _not_rows(element_type: Any) -> bool:
    """Whether ``element_type`` is known not to be a type of schema'd Rows."""
    from apache_beam.typehints import typehints

    if element_type is None or element_type is typing.Any or element_type is object:
        return False
    if isinstance(element_type, (typehints.AnyTypeConstraint, typehints.TypeVariable)):
        return False
    if input_fields(element_type) is not None:
        return False
    if isinstance(element_type, typehints.UnionConstraint):
        return all(_not_rows(t) for t in element_type.union_types)
    if isinstance(element_type, typehints.TypeConstraint):  # Dict[...], List[...], Tuple[...], ...
        return True
    if isinstance(element_type, type):
        return element_type.__module__ in ("builtins", "collections") or element_type.__module__.startswith(
            ("numpy", "pyarrow")
        )
    return False



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
    if key_type is not str:
        spec.check_integer_keys()
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


# Preprocess steps that keep an example's shape.
_SHAPE_KEEPING_STEPS = frozenset({"scale", "normalize", "cast"})


def _known_example_shape(spec: InferenceSpec, element_type: Any) -> Optional[tuple[int, ...]]:
    """The shape of every example when the input schema fixes it (every feature field a number,
    every preprocess step one that keeps shapes), else None."""
    fields = input_fields(element_type)
    if fields is None or any(step.name not in _SHAPE_KEEPING_STEPS for step in spec.preprocess):
        return None
    if any(_non_null(fields.get(name)) not in _NUMBER_TYPES for name in spec.feature_fields):
        return None
    return (len(spec.feature_fields),)


def _check_model_exists(where: str, model: Model, policy: LoadPolicy) -> None:
    """Fails at construction for a model file that does not exist or is not a regular file (a
    directory, a device, a FIFO): the workers load only regular files. A local PyTorch file
    must be of the kind the model names (a state_dict with model_class, TorchScript without)."""
    model_files.check_regular_file(model.uri, where)
    if model.framework == "pytorch" and local_path(model.uri) is not None:
        try:
            with model_files.open_model(model, model.uri, policy, where) as file:
                kind = pytorch.archive_kind(file.file)
        except (ValueError, OSError):  # refused when opened (a link out of the roots): the load says so
            return
        pytorch.check_file_kind(model, kind, where)


__all__ = ["Inference", "InferenceResult", "FAILURE_ROW", "configure_load_policy", "output_row_type"]
