"""The ``Evaluate`` composite: classification quality per model, inside the pipeline.

Rows that carry a prediction, a label and a model id go in; one ``EvaluationResult`` Row per
window and model id comes out (accuracy, per-class precision and recall, the confusion matrix),
so two models run side by side (an A/B run) can be compared in the same pipeline, batch or
streaming. The counts are kept by a CombineFn whose accumulators merge, so the results are per
window and follow the input's windowing and triggers.

On the wire the configuration is a Beam Row with the schema of ``EvaluateConfig``;
``tests/golden/evaluate_v1.schema`` records it. The output uses Beam's standard Row coder, so Java
pipelines can read it.

No ``from __future__ import annotations`` here: Beam reads the NamedTuple schemas' annotations.
"""

import decimal
import math
import numbers
import re
from collections.abc import Iterable as _Iterable
from dataclasses import dataclass, field
from typing import Any, Iterable, NamedTuple, Optional, Sequence, Tuple

import apache_beam as beam
import numpy as np
from apache_beam.coders import RowCoder
from apache_beam.portability.api import external_transforms_pb2
from apache_beam.transforms.external import NamedTupleBasedPayloadBuilder
from apache_beam.typehints import native_type_compatibility, typehints
from apache_beam.typehints.row_type import RowTypeConstraint

from inferbridge import bounds, spec

EVALUATE_URN = "beam:transform:inferbridge:evaluate:v1"
# (model id, (actual class, predicted class)), each None where missing.
_CLASS_PAIR_BY_MODEL = Tuple[Optional[str], Tuple[Optional[str], Optional[str]]]


class EvaluateConfig(NamedTuple):
    """Wire form of ``Evaluate``'s settings; field order and types are the cross-language contract."""

    label_field: str
    prediction_field: str
    model_id_field: str


class ConfusionCell(NamedTuple):
    """One non-zero cell of a confusion matrix: ``count`` rows of class ``actual`` were predicted
    as ``predicted``."""

    actual: str
    predicted: str
    count: int


class EvaluationResult(NamedTuple):
    """Classification quality of one model in one window.

    ``count`` rows had both a label and a prediction, ``correct`` of them matched, and
    ``unlabeled`` rows lacked one or the other (null, or a float NaN); ``count + unlabeled`` is
    every input row of this model in this window. ``accuracy = correct / count``.

    ``classes`` is every class seen as a label or a prediction, sorted (see ``sort_classes``);
    ``precision`` and ``recall`` are aligned with it: precision of class c is the share of rows
    predicted as c whose label is c, recall the share of rows labelled c that were predicted as c.
    A ratio whose denominator is zero (class never predicted, class never a label, no labelled
    rows) is reported as 0.0, as scikit-learn does with ``zero_division=0``. ``macro_precision``
    and ``macro_recall`` are the unweighted means over ``classes`` (0.0 when there are none).
    ``confusion`` lists the non-zero cells, in the order of ``classes`` by actual, then predicted.

    ``model_id`` is null for the rows whose model id is null.
    """

    model_id: Optional[str]
    count: int
    correct: int
    accuracy: float
    classes: Sequence[str]
    precision: Sequence[float]
    recall: Sequence[float]
    macro_precision: float
    macro_recall: float
    confusion: Sequence[ConfusionCell]
    unlabeled: int


def output_row_type() -> RowTypeConstraint:
    """The schema of ``Evaluate``'s output Rows (the fields of ``EvaluationResult``)."""
    return RowTypeConstraint.from_user_type(EvaluationResult)


@beam.PTransform.register_urn(EVALUATE_URN, external_transforms_pb2.ExternalConfigurationPayload)
class Evaluate(beam.PTransform):
    """Compares predictions with labels per model id and window; emits Rows with the fields of
    ``EvaluationResult`` (Beam's Row coder; in Python each is an ``EvaluationResult`` or a Row
    with the same schema).

    ::

        results = (predictions_with_labels
                   | beam.WindowInto(beam.window.FixedWindows(3600))
                   | Evaluate("label"))  # prediction_field="inference", model_id_field="model_id"

    Input: schema'd Rows (``beam.Row`` or a NamedTuple) with the three configured fields.
    Labels and predictions are compared by class name, see ``class_name``: ``3``, ``3.0``,
    ``"3"`` and ``numpy.int64(3)`` are the same class. A row whose label or prediction is null
    (or NaN) is counted as ``unlabeled``, not dropped. Output: one Row per window and model id
    that has rows in it; see ``EvaluationResult`` for the fields and how each is defined.
    """

    def __init__(self, label_field: str, *, prediction_field: str = "inference", model_id_field: str = "model_id") -> None:
        super().__init__()
        for name, value in (
            ("label_field", label_field),
            ("prediction_field", prediction_field),
            ("model_id_field", model_id_field),
        ):
            bounds.check_length(name, value, bounds.MAX_NAME_CHARS)
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"{name} must be a non-empty string, got {bounds.shorten(value)}")
        if label_field == prediction_field:
            raise ValueError(
                f"label_field and prediction_field are both {label_field!r}; "
                "they must name two different fields"
            )
        self._config = EvaluateConfig(label_field, prediction_field, model_id_field)

    @property
    def config(self) -> EvaluateConfig:
        return self._config

    @classmethod
    def from_config(cls, config: Any) -> "Evaluate":
        """Builds the transform from a decoded configuration Row, naming any field that is off."""
        spec.check_config_fields(config, EvaluateConfig, EVALUATE_URN)
        return cls(config.label_field, prediction_field=config.prediction_field, model_id_field=config.model_id_field)

    def expand(self, rows: beam.PCollection) -> beam.PCollection:
        _check_input_schema(self._config, rows.element_type)
        return (
            rows
            | "ClassNames" >> beam.Map(_ClassNames(self._config)).with_output_types(_CLASS_PAIR_BY_MODEL)
            | "Count" >> beam.CombinePerKey(ConfusionCountsFn())
            | "Metrics" >> beam.MapTuple(evaluation_result).with_output_types(output_row_type())
        )

    def to_runner_api_parameter(self, unused_context: Any) -> tuple[str, Any]:
        return EVALUATE_URN, NamedTupleBasedPayloadBuilder(self._config).build()

    @staticmethod
    def from_runner_api_parameter(
        unused_ptransform: Any, payload: external_transforms_pb2.ExternalConfigurationPayload, unused_context: Any
    ) -> "Evaluate":
        return Evaluate.from_config(RowCoder(payload.schema).decode(payload.payload))


