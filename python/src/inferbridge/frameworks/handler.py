"""Allowlisted Beam ModelHandlers, named by ``format``; a model's options are the handler's
constructor keyword arguments, checked against its signature.

An allowlisted handler loads by path, so it is given a path that leads to the checked, open file.
To allow another handler, add a ``BeamHandler`` to ``BEAM_HANDLERS`` (and its name to
``BeamHandlerModel.HANDLERS`` in the Java wrapper).
"""

from __future__ import annotations

import enum
import importlib
import inspect
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional, Sequence

import numpy as np

from inferbridge.frameworks.base import VECTOR_OR_NUMBER, Framework, import_library, results

if TYPE_CHECKING:
    from apache_beam.ml.inference.base import ModelHandler, PredictionResult

    from inferbridge.model_files import ModelFile
    from inferbridge.policy import LoadPolicy
    from inferbridge.spec import Model


@dataclass(frozen=True)
class BeamHandler:
    """An allowlisted Beam ModelHandler class, built with the model's uri as ``uri_param``."""

    module: str
    name: str
    uri_param: str
    # The pip packages the handler's Beam module needs.
    package: str
    # Whether loading a model file can run code (then it loads only from trusted roots).
    runs_code: bool
    # Options whose value names a class of ``library``, with the names allowed.
    class_choices: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    library: str = ""
    # Constructor arguments that options may not set (paths outside the policy, callables).
    excluded: tuple[str, ...] = ()
    # Replaces Beam's default inference_fn where that does not take one 1-D array per example.
    inference_fn: Optional[Callable[..., Any]] = None


def _xgboost_inference(batch: Sequence[np.ndarray], model: Any, inference_args: Any = None) -> list[PredictionResult]:
    """One predict call for the stacked batch (Beam's default calls predict per 2-D example)."""
    import xgboost

    features = np.stack(batch)
    if isinstance(model, xgboost.Booster):
        features = xgboost.DMatrix(features)
    return results(batch, model.predict(features, **(inference_args or {})))


BEAM_HANDLERS: dict[str, BeamHandler] = {
    "sklearn_numpy": BeamHandler(
        "apache_beam.ml.inference.sklearn_inference", "SklearnModelHandlerNumpy", "model_uri",
        package="scikit-learn", runs_code=True,
    ),
    "xgboost_numpy": BeamHandler(
        "apache_beam.ml.inference.xgboost_inference", "XGBoostModelHandlerNumpy", "model_state",
        package="xgboost datatable", runs_code=False, library="xgboost",
        class_choices={
            "model_class": (
                "XGBClassifier", "XGBRegressor", "XGBRFClassifier", "XGBRFRegressor", "Booster"
            )
        },
        inference_fn=_xgboost_inference,
    ),
    "tensorflow_numpy": BeamHandler(
        "apache_beam.ml.inference.tensorflow_inference", "TFModelHandlerNumpy", "model_uri",
        package="tensorflow", runs_code=True, excluded=("create_model_fn", "custom_weights"),
    ),
}
# Constructor arguments of Beam handlers that InferBridge or the composite sets, never options.
_COMPOSITE_ARGS = frozenset({
    "inference_fn", "min_batch_size", "max_batch_size", "max_batch_duration_secs",
    "max_batch_weight", "element_size_fn", "batch_length_fn", "batch_bucket_boundaries",
    "large_model", "model_copies", "env_vars",
})


def _check(model: Model, where: str) -> None:
    _handler_args(model, where)


def _handler_args(model: Model, where: str) -> tuple[type, dict[str, Any]]:
    """The allowlisted Beam handler class and its keyword arguments from ``model.options``.

    It imports the handler's Beam module, to read its constructor's signature.
    """
    entry = BEAM_HANDLERS[model.format]
    module = import_library(entry.module, entry.package, f"{where}.format={model.format!r}")
    cls = getattr(module, entry.name)
    parameters = {
        name: p
        for name, p in inspect.signature(cls).parameters.items()
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        and name not in _COMPOSITE_ARGS
        and name not in entry.excluded
        and name != entry.uri_param
    }
    allowed = ", ".join(parameters) or "none"
    kwargs: dict[str, Any] = {}
    for name, value in model.options.items():
        parameter = parameters.get(name)
        option = f"{where}.options.{name}"
        if parameter is None:
            raise ValueError(
                f"{option} is not an option of handler {model.format!r}; allowed: {allowed}"
            )
        if name in entry.class_choices:
            choices = entry.class_choices[name]
            if value not in choices:
                raise ValueError(
                    f"{option}={value!r} is not supported; allowed: {', '.join(choices)}"
                )
            value = getattr(importlib.import_module(entry.library), value)
        elif isinstance(parameter.default, enum.Enum):
            members = type(parameter.default).__members__
            member = members.get(value.upper()) if isinstance(value, str) else None
            if member is None:
                names = ", ".join(m.lower() for m in members)
                raise ValueError(f"{option}={value!r} is not supported; allowed: {names}")
            value = member
        kwargs[name] = value
    for name, parameter in parameters.items():
        if parameter.default is inspect.Parameter.empty and name not in kwargs:
            raise ValueError(f"{where}.options.{name} is required for handler {model.format!r}")
    return cls, kwargs


def _build(model: Model, uri: str, policy: LoadPolicy, where: str) -> ModelHandler:
    cls, kwargs = _handler_args(model, where)
    entry = BEAM_HANDLERS[model.format]
    if entry.inference_fn is not None:
        kwargs["inference_fn"] = entry.inference_fn
    return cls(**{entry.uri_param: uri}, **kwargs)


def _load(model: Model, file: ModelFile, policy: LoadPolicy, where: str) -> Any:
    # A fresh handler for a path that leads to this file, never to the configured path.
    with file.path() as path:
        return _build(model, path, policy, where).load_model()


FRAMEWORK = Framework(
    name="handler",
    formats=tuple(BEAM_HANDLERS),
    outputs=VECTOR_OR_NUMBER,
    check=_check,
    build=_build,
    load=_load,
    safe_formats=tuple(name for name, entry in BEAM_HANDLERS.items() if not entry.runs_code),
)
