"""Checks of a model's configuration (``spec.Model``), at construction of the spec.

They import no framework library and no Beam, except for the handler framework, which imports
the allowlisted Beam handler's module to read its constructor's signature.
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, Any, Mapping

from inferbridge import frameworks, model_files

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
    framework = frameworks.lookup(model.framework, where)
    if model.format not in framework.formats:
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
    _check_pin(model, where)
    if model.watch_pattern is not None:
        model_files.parse_watch_pattern(model.watch_pattern, where)
    return framework.outputs[model.output]


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
