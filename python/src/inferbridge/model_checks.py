"""Checks of a model's configuration (``spec.Model``), at construction of the spec.

They import no framework library and no Beam, except for the handler framework, which imports
the allowlisted Beam handler's module to read its constructor's signature.
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, Any, Mapping

from inferbridge import frameworks, model_files, steps

if TYPE_CHECKING:
    from inferbridge.spec import Model


def check_model(model: Model, where: str) -> str:
    """Checks framework, format, output, options and sha256; returns "vector" or "number".

    Errors are ValueErrors that start with ``where`` and name the field, the bad value and what
    is allowed. Only the handler framework imports anything (the Beam handler's module, to
    read its constructor's signature).
    """
    if not isinstance(model.uri, str) or not model.uri.strip():
        raise ValueError(f"{where}.uri must be a non-empty string, got {model.uri!r}")
    _check_env_vars(model, where)
    if model.beam_handler is not None:
        return _check_provided(model, where)
    framework = frameworks.lookup(model.framework, where)
    if framework.formats and model.format not in framework.formats:  # else the framework's check names them
        raise ValueError(
            f"{where}.format={model.format!r} is not supported for framework {framework.name!r}; "
            f"allowed: {', '.join(framework.formats)}"
        )
    if model.output not in framework.outputs:
        raise ValueError(
            f"{where}.output={model.output!r} is not supported for framework {framework.name!r}; "
            f"allowed: {', '.join(framework.outputs)}"
        )
    if not isinstance(model.options, Mapping):
        raise ValueError(f"{where}.options must be a JSON object, got {model.options!r}")
    for name, value in model.options.items():
        _check_json(value, f"{where}.options.{name}")
    framework.check(model, where)
    if not model.has_file:
        _refuse_file_fields(model, where)
    _check_pin(model, where)
    if model.watch_pattern is not None:
        model_files.parse_watch_pattern(model.watch_pattern, where)
    return framework.outputs[model.output]


def _check_env_vars(model: Model, where: str) -> None:
    if not isinstance(model.env_vars, Mapping):
        raise ValueError(f"{where}.env_vars={model.env_vars!r} must be a mapping of names to values")
    for name, value in model.env_vars.items():
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise ValueError(
                f"{where}.env_vars has the name {name!r}; allowed: letters, digits and '_', not "
                "starting with a digit"
            )
        if not isinstance(value, str) or "\0" in value:
            raise ValueError(f"{where}.env_vars.{name}={value!r} must be a string (without NUL)")


# What a ModelHandler given as a model gets as each example (``Model.of(examples=...)``).
EXAMPLE_KINDS = ("numpy", "torch", "torch_int64", "list")


def _check_provided(model: Model, where: str) -> str:
    """Checks a model given as a Beam ModelHandler instance (``Model.of``)."""
    check_handler(model.beam_handler, f"{where}.beam_handler")
    outputs = {"vector": steps.VECTOR, "number": steps.NUMBER}
    if model.output not in outputs:
        raise ValueError(f"{where}.output={model.output!r} is not supported for a ModelHandler; allowed: vector, number")
    unknown = sorted(set(model.options) - {"examples"})
    if unknown:
        raise ValueError(
            f"{where}.options.{unknown[0]} is not taken by a model given as a ModelHandler; allowed: examples"
        )
    examples = model.options.get("examples")
    if examples is not None and examples not in EXAMPLE_KINDS:
        raise ValueError(f"{where}.examples={examples!r} is not supported; allowed: {', '.join(EXAMPLE_KINDS)}")
    _refuse_file_fields(model, where)
    return outputs[model.output]


def check_handler(handler: Any, what: str) -> None:
    """Checks a Beam ModelHandler object (given, or built by a registered factory) as the
    composite calls it; ValueErrors start with ``what``."""
    name = handler.__name__ if isinstance(handler, type) else type(handler).__name__
    if isinstance(handler, type):
        raise ValueError(f"{what} is the class {name}, not a handler; give an instance, e.g. {name}(...)")
    for method in ("load_model", "run_inference", "update_model_path", "batch_elements_kwargs"):
        if not callable(getattr(handler, method, None)):
            raise ValueError(f"{what} ({name}) has no {method}(); allowed: Beam ModelHandlers")
    for kind in ("preprocess", "postprocess"):
        functions = getattr(handler, f"get_{kind}_fns", lambda: [])()
        if functions:
            raise ValueError(
                f"{what} ({name}) has {kind} functions (with_{kind}_fn); give them to the composite as "
                f"{kind}=[Step.custom(fn)], where their failures are reported per row"
            )


def _refuse_file_fields(model: Model, where: str) -> None:
    """A handler that loads its model itself has no file for InferBridge to pin or watch."""
    for name, value in (("sha256", model.sha256), ("watch_pattern", model.watch_pattern)):
        if value:
            raise ValueError(
                f"{where}.{name}={value!r} is not taken by a model whose handler loads it itself; "
                "refresh it with model_updates (Beam's WatchFilePattern, say)"
            )


def _check_json(value: Any, where: str) -> None:
    if value is None or isinstance(value, (str, bool, int)):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{where}={value!r} is not a JSON value; allowed: finite numbers")
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_json(item, f"{where}[{i}]")
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError(f"{where} has key {key!r}; JSON object keys are strings")
            _check_json(item, f"{where}.{key}")
        return
    raise ValueError(
        f"{where} holds a {type(value).__name__}, which is not a JSON value; allowed: strings, "
        "numbers, booleans, null, lists and objects"
    )


def _check_pin(model: Model, where: str) -> None:
    if model.sha256 is None:
        return
    digest = model.sha256
    if not (isinstance(digest, str) and re.fullmatch(r"[0-9a-fA-F]{64}", digest)):
        raise ValueError(
            f"{where}.sha256={digest!r} is not a SHA-256 digest; allowed: 64 hexadecimal digits"
        )
    if model.watch_pattern:
        raise ValueError(
            f"{where}.sha256 and {where}.watch_pattern={model.watch_pattern!r} cannot be combined: "
            "every refreshed file would need the pinned digest; remove one of them"
        )
