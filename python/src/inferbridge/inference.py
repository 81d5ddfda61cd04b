"""The ``Inference`` composite: preprocess -> Beam RunInference -> postprocess -> typed Rows."""

from __future__ import annotations

import typing
from typing import Any, Callable, Optional, Sequence

import apache_beam as beam
import numpy as np
from apache_beam.coders import RowCoder
from apache_beam.io.filesystems import FileSystems
from apache_beam.ml.inference.base import KeyedModelHandler, PredictionResult, RunInference
from apache_beam.portability.api import external_transforms_pb2
from apache_beam.transforms.external import NamedTupleBasedPayloadBuilder
from apache_beam.typehints.row_type import RowTypeConstraint

from inferbridge import models, steps
from inferbridge.spec import RUN_INFERENCE_URN, InferenceSpec, Model, Step

# Per kind of inference value: the Beam type of the ``inference`` field, and the conversion to it.
_INFERENCE_FIELDS: dict[str, tuple[Any, Callable[[Any], Any]]] = {
    steps.VECTOR: (typing.Sequence[float], lambda v: [float(x) for x in np.ravel(v)]),
    steps.NUMBER: (float, float),
    steps.INTEGER: (int, int),
    steps.LABEL: (str, str),
}
_KEY_TYPES = (str, int, np.int64, np.int32, np.int16, np.int8)
_SCALAR_TYPES = (str, bytes, bool, int, float, np.int64, np.int32, np.float64, np.float32)


def output_row_type(spec: InferenceSpec, key_type: Any = str) -> RowTypeConstraint:
    """The schema of the composite's output Rows for ``spec``."""
    return RowTypeConstraint.from_fields(
        [
            ("key", key_type),
            ("example", typing.Sequence[float]),
            ("inference", _INFERENCE_FIELDS[spec.inference_kind][0]),
            ("model_id", str),
        ]
    )


@beam.PTransform.register_urn(RUN_INFERENCE_URN, external_transforms_pb2.ExternalConfigurationPayload)
class Inference(beam.PTransform):
    """Runs a model on schema'd Rows and emits ``Row(key, example, inference, model_id)``.

    Each input Row gives a key (``key_field``) and a feature array (``feature_field``). The
    features go through the ``preprocess`` steps, in order, then Beam's RunInference with the
    model, then the ``postprocess`` steps, in order::

        rows | Inference(
            Model.sklearn("/models/digits.pkl", output="predict_proba"),
            key_field="id", feature_field="pixels",
            preprocess=[Step("scale", factor=1 / 16)],
            postprocess=[Step("argmax")])

    ``example`` is the model input after preprocessing; ``model_id`` names the model that made
    the inference. The output uses Beam's standard Row coder, so Java pipelines can read it.
    """

    def __init__(
        self,
        model: Model,
        *,
        key_field: str,
        feature_field: str,
        preprocess: Sequence[Step] = (),
        postprocess: Sequence[Step] = (),
    ) -> None:
        super().__init__()
        self._spec = InferenceSpec(key_field, feature_field, model, tuple(preprocess), tuple(postprocess))

    @classmethod
    def from_spec(cls, spec: InferenceSpec) -> "Inference":
        return cls(
            spec.model,
            key_field=spec.key_field,
            feature_field=spec.feature_field,
            preprocess=spec.preprocess,
            postprocess=spec.postprocess,
        )

    @property
    def spec(self) -> InferenceSpec:
        return self._spec

    def expand(self, rows: beam.PCollection) -> beam.PCollection:
        spec = self._spec
        key_type = _check_input_schema(spec, rows.element_type)
        _check_model_exists(spec.model)
        prepare = _Prepare(spec, convert_key=key_type is str)
        finish = _Finish(spec)
        return (
            rows
            | "Preprocess" >> beam.Map(prepare)
            | "RunInference" >> RunInference(KeyedModelHandler(models.handler_for(spec.model)))
            | "Postprocess" >> beam.Map(finish).with_output_types(output_row_type(spec, key_type))
        )

    def to_runner_api_parameter(self, unused_context: Any) -> tuple[str, Any]:
        return RUN_INFERENCE_URN, NamedTupleBasedPayloadBuilder(self._spec.to_config()).build()

    @staticmethod
    def from_runner_api_parameter(
        unused_ptransform: Any, payload: external_transforms_pb2.ExternalConfigurationPayload, unused_context: Any
    ) -> "Inference":
        config = RowCoder(payload.schema).decode(payload.payload)
        return Inference.from_spec(InferenceSpec.from_config(config))


class _Prepare:
    """Turns an input Row into ``(key, model input)`` with the preprocessing steps applied."""

    def __init__(self, spec: InferenceSpec, convert_key: bool) -> None:
        self._key_field = spec.key_field
        self._feature_field = spec.feature_field
        self._convert_key = convert_key
        self._steps = _build(steps.PREPROCESS, spec.preprocess)

    def __call__(self, row: Any) -> tuple[Any, np.ndarray]:
        key = getattr(row, self._key_field)
        features = np.asarray(getattr(row, self._feature_field), dtype=np.float64)
        for step in self._steps:
            features = step(features)
        return (str(key) if self._convert_key else key), features


class _Finish:
    """Turns ``(key, PredictionResult)`` into the output Row, applying postprocessing."""

    def __init__(self, spec: InferenceSpec) -> None:
        self._steps = _build(steps.POSTPROCESS, spec.postprocess)
        self._to_field = _INFERENCE_FIELDS[spec.inference_kind][1]
        self._model_id = spec.model.id

    def __call__(self, keyed: tuple[Any, PredictionResult]) -> beam.Row:
        key, result = keyed
        value = result.inference
        for step in self._steps:
            value = step(value)
        return beam.Row(
            key=key,
            example=[float(x) for x in np.ravel(result.example)],
            inference=self._to_field(value),
            model_id=self._model_id,
        )


def _build(stage: str, configured: Sequence[Step]) -> list[Callable[[Any], Any]]:
    built = []
    for step in configured:
        definition = steps.lookup(stage, step.name)
        built.append(definition.build(steps.check_params(definition, step.params)))
    return built


def _check_input_schema(spec: InferenceSpec, element_type: Any) -> Any:
    """Checks the configured fields against the input schema; returns the key's Beam type.

    Without a known schema (plain Python objects) the key is emitted as a string.
    """
    row_type: Optional[RowTypeConstraint] = None
    if isinstance(element_type, RowTypeConstraint):
        row_type = element_type
    elif isinstance(element_type, type):
        row_type = RowTypeConstraint.from_user_type(element_type)
    if row_type is None:
        return str
    fields = dict(row_type._fields)
    for name, value in (("key_field", spec.key_field), ("feature_field", spec.feature_field)):
        if value not in fields:
            raise ValueError(
                f"{name}={value!r} is not a field of the input schema; available fields: "
                f"{', '.join(fields)}"
            )
    key_type = fields[spec.key_field]
    if key_type not in _KEY_TYPES:
        raise ValueError(
            f"key_field={spec.key_field!r} has type {key_type}; allowed: a string or integer field"
        )
    feature_type = fields[spec.feature_field]
    if feature_type in _SCALAR_TYPES:
        raise ValueError(
            f"feature_field={spec.feature_field!r} has type {feature_type.__name__}; "
            "allowed: an array of numbers"
        )
    return int if key_type is not str else str


def _check_model_exists(model: Model) -> None:
    if not FileSystems.exists(model.uri):
        raise ValueError(
            f"model_uri={model.uri!r} does not exist or is not readable from the process that "
            "builds the pipeline; give a path or URI the workers can read"
        )


__all__ = ["Inference", "output_row_type"]