# --- class names ---------------------------------------------------------------------------------

_NUMBER = re.compile(r"[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?|[-+]?inf")


def class_name(value: Any) -> Optional[str]:
    """The class a label or prediction stands for, as a string; None when it is missing.

    - None and float NaN: missing (the row is counted as ``unlabeled``).
    - Strings: unchanged (no trimming; ``"3.0"`` and ``"3"`` are different strings). Bytes are
      decoded as UTF-8.
    - Booleans: ``"True"`` / ``"False"``.
    - Integers (Python, numpy): decimal digits, ``"3"``.
    - Floats (Python, numpy, Decimal) with an integral value: as the integer, so ``3.0`` is
      ``"3"`` and matches the label ``3`` or ``"3"``; other floats: the shortest repr that reads
      back as the same value at the value's own precision (``0.5``, ``float32(0.1)`` -> ``"0.1"``),
      infinities ``"inf"`` / ``"-inf"``.
    - A numpy 0-d array: its item. Anything else iterable (lists, arrays, dicts): a TypeError,
      since a vector is not a class (postprocess it with ``Step("argmax")`` first).
    - Any other object: ``str(value)``.
    """
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", "backslashreplace")
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, np.floating) and value.dtype.itemsize < 8:
        # float32/float16: their own shortest repr, not the float64 widening (0.10000000149...).
        value = float(str(value))
    if isinstance(value, (numbers.Real, decimal.Decimal)):
        number = float(value)
        if math.isnan(number):
            return None
        if math.isfinite(number) and number.is_integer():
            return str(int(number))
        return repr(number)
    if isinstance(value, np.ndarray) and value.ndim == 0:
        return class_name(value.item())
    if isinstance(value, (_Iterable, dict)):
        raise TypeError(
            f"{value!r} is a {type(value).__name__}, not a class label; give a string, integer, "
            "float or boolean (postprocess a vector of scores with Step('argmax') first)"
        )
    return str(value)


def sort_classes(classes: Iterable[str]) -> list[str]:
    """Class names in report order: numbers numerically first (``"2"`` before ``"10"``), then the
    others by code point."""

    def key(name: str) -> tuple[int, float, str]:
        if _NUMBER.fullmatch(name):
            return (0, float(name), name)
        return (1, 0.0, name)

    return sorted(classes, key=key)


class _ClassNames:
    """Turns an input Row into ``(model id, (actual class, predicted class))``."""

    def __init__(self, config: EvaluateConfig) -> None:
        self._config = config

    def __call__(self, row: Any) -> tuple[Optional[str], tuple[Optional[str], Optional[str]]]:
        config = self._config
        return (
            self._class(row, "model_id_field", config.model_id_field),
            (
                self._class(row, "label_field", config.label_field),
                self._class(row, "prediction_field", config.prediction_field),
            ),
        )

    @staticmethod
    def _class(row: Any, name: str, field_name: str) -> Optional[str]:
        try:
            value = getattr(row, field_name)
        except AttributeError:
            available = _field_names(row)
            raise ValueError(
                f"{name}={field_name!r} is not a field of the input row; available fields: "
                f"{', '.join(available)}"
            ) from None
        try:
            return class_name(value)
        except TypeError as e:
            raise TypeError(f"{name}={field_name!r}: {e}") from None


def _field_names(row: Any) -> list[str]:
    if hasattr(row, "_fields"):
        return list(row._fields)
    return list(vars(row)) if hasattr(row, "__dict__") else []


# --- counting ------------------------------------------------------------------------------------


