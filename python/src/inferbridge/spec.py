"""The inference spec: the one declarative configuration Python and Java share.

On the wire it is a Beam Row (the payload of an ``ExternalConfigurationPayload``) with the flat,
typed schema below; ``tests/golden/run_inference_v1.schema`` records it, and both languages'
unit tests compare their schema to that file.
"""

import json
import typing
from dataclasses import dataclass, field
from typing import Any, Mapping, NamedTuple, Optional, Sequence

from inferbridge import steps

RUN_INFERENCE_URN = "beam:transform:inferbridge:run_inference:v1"

SKLEARN = "sklearn"
MODEL_FORMATS = {SKLEARN: ("joblib", "pickle")}
MODEL_OUTPUTS = {SKLEARN: ("predict", "predict_proba")}
# The kind of per-element value each model output gives, before postprocessing.
_OUTPUT_KINDS = {"predict": steps.NUMBER, "predict_proba": steps.VECTOR}


class StepConfig(NamedTuple):
    """Wire form of one step: its registered name and its parameters as a JSON object."""

    name: str
    params: str


class RunInferenceConfig(NamedTuple):
    """Wire form of the spec; field order and types are the cross-language contract."""

    key_field: str
    feature_field: str
    model_framework: str
    model_format: str
    model_uri: str
    model_id: Optional[str]
    model_output: str
    preprocess: Sequence[StepConfig]
    postprocess: Sequence[StepConfig]


@dataclass(frozen=True)
class Step:
    """A named step with parameters, e.g. ``Step("scale", factor=1 / 16)``."""

    name: str
    params: Mapping[str, Any]

    def __init__(self, name: str, /, **params: Any) -> None:
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "params", dict(params))

    def to_config(self) -> StepConfig:
        return StepConfig(self.name, json.dumps(dict(self.params), sort_keys=True))

    @classmethod
    def from_config(cls, stage: str, config: Any) -> "Step":
        try:
            params = json.loads(config.params or "{}")
        except json.JSONDecodeError as e:
            raise ValueError(
                f"{stage} step {config.name!r}: params must be a JSON object, got "
                f"{config.params!r} ({e})"
            ) from None
        if not isinstance(params, dict):
            raise ValueError(
                f"{stage} step {config.name!r}: params must be a JSON object, got {config.params!r}"
            )
        return cls(config.name, **params)


@dataclass(frozen=True)
class Model:
    """Where a model is and how to load and call it.

    ``output`` picks the method whose result becomes the inference: ``predict`` (one number per
    example) or ``predict_proba`` (a vector of class probabilities per example).
    """

    uri: str
    format: str = "pickle"
    framework: str = SKLEARN
    output: str = "predict"
    model_id: Optional[str] = None

    @classmethod
    def sklearn(
        cls,
        uri: str,
        *,
        format: str = "pickle",
        output: str = "predict",
        model_id: Optional[str] = None,
    ) -> "Model":
        return cls(uri, format, SKLEARN, output, model_id)

    @property
    def id(self) -> str:
        """The ``model_id`` reported with every inference: the given id, else the URI."""
        return self.model_id or self.uri


@dataclass(frozen=True)
class InferenceSpec:
    """Everything the inference composite does, validated on construction."""

    key_field: str
    feature_field: str
    model: Model
    preprocess: tuple[Step, ...] = ()
    postprocess: tuple[Step, ...] = ()
    # The kind of the output ``inference`` field after every postprocessing step; derived.
    inference_kind: str = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "preprocess", tuple(self.preprocess))
        object.__setattr__(self, "postprocess", tuple(self.postprocess))
        _require_name("key_field", self.key_field)
        _require_name("feature_field", self.feature_field)
        _require_name("model_uri", self.model.uri)
        _require_choice("model_framework", self.model.framework, tuple(MODEL_FORMATS))
        _require_choice("model_format", self.model.format, MODEL_FORMATS[self.model.framework])
        _require_choice("model_output", self.model.output, MODEL_OUTPUTS[self.model.framework])
        object.__setattr__(self, "inference_kind", self._check_steps())

    def _check_steps(self) -> str:
        """Checks every step's parameters and the postprocessing chain; returns the final kind."""
        for step in self.preprocess:
            steps.check_params(steps.lookup(steps.PREPROCESS, step.name), step.params)
        kind = _OUTPUT_KINDS[self.model.output]
        for step in self.postprocess:
            definition = steps.lookup(steps.POSTPROCESS, step.name)
            steps.check_params(definition, step.params)
            if kind not in definition.accepts:
                raise ValueError(
                    f"postprocess step {step.name!r} takes a {' or '.join(definition.accepts)} "
                    f"but receives a {kind} here (model_output={self.model.output!r}); "
                    "reorder the steps or choose another model_output"
                )
            kind = definition.produces
        return kind

    def to_config(self) -> RunInferenceConfig:
        return RunInferenceConfig(
            key_field=self.key_field,
            feature_field=self.feature_field,
            model_framework=self.model.framework,
            model_format=self.model.format,
            model_uri=self.model.uri,
            model_id=self.model.model_id,
            model_output=self.model.output,
            preprocess=[s.to_config() for s in self.preprocess],
            postprocess=[s.to_config() for s in self.postprocess],
        )

    @classmethod
    def from_config(cls, config: Any) -> "InferenceSpec":
        """Builds a spec from a decoded configuration Row, naming any field that is off."""
        present = set(getattr(config, "_fields", ()))
        expected = set(RunInferenceConfig._fields)
        missing = sorted(expected - present)
        unknown = sorted(present - expected)
        if missing or unknown:
            raise ValueError(
                f"configuration Row does not match {RUN_INFERENCE_URN}: missing fields {missing}, "
                f"unknown fields {unknown}; expected {sorted(expected)}"
            )
        return cls(
            key_field=config.key_field,
            feature_field=config.feature_field,
            model=Model(
                uri=config.model_uri,
                format=config.model_format,
                framework=config.model_framework,
                output=config.model_output,
                model_id=config.model_id,
            ),
            preprocess=tuple(Step.from_config("preprocess", s) for s in config.preprocess or ()),
            postprocess=tuple(Step.from_config("postprocess", s) for s in config.postprocess or ()),
        )


def schema_description() -> list[str]:
    """The configuration schema as ``name: TYPE`` lines, the form of the golden file."""
    from apache_beam.typehints import schemas

    schema = schemas.named_tuple_to_schema(RunInferenceConfig)
    return [f"{f.name}: {_describe(f.type)}" for f in schema.fields]


def _describe(field_type: Any) -> str:
    from apache_beam.portability.api import schema_pb2

    kind = field_type.WhichOneof("type_info")
    if kind == "atomic_type":
        text = schema_pb2.AtomicType.Name(field_type.atomic_type)
    elif kind == "array_type":
        text = f"ARRAY<{_describe(field_type.array_type.element_type)}>"
    elif kind == "row_type":
        inner = ", ".join(f"{f.name}: {_describe(f.type)}" for f in field_type.row_type.schema.fields)
        text = f"ROW<{inner}>"
    else:
        raise AssertionError(f"unexpected field type {field_type}")
    return text + (" NULLABLE" if field_type.nullable else "")


def _require_name(field_name: str, value: Any) -> None:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{field_name} must be a non-empty string, got {value!r}")


def _require_choice(field_name: str, value: Any, allowed: typing.Iterable[str]) -> None:
    if value not in allowed:
        raise ValueError(f"{field_name}={value!r} is not supported; allowed: {', '.join(allowed)}")
