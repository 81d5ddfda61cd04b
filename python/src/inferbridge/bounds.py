"""The bounds on every value of a configuration, in one place, and the checks that apply them.

A configuration arrives from a client as data; these bounds keep it data. Each value is checked
against its bound before anything else reads it — Beam's parsers included, some of which take
time that grows with the square of their input — and an error names the field, the value
(shortened) and the bound. ``expansion-service/README.md`` documents each bound and why.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Optional, Sized

import numpy as np

# Strings.
MAX_NAME_CHARS = 256  # field names, step names, framework/format/output, variable_length, metrics_namespace
MAX_ID_CHARS = 1024  # model_id and keys
MAX_URI_CHARS = 4096  # model uri: PATH_MAX on Linux
MAX_SHA256_CHARS = 64  # a SHA-256 digest in hex
MAX_MIN_RAM_CHARS = 32  # a memory size: a number and a unit
MAX_ACCELERATOR_CHARS = 256  # e.g. type:nvidia-tesla-t4;count:1;install-nvidia-driver
# JSON texts of the wire form, checked before they are parsed.
MAX_OPTIONS_JSON_CHARS = 64 * 1024  # a model's options
MAX_PARAMS_JSON_CHARS = 1024 * 1024  # a step's params: label lists, per-feature mean/std
MAX_JSON_DEPTH = 32  # nesting of arrays and objects
# Fields of a configuration Row's schema, nested rows' included (InferBridge's own have ~60):
# Beam's RowCoder takes time that grows with their square (4 minutes at 250,000).
MAX_SCHEMA_FIELDS = 1_000

# Counts.
MAX_MODELS = 1024
MAX_KEYS = 100_000  # over all models
MAX_FEATURE_FIELDS = 10_000
MAX_PASSTHROUGH_FIELDS = 1_000
MAX_STEPS = 64  # per stage (preprocess, postprocess)

# Numbers of the configuration.
MAX_BATCH_SIZE = 1_000_000  # min_batch_size, max_batch_size
MAX_BATCH_DURATION_SECS = 3600.0
MIN_WATCH_INTERVAL_SECS = 0.01  # each check lists the watched folder
MAX_WATCH_INTERVAL_SECS = 365 * 86400.0
MAX_MODELS_PER_WORKER = MAX_MODELS

# Step parameters, and the memory a step may allocate.
MAX_STEP_INT = 2**31 - 1  # positive_int parameters (a Java int)
MAX_SHAPE_DIMS = 32  # reshape
MAX_STEP_ROW_BYTES = 16 * 1024 * 1024  # one example's result (2M float64 values)
MAX_STEP_BATCH_BYTES = 256 * 1024 * 1024  # the results of one batch
# Steps make float64 at most: the per-row bound of a parameter assumes 8 bytes per value.
VALUE_BYTES = 8
# Model files read when the pipeline is built for the shape they declare (ONNX): larger ones are
# checked only by the model, when it runs.
MAX_SHAPE_READ_BYTES = 256 * 1024 * 1024

# How much of a refused value an error shows.
_SHOWN_CHARS = 80


def shorten(value: Any) -> str:
    """``repr(value)``, cut to a readable length: errors never echo megabytes back."""
    if isinstance(value, (str, bytes)) and len(value) > _SHOWN_CHARS:
        return f"{value[:_SHOWN_CHARS]!r}... ({len(value)} characters)"
    if isinstance(value, (list, tuple)) and len(value) > 8:
        return f"[{', '.join(shorten(v) for v in value[:8])}, ...] ({len(value)} items)"
    text = repr(value)
    return text if len(text) <= _SHOWN_CHARS else f"{text[:_SHOWN_CHARS]}... ({len(text)} characters)"


def check_length(field: str, value: Any, limit: int) -> None:
    """Fails when ``value`` is a string longer than ``limit`` characters; other types pass."""
    if isinstance(value, str) and len(value) > limit:
        raise ValueError(f"{field}={shorten(value)} is too long: at most {limit} characters are allowed")


def check_count(field: str, values: Sized, limit: int, what: str = "items") -> None:
    if len(values) > limit:
        raise ValueError(f"{field} holds {len(values)} {what}; at most {limit} are allowed")


def check_range(field: str, value: Any, low: float, high: float, *, low_open: bool = False) -> None:
    """Fails unless ``value`` is a finite number in [low, high] (or (low, high])."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{field} must be a finite number, got {shorten(value)}")
    if value > high or value < low or (low_open and value == low):
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}]"
        raise ValueError(f"{field}={value!r} is out of range; allowed: {interval}")


# A JSON string, escapes included: its brackets do not nest. Linear: its alternatives are disjoint.
_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")


def json_depth(text: str) -> int:
    """How deeply arrays and objects nest in ``text`` (0 for a scalar), found without parsing it."""
    brackets = _NOT_BRACKET.sub("", _JSON_STRING.sub("", text)).encode("ascii")
    if not brackets:
        return 0
    codes = np.frombuffer(brackets, dtype=np.uint8)
    opening = (codes == ord("[")) | (codes == ord("{"))
    return int(np.cumsum(np.where(opening, 1, -1)).max())


def json_object(field: str, text: Optional[str], limit: int) -> dict[str, Any]:
    """The JSON object ``text`` (``{}`` for None or empty), its size and nesting checked before parsing."""
    text = text or "{}"
    if not isinstance(text, str):
        raise ValueError(f"{field} must be a JSON object as a string, got {shorten(text)}")
    check_length(field, text, limit)
    depth = json_depth(text)
    if depth > MAX_JSON_DEPTH:
        raise ValueError(
            f"{field} nests arrays and objects {depth} deep; at most {MAX_JSON_DEPTH} levels are allowed"
        )
    try:
        value = json.loads(text)
    except ValueError as e:  # JSONDecodeError, and integers beyond Python's digit limit
        raise ValueError(f"{field} must be a JSON object, got {shorten(text)} ({e})") from None
    if not isinstance(value, dict):
        raise ValueError(f"{field} must be a JSON object, got {shorten(text)}")
    return value