@dataclass
class ConfusionCounts:
    """The accumulator: rows per (actual, predicted) class pair, and rows lacking either."""

    cells: dict[tuple[str, str], int] = field(default_factory=dict)
    unlabeled: int = 0


class ConfusionCountsFn(beam.CombineFn):
    """Counts ``(actual, predicted)`` class-name pairs (None for missing) into ``ConfusionCounts``.

    Accumulators merge by adding counts, so partial counts from any bundles, workers or combiner
    lifting give the same result.
    """

    def create_accumulator(self) -> ConfusionCounts:
        return ConfusionCounts()

    def add_input(self, counts: ConfusionCounts, pair: tuple[Optional[str], Optional[str]]) -> ConfusionCounts:
        actual, predicted = pair
        if actual is None or predicted is None:
            counts.unlabeled += 1
        else:
            counts.cells[(actual, predicted)] = counts.cells.get((actual, predicted), 0) + 1
        return counts

    def merge_accumulators(self, accumulators: Iterable[ConfusionCounts]) -> ConfusionCounts:
        merged = ConfusionCounts()
        for counts in accumulators:
            merged.unlabeled += counts.unlabeled
            for cell, n in counts.cells.items():
                merged.cells[cell] = merged.cells.get(cell, 0) + n
        return merged

    def extract_output(self, counts: ConfusionCounts) -> ConfusionCounts:
        return counts


def evaluation_result(model_id: Optional[str], counts: ConfusionCounts) -> EvaluationResult:
    """The metrics of one model's counts."""
    cells = counts.cells
    classes = sort_classes({c for cell in cells for c in cell})
    index = {c: i for i, c in enumerate(classes)}
    predicted_as = [0] * len(classes)
    labelled_as = [0] * len(classes)
    hits = [0] * len(classes)
    for (actual, predicted), n in cells.items():
        labelled_as[index[actual]] += n
        predicted_as[index[predicted]] += n
        if actual == predicted:
            hits[index[actual]] += n
    count = sum(cells.values())
    correct = sum(hits)
    precision = [_ratio(h, p) for h, p in zip(hits, predicted_as)]
    recall = [_ratio(h, a) for h, a in zip(hits, labelled_as)]
    confusion = [
        ConfusionCell(actual, predicted, n)
        for (actual, predicted), n in sorted(cells.items(), key=lambda item: (index[item[0][0]], index[item[0][1]]))
    ]
    return EvaluationResult(
        model_id=model_id,
        count=count,
        correct=correct,
        accuracy=_ratio(correct, count),
        classes=classes,
        precision=precision,
        recall=recall,
        macro_precision=_mean(precision),
        macro_recall=_mean(recall),
        confusion=confusion,
        unlabeled=counts.unlabeled,
    )


def _ratio(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator else 0.0


def _mean(values: Sequence[float]) -> float:
    return math.fsum(values) / len(values) if values else 0.0


# --- schemas -------------------------------------------------------------------------------------


def _is_collection(beam_type: Any) -> bool:
    """Whether a field of this type holds collections (never a single class label)."""
    beam_type = native_type_compatibility.convert_to_beam_type(beam_type)
    if isinstance(beam_type, typehints.UnionConstraint):
        members = [m for m in beam_type.union_types if m is not type(None)]
        return bool(members) and all(_is_collection(m) for m in members)
    if isinstance(
        beam_type,
        (
            typehints.IterableTypeConstraint,
            typehints.SequenceTypeConstraint,
            typehints.TupleConstraint,
            typehints.TupleSequenceConstraint,
            typehints.DictConstraint,
            typehints.MappingTypeConstraint,
            typehints.SetTypeConstraint,
            typehints.FrozenSetTypeConstraint,
            typehints.CollectionTypeConstraint,
            RowTypeConstraint,
        ),
    ):
        return True
    return isinstance(beam_type, type) and issubclass(beam_type, (list, tuple, dict, set, frozenset, np.ndarray))


def _check_input_schema(config: EvaluateConfig, element_type: Any) -> None:
    """Checks the configured fields against the input schema, when it is known."""
    fields = spec.input_fields(element_type)
    if fields is None:
        return
    spec.require_input_fields(fields, zip(EvaluateConfig._fields, config))
    for name, value in zip(EvaluateConfig._fields, config):
        if _is_collection(fields[value]):
            raise ValueError(
                f"{name}={value!r} has type {fields[value]}; allowed: a string, integer, float or "
                "boolean field (postprocess a vector of scores with Step('argmax') first)"
            )


def schema_description() -> list[str]:
    """The configuration schema as ``name: TYPE`` lines, the form of the golden file."""
    return spec.schema_description(EvaluateConfig)


def output_schema_description() -> list[str]:
    """The output Row schema as ``name: TYPE`` lines."""
    return spec.schema_description(EvaluationResult)


__all__ = [
    "EVALUATE_URN",
    "ConfusionCell",
    "ConfusionCounts",
    "ConfusionCountsFn",
    "Evaluate",
    "EvaluateConfig",
    "EvaluationResult",
    "class_name",
    "evaluation_result",
    "output_row_type",
    "output_schema_description",
    "schema_description",
    "sort_classes",
]
