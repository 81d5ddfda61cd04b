"""Named, parameterised preprocessing and postprocessing steps.

Steps are referenced by name so that any language can ask for them: a spec carries a step's
name and its parameters, never code. Each step declares its parameters (checked when the spec is
built) and, for postprocessing, the kind of value it produces, so the output schema is known
before the pipeline runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np

# Kinds of per-element inference values, and the Beam schema type each becomes.
VECTOR = "vector"  # ARRAY<DOUBLE>
NUMBER = "number"  # DOUBLE
INTEGER = "integer"  # INT64
LABEL = "label"  # STRING

PREPROCESS = "preprocess"
POSTPROCESS = "postprocess"


@dataclass(frozen=True)
class Param:
    """One parameter of a step: its name and the JSON kind of value it takes."""

    name: str
    kind: str  # "number" or "string_list"
    required: bool = True

    def check(self, stage: str, step: str, value: Any) -> Any:
        where = f"{stage} step {step!r}: parameter {self.name!r}"
        if self.kind == "number":
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{where} must be a number, got {value!r}")
            if not math.isfinite(value):
                raise ValueError(f"{where} must be finite, got {value!r}")
            return float(value)
        if self.kind == "string_list":
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ValueError(f"{where} must be a list of strings, got {value!r}")
            if not value:
                raise ValueError(f"{where} must not be empty")
            return list(value)
        raise AssertionError(f"unknown parameter kind {self.kind!r}")


@dataclass(frozen=True)
class StepDefinition:
    """A registered step: what it takes, what it does, and (postprocessing) what it yields."""

    name: str
    stage: str
    params: tuple[Param, ...]
    # Builds the per-element function from checked parameters.
    build: Callable[[Mapping[str, Any]], Callable[[Any], Any]]
    # For postprocessing: the kinds of value it accepts, and the kind it produces.
    accepts: tuple[str, ...] = ()
    produces: str = ""


def _scale(params: Mapping[str, Any]) -> Callable[[np.ndarray], np.ndarray]:
    factor = params["factor"]
    return lambda x: x * factor


def _normalize(params: Mapping[str, Any]) -> Callable[[np.ndarray], np.ndarray]:
    mean, std = params["mean"], params["std"]
    if std == 0:
        raise ValueError("preprocess step 'normalize': parameter 'std' must not be 0")
    return lambda x: (x - mean) / std


def _argmax(_: Mapping[str, Any]) -> Callable[[np.ndarray], int]:
    return lambda v: int(np.argmax(v))


def _softmax(_: Mapping[str, Any]) -> Callable[[np.ndarray], np.ndarray]:
    def softmax(v: np.ndarray) -> np.ndarray:
        shifted = np.exp(v - np.max(v))
        return shifted / shifted.sum()

    return softmax


def _round(_: Mapping[str, Any]) -> Callable[[float], int]:
    return lambda v: int(round(float(v)))


def _labels(params: Mapping[str, Any]) -> Callable[[int], str]:
    names = params["names"]

    def label(index: int) -> str:
        if not 0 <= index < len(names):
            raise ValueError(
                f"postprocess step 'labels': index {index} is outside the "
                f"{len(names)} configured names"
            )
        return names[index]

    return label


_REGISTRY: dict[str, StepDefinition] = {
    d.name: d
    for d in (
        StepDefinition("scale", PREPROCESS, (Param("factor", "number"),), _scale),
        StepDefinition(
            "normalize",
            PREPROCESS,
            (Param("mean", "number"), Param("std", "number")),
            _normalize,
        ),
        StepDefinition("argmax", POSTPROCESS, (), _argmax, (VECTOR,), INTEGER),
        StepDefinition("softmax", POSTPROCESS, (), _softmax, (VECTOR,), VECTOR),
        StepDefinition("round", POSTPROCESS, (), _round, (NUMBER,), INTEGER),
        StepDefinition(
            "labels", POSTPROCESS, (Param("names", "string_list"),), _labels, (INTEGER,), LABEL
        ),
    )
}


def lookup(stage: str, name: str) -> StepDefinition:
    """The definition of step ``name`` for ``stage``; a clear error for anything else."""
    definition = _REGISTRY.get(name)
    if definition is None or definition.stage != stage:
        allowed = ", ".join(sorted(d.name for d in _REGISTRY.values() if d.stage == stage))
        raise ValueError(f"{stage} step {name!r} is not registered; available: {allowed}")
    return definition


def check_params(definition: StepDefinition, params: Mapping[str, Any]) -> dict[str, Any]:
    """Checks ``params`` against the step's declared parameters and returns them normalised."""
    known = {p.name: p for p in definition.params}
    unknown = sorted(set(params) - set(known))
    if unknown:
        allowed = ", ".join(sorted(known)) or "none"
        raise ValueError(
            f"{definition.stage} step {definition.name!r}: unknown parameter(s) "
            f"{', '.join(map(repr, unknown))}; allowed: {allowed}"
        )
    checked: dict[str, Any] = {}
    for name, param in known.items():
        if name not in params:
            if param.required:
                raise ValueError(
                    f"{definition.stage} step {definition.name!r}: parameter {name!r} is required"
                )
            continue
        checked[name] = param.check(definition.stage, definition.name, params[name])
    return checked
