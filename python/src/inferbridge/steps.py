"""Named, parameterised preprocessing and postprocessing steps.

Steps are referenced by name so that any language can ask for them: a spec carries a step's
name and its parameters, never code. Each step declares its parameters (checked when the spec is
built) and, for postprocessing, the kinds of value it accepts and produces, so the output schema
is known before the pipeline runs.

Per element, a preprocessing function gets one example as a float64 numpy array and returns the
model input; a postprocessing function gets one example's model output (a numpy array, a numpy
scalar or a Python number). A *batched* step's function also takes a whole batch, an array whose
first axis holds the examples, and returns one whose first axis holds their results, row for row
equal to the per-element results; the composite uses that to run such steps once per batch.

Python packages add steps under the ``inferbridge.steps`` entry-point group. Each entry point
loads to a :class:`StepDefinition` (or an iterable of them), usually made with :func:`define`::

    # my_package/steps.py
    import numpy as np
    from inferbridge import steps

    def _clip(params):
        low, high = params["low"], params["high"]
        return lambda x: np.clip(x, low, high)

    clip = steps.define(
        "clip", steps.PREPROCESS, _clip,
        params=[steps.Param("low", "number"), steps.Param("high", "number")],
        batched=True)

    # pyproject.toml of my_package
    [project.entry-points."inferbridge.steps"]
    clip = "my_package.steps:clip"

Name the entry point after its step (an entry point giving several steps may have any name): an
entry point that fails to load is reported when that name is looked up. The package must be
installed wherever the pipeline runs, the expansion service included. User steps may not reuse a
built-in step's name. Python pipelines may also pass plain functions (:func:`from_callable`).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import operator
from dataclasses import dataclass
from importlib import metadata
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

import numpy as np

from inferbridge import bounds

# Kinds of per-element inference values, and the Beam schema type each becomes.
VECTOR = "vector"  # ARRAY<DOUBLE>
NUMBER = "number"  # DOUBLE
INTEGER = "integer"  # INT64
LABEL = "label"  # STRING
MAP = "map"  # MAP<STRING, DOUBLE>: scores by name
ANY = "any"  # unknown: a user function that does not declare what it produces
KINDS = (VECTOR, NUMBER, INTEGER, LABEL, MAP, ANY)

PREPROCESS = "preprocess"
POSTPROCESS = "postprocess"
STAGES = (PREPROCESS, POSTPROCESS)

ENTRY_POINT_GROUP = "inferbridge.steps"

Function = Callable[[Any], Any]
Builder = Callable[[Mapping[str, Any]], Function]


class _Invalid(Exception):
    """A parameter value that does not fit; the message says what it must be."""


def _is_number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float))


def _is_finite(value: Any) -> bool:
    return _is_number(value) and math.isfinite(value)


def _check_number(param: Param, value: Any) -> float:
    if not _is_number(value):
        raise _Invalid("a number")
    if not math.isfinite(value):
        raise _Invalid("a finite number")
    return float(value)


def _check_positive_int(param: Param, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _Invalid(_DESCRIPTIONS["positive_int"])
    if value > bounds.MAX_STEP_INT:
        raise _Invalid(f"at most {bounds.MAX_STEP_INT}")
    return value


def _check_numbers(param: Param, value: Any) -> float | list[float]:
    if isinstance(value, (list, tuple)):
        if value and all(_is_finite(v) for v in value):
            return [float(v) for v in value]
    elif _is_finite(value):
        return float(value)
    raise _Invalid(_DESCRIPTIONS["numbers"])


def _check_string_list(param: Param, value: Any) -> list[str]:
    if not isinstance(value, (list, tuple)) or not value or not all(isinstance(v, str) for v in value):
        raise _Invalid(_DESCRIPTIONS["string_list"])
    return list(value)


def _check_string_map(param: Param, value: Any) -> dict[str, str]:
    if (
        not isinstance(value, Mapping)
        or not value
        or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items())
    ):
        raise _Invalid(_DESCRIPTIONS["string_map"])
    return dict(value)


def _check_shape(param: Param, value: Any) -> list[int]:
    if (
        not isinstance(value, (list, tuple))
        or not value
        or not all(isinstance(d, int) and not isinstance(d, bool) and (d > 0 or d == -1) for d in value)
        or list(value).count(-1) > 1
    ):
        raise _Invalid(_DESCRIPTIONS["shape"])
    if len(value) > bounds.MAX_SHAPE_DIMS or max(value) > bounds.MAX_STEP_INT:
        raise _Invalid(f"at most {bounds.MAX_SHAPE_DIMS} dimensions of at most {bounds.MAX_STEP_INT}")
    return list(value)


def _check_choice(param: Param, value: Any) -> str:
    if value not in param.choices:
        raise _Invalid(param.describe())
    return value


# Parameter kinds: what a value must be, and the check that returns it normalised.
_DESCRIPTIONS = {
    "number": "a number",
    "positive_int": "a positive integer",
    "numbers": "a finite number or a non-empty list of finite numbers",
    "string_list": "a non-empty list of strings",
    "string_map": "a non-empty JSON object of strings to strings",
    "shape": "a non-empty list of positive integers with at most one -1",
}
_CHECKS: dict[str, Callable[[Param, Any], Any]] = {
    "number": _check_number,
    "positive_int": _check_positive_int,
    "numbers": _check_numbers,
    "string_list": _check_string_list,
    "string_map": _check_string_map,
    "shape": _check_shape,
    "choice": _check_choice,
}
PARAM_KINDS = tuple(_CHECKS)


@dataclass(frozen=True)
class Param:
    """One parameter of a step: its name, the kind of value it takes, and whether it is needed.

    Kinds: ``number`` (finite), ``positive_int``, ``numbers`` (a number or a list of them),
    ``string_list`` (non-empty), ``string_map`` (a non-empty JSON object of strings), ``shape``
    (positive integers, at most one -1) and ``choice`` (one of ``choices``). An optional
    parameter (``required=False``) takes ``default`` when absent or None.
    """

    name: str
    kind: str
    required: bool = True
    default: Any = None
    choices: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "choices", tuple(self.choices))
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"a parameter name must be a non-empty string, got {self.name!r}")
        if self.kind not in _CHECKS:
            raise ValueError(
                f"parameter {self.name!r}: kind {self.kind!r} is not known; "
                f"allowed: {', '.join(PARAM_KINDS)}"
            )
        if (self.kind == "choice") != bool(self.choices):
            raise ValueError(f"parameter {self.name!r}: give choices exactly when the kind is 'choice'")
        if self.required and self.default is not None:
            raise ValueError(f"parameter {self.name!r} has a default, so it must have required=False")

    def describe(self) -> str:
        """What a value must be, e.g. ``a positive integer``."""
        if self.kind == "choice":
            return f"one of {', '.join(self.choices)}"
        return _DESCRIPTIONS[self.kind]

    def check(self, stage: str, step: str, value: Any) -> Any:
        """The value normalised (numbers as floats, lists as lists); a clear error if it does not fit."""
        try:
            return _CHECKS[self.kind](self, value)
        except _Invalid as e:
            raise ValueError(
                f"{stage} step {step!r}: parameter {self.name!r} must be {e}, got {bounds.shorten(value)}"
            ) from None


@dataclass(frozen=True)
class StepDefinition:
    """A step: its parameters, how to build its function, and (postprocessing) its kinds.

    ``accepts``: the kinds a postprocessing step takes (empty: any). ``produces``: the kind it
    gives (``any`` when unknown); preprocessing steps declare neither. ``build_batch`` builds the
    batch function of a batched step whose batch call differs from its per-element one.
    ``validate`` checks the parameters together (after each is checked) and raises ValueError.
    ``origin`` says where a user step comes from; empty for built-ins.
    """

    name: str
    stage: str
    params: tuple[Param, ...]
    # Builds the per-element function from checked parameters.
    build: Builder
    accepts: tuple[str, ...] = ()
    produces: str = ""
    batched: bool = False
    build_batch: Optional[Builder] = None
    validate: Optional[Callable[[Mapping[str, Any]], None]] = None
    origin: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"a step name must be a non-empty string, got {self.name!r}")
        where = f"step {self.name!r}"
        if self.stage not in STAGES:
            raise ValueError(f"{where}: stage must be one of {', '.join(STAGES)}, got {self.stage!r}")
        params = tuple(self.params)
        if not all(isinstance(p, Param) for p in params):
            raise ValueError(f"{where}: params must be Param objects, got {params!r}")
        names = [p.name for p in params]
        if len(set(names)) != len(names):
            raise ValueError(f"{where}: parameter names must be distinct, got {names}")
        for p in params:
            if p.default is not None:
                p.check(self.stage, self.name, p.default)
        accepts = (self.accepts,) if isinstance(self.accepts, str) else tuple(self.accepts)
        if not callable(self.build):
            raise ValueError(f"{where}: build must be a callable, got {self.build!r}")
        produces = self.produces
        if self.stage == PREPROCESS:
            if accepts or produces not in ("", ANY):
                raise ValueError(
                    f"{where}: preprocessing steps turn examples into model input and declare no "
                    f"kinds; got accepts={accepts!r}, produces={produces!r}"
                )
            produces = ""
        else:
            for kind in (*accepts, produces or ANY):
                if kind not in KINDS:
                    raise ValueError(f"{where}: kind {kind!r} is not known; allowed: {', '.join(KINDS)}")
            # Accepting "any" is accepting everything, which an empty tuple already says.
            accepts = () if ANY in accepts else accepts
            produces = produces or ANY
        if self.build_batch is not None and not self.batched:
            raise ValueError(f"{where}: build_batch is only for batched steps")
        object.__setattr__(self, "params", params)
        object.__setattr__(self, "accepts", accepts)
        object.__setattr__(self, "produces", produces)

    def build_for_batch(self, params: Mapping[str, Any]) -> Function:
        """The function of a batched step for a whole batch (first axis = examples)."""
        if not self.batched:
            raise ValueError(f"{self.stage} step {self.name!r} is not batched")
        return (self.build_batch or self.build)(params)


def define(
    name: str,
    stage: str,
    build: Builder,
    params: Sequence[Param] = (),
    accepts: Sequence[str] | str = (),
    produces: str = "",
    batched: bool = False,
    *,
    build_batch: Optional[Builder] = None,
    validate: Optional[Callable[[Mapping[str, Any]], None]] = None,
) -> StepDefinition:
    """Declares a step, e.g. for an ``inferbridge.steps`` entry point (see the module docstring)."""
    return StepDefinition(
        name, stage, tuple(params), build, accepts, produces, batched, build_batch, validate
    )


def from_callable(
    stage: str,
    fn: Function,
    *,
    produces: str = ANY,
    accepts: Optional[Sequence[str] | str] = None,
    batched: bool = False,
) -> StepDefinition:
    """A Python function as a step without parameters, named after the function."""
    if not callable(fn):
        raise ValueError(f"{stage} step must be a callable, got {fn!r}")
    name = getattr(fn, "__name__", type(fn).__name__)
    return StepDefinition(
        name,
        stage,
        (),
        lambda _: fn,
        accepts or (),
        produces,
        batched,
        origin="Python callable",
    )


def _item(result: Any) -> Any:
    """A Python scalar for one example's 0-d result; a batch's array as it is."""
    result = np.asarray(result)
    return result.item() if result.ndim == 0 else result


def _scale(params: Mapping[str, Any]) -> Function:
    factor = params["factor"]
    return lambda x: x * factor


def _check_normalize(params: Mapping[str, Any]) -> None:
    mean, std = params["mean"], params["std"]
    if np.any(np.asarray(std) == 0):
        raise ValueError(f"parameter 'std' must be non-zero everywhere, got {std!r}")
    if isinstance(mean, list) and isinstance(std, list) and len(mean) != len(std):
        raise ValueError(
            f"parameters 'mean' and 'std' must have the same length, got {len(mean)} and {len(std)}"
        )


def _normalize(params: Mapping[str, Any]) -> Function:
    mean, std = np.asarray(params["mean"]), np.asarray(params["std"])
    # Per-feature lists must match the last axis; numpy's broadcast error would not say which step.
    features = max(mean.shape + std.shape, default=0)

    def normalize(x: Any) -> np.ndarray:
        x = np.asarray(x)
        if features and x.shape[-1:] != (features,):
            raise ValueError(
                f"preprocess step 'normalize': mean/std give {features} features but the input "
                f"has shape {x.shape}; the last axis must have {features}"
            )
        return (x - mean) / std

    return normalize


def _reshaped(x: Any, shape: tuple[int, ...]) -> np.ndarray:
    try:
        return np.reshape(x, shape)
    except ValueError:
        raise ValueError(
            f"preprocess step 'reshape': cannot reshape an input of shape {np.shape(x)} to {shape}"
        ) from None


def _reshape(params: Mapping[str, Any]) -> Function:
    shape = tuple(params["shape"])
    return lambda x: _reshaped(x, shape)


def _reshape_batch(params: Mapping[str, Any]) -> Function:
    shape = tuple(params["shape"])
    return lambda batch: _reshaped(batch, (np.shape(batch)[0], *shape))


def _cast(params: Mapping[str, Any]) -> Function:
    dtype = np.dtype(params["dtype"])
    return lambda x: np.asarray(x).astype(dtype)


class AllocationTooLarge(ValueError):
    """A step would allocate more than ``bounds.MAX_STEP_ROW_BYTES`` for one example, or more
    than ``bounds.MAX_STEP_BATCH_BYTES`` for one batch; raised before anything is allocated."""


def _check_pad(params: Mapping[str, Any]) -> None:
    longest = bounds.MAX_STEP_ROW_BYTES // bounds.VALUE_BYTES
    if params["length"] > longest:
        raise ValueError(
            f"parameter 'length' must be at most {longest} (a padded example may take at most "
            f"{bounds.MAX_STEP_ROW_BYTES} bytes of float64), got {params['length']}"
        )


def _padded_bytes(params: Mapping[str, Any], shape: tuple[int, ...], itemsize: int) -> int:
    """Bytes of the result of ``pad`` for one example of ``shape``; 0 when nothing is padded."""
    if not shape or shape[-1] >= params["length"]:
        return 0
    return math.prod(shape[:-1]) * params["length"] * itemsize


# Bytes one example's result takes, for the built-in steps whose result can be larger than their
# input: checked before the result is made, per example and per batch.
_RESULT_BYTES: dict[str, Callable[[Mapping[str, Any], tuple[int, ...], int], int]] = {"pad": _padded_bytes}


def check_allocation(definition: StepDefinition, params: Mapping[str, Any], batch: Any) -> None:
    """Refuses to run a step on ``batch`` (an array whose first axis holds the examples) when
    its results would exceed the per-example or per-batch bound; nothing is allocated.

    A composite that runs a per-example step over a batch row by row calls this first. Failing
    a whole batch is fine: the composite halves it and retries, so only single examples over
    the per-example bound end as failures.
    """
    result_bytes = _RESULT_BYTES.get(definition.name)
    # Compared by value: a pipeline's definitions are copies (pickled to the workers).
    if result_bytes is None or _BUILTINS.get(definition.name) != definition:
        return
    batch = np.asarray(batch)
    _check_bytes(definition, len(batch), result_bytes(params, batch.shape[1:], batch.dtype.itemsize))


def _check_bytes(definition: StepDefinition, rows: int, row_bytes: int) -> None:
    where = f"{definition.stage} step {definition.name!r}"
    if row_bytes > bounds.MAX_STEP_ROW_BYTES:
        raise AllocationTooLarge(
            f"{where} would make an example of {row_bytes} bytes; at most {bounds.MAX_STEP_ROW_BYTES} "
            "bytes are allowed per example"
        )
    if rows * row_bytes > bounds.MAX_STEP_BATCH_BYTES:
        raise AllocationTooLarge(
            f"{where} would make {rows} examples of {row_bytes} bytes; at most "
            f"{bounds.MAX_STEP_BATCH_BYTES} bytes are allowed per batch"
        )


def _pad(params: Mapping[str, Any]) -> Function:
    length, value = params["length"], params["value"]

    def pad(x: Any) -> np.ndarray:
        x = np.asarray(x)
        missing = length - x.shape[-1]
        if missing <= 0:
            return x
        _check_bytes(_BUILTINS["pad"], 1, _padded_bytes(params, x.shape, x.dtype.itemsize))
        return np.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, missing)], constant_values=value)

    return pad


def _truncate(params: Mapping[str, Any]) -> Function:
    length = params["length"]
    return lambda x: np.asarray(x)[..., :length]


def _argmax(_: Mapping[str, Any]) -> Function:
    return lambda v: _item(np.argmax(v, axis=-1))


def _softmax(_: Mapping[str, Any]) -> Function:
    def softmax(v: Any) -> np.ndarray:
        v = np.asarray(v, dtype=np.float64)
        # Shifting by the maximum keeps exp from overflowing; the result is the same.
        shifted = np.exp(v - v.max(axis=-1, keepdims=True))
        return shifted / shifted.sum(axis=-1, keepdims=True)

    return softmax


def _distinct_names(params: Mapping[str, Any]) -> None:
    names = params["names"]
    if names is not None and len(set(names)) != len(names):
        raise ValueError(f"parameter 'names' must be distinct strings (they become map keys), got {names!r}")


def _check_top_k(params: Mapping[str, Any]) -> None:
    _distinct_names(params)
    k, names = params["k"], params["names"]
    if names is not None and k > len(names):
        raise ValueError(f"parameter 'k' must be at most the {len(names)} names, got {k!r}")


def _vector(step: str, v: Any, names: Optional[list[str]]) -> np.ndarray:
    scores = np.ravel(np.asarray(v, dtype=np.float64))
    if names is not None and len(names) != scores.size:
        raise ValueError(
            f"postprocess step {step!r}: {len(names)} names are configured but the model gave "
            f"{scores.size} scores"
        )
    return scores


def _top_k(params: Mapping[str, Any]) -> Function:
    k, names = params["k"], params["names"]

    def top_k(v: Any) -> dict[str, float]:
        scores = _vector("top_k", v, names)
        if k > scores.size:
            raise ValueError(f"postprocess step 'top_k': k={k} but the model gave {scores.size} scores")
        # A stable sort of the negated scores keeps the lower index first among equal scores.
        best = np.argsort(-scores, kind="stable")[:k]
        return {(names[i] if names is not None else str(i)): float(scores[i]) for i in best}

    return top_k


def _threshold(params: Mapping[str, Any]) -> Function:
    value = params["value"]
    return lambda x: _item(np.where(np.asarray(x) >= value, 1, 0))


def _round(_: Mapping[str, Any]) -> Function:
    def round_(x: Any) -> Any:
        x = np.asarray(x, dtype=np.float64)
        if not np.all(np.isfinite(x)):
            raise ValueError(f"postprocess step 'round' cannot round {x.tolist()!r} to an integer")
        # Halves go to the even neighbour, like Python's round().
        return _item(np.rint(x).astype(np.int64))

    return round_


def _labels(params: Mapping[str, Any]) -> Function:
    names = params["names"]

    def label(value: Any) -> str:
        try:
            index = operator.index(value)
        except TypeError:
            raise ValueError(f"postprocess step 'labels' takes an integer index, got {value!r}") from None
        if not 0 <= index < len(names):
            raise ValueError(
                f"postprocess step 'labels': index {index} is outside the {len(names)} configured "
                f"names (0 to {len(names) - 1})"
            )
        return names[index]

    return label


def _label_map(params: Mapping[str, Any]) -> Function:
    mapping = params["mapping"]

    def label(value: Any) -> str:
        try:
            return mapping[str(value)]
        except KeyError:
            raise ValueError(
                f"postprocess step 'label_map' has no label for {str(value)!r}; known keys: "
                f"{', '.join(map(repr, mapping))}"
            ) from None

    return label


def _scores(params: Mapping[str, Any]) -> Function:
    names = params["names"]

    def scores(v: Any) -> dict[str, float]:
        return {name: float(s) for name, s in zip(names, _vector("scores", v, names))}

    return scores


_BUILTINS: dict[str, StepDefinition] = {
    d.name: d
    for d in (
        define("scale", PREPROCESS, _scale, [Param("factor", "number")], batched=True),
        define(
            "normalize",
            PREPROCESS,
            _normalize,
            [Param("mean", "numbers"), Param("std", "numbers")],
            batched=True,
            validate=_check_normalize,
        ),
        define(
            "reshape",
            PREPROCESS,
            _reshape,
            [Param("shape", "shape")],
            batched=True,
            build_batch=_reshape_batch,
        ),
        define(
            "cast",
            PREPROCESS,
            _cast,
            [Param("dtype", "choice", choices=("float32", "float64", "int32", "int64"))],
            batched=True,
        ),
        define(
            "pad",
            PREPROCESS,
            _pad,
            [Param("length", "positive_int"), Param("value", "number", required=False, default=0.0)],
            validate=_check_pad,
        ),
        define("truncate", PREPROCESS, _truncate, [Param("length", "positive_int")]),
        define("argmax", POSTPROCESS, _argmax, (), VECTOR, INTEGER, batched=True),
        define("softmax", POSTPROCESS, _softmax, (), VECTOR, VECTOR, batched=True),
        define(
            "top_k",
            POSTPROCESS,
            _top_k,
            [Param("k", "positive_int"), Param("names", "string_list", required=False)],
            VECTOR,
            MAP,
            validate=_check_top_k,
        ),
        define(
            "threshold", POSTPROCESS, _threshold, [Param("value", "number")], NUMBER, INTEGER, batched=True
        ),
        define("round", POSTPROCESS, _round, (), NUMBER, INTEGER, batched=True),
        define("labels", POSTPROCESS, _labels, [Param("names", "string_list")], INTEGER, LABEL),
        define(
            "label_map", POSTPROCESS, _label_map, [Param("mapping", "string_map")], (INTEGER, LABEL), LABEL
        ),
        define(
            "scores",
            POSTPROCESS,
            _scores,
            [Param("names", "string_list")],
            VECTOR,
            MAP,
            validate=_distinct_names,
        ),
    )
}


def entry_point_origin(entry_point: metadata.EntryPoint) -> str:
    dist = getattr(entry_point, "dist", None)
    of = f" of distribution {dist.name!r}" if dist is not None else ""
    return f"entry point '{entry_point.name} = {entry_point.value}'{of}"


def _definitions(loaded: Any) -> list[StepDefinition]:
    if isinstance(loaded, StepDefinition):
        return [loaded]
    if isinstance(loaded, Iterable) and not isinstance(loaded, (str, bytes, Mapping)):
        items = list(loaded)
        if items and all(isinstance(item, StepDefinition) for item in items):
            return items
    raise TypeError(
        f"it must load to a StepDefinition (see inferbridge.steps.define) or an iterable of them, "
        f"got {loaded!r}"
    )


@functools.cache
def _user_steps() -> tuple[dict[str, StepDefinition], dict[str, str]]:
    """Steps from installed packages by name, and why each unusable name cannot be used."""
    found: dict[str, StepDefinition] = {}
    problems: dict[str, str] = {}
    for entry_point in metadata.entry_points(group=ENTRY_POINT_GROUP):
        origin = entry_point_origin(entry_point)
        try:
            definitions = _definitions(entry_point.load())
        except Exception as e:  # a broken package must only break the lookup of its own name
            problems[entry_point.name] = f"{origin} failed to load: {type(e).__name__}: {e}"
            continue
        for definition in definitions:
            name = definition.name
            if name in _BUILTINS:
                problems[name] = f"{origin} defines {name!r}, the name of a built-in step; rename it"
            elif name in found:
                problems[name] = f"{found[name].origin} and {origin} both define {name!r}; rename one"
            else:
                found[name] = dataclasses.replace(definition, origin=origin)
    for name in problems:
        found.pop(name, None)
    return found, problems


def lookup(stage: str, name: str) -> StepDefinition:
    """The definition of step ``name`` for ``stage``; a clear error for anything else."""
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {', '.join(STAGES)}, got {stage!r}")
    user, problems = _user_steps()
    if name in problems:
        raise ValueError(f"{stage} step {name!r} cannot be used: {problems[name]}")
    definition = _BUILTINS.get(name) or user.get(name)
    if definition is not None and definition.stage == stage:
        return definition
    builtin = ", ".join(sorted(d.name for d in _BUILTINS.values() if d.stage == stage))
    own = ", ".join(sorted(d.name for d in user.values() if d.stage == stage)) or "none"
    message = f"{stage} step {name!r} is not registered; available: {builtin}; user steps: {own}"
    if definition is not None:
        message += f"; {name!r} is a {definition.stage} step"
    if problems:
        message += f"; entry points that cannot be used: {', '.join(map(repr, sorted(problems)))}"
    raise ValueError(message)


def catalog() -> list[StepDefinition]:
    """Every usable step: the built-ins, then installed user steps by name."""
    user, _ = _user_steps()
    return [*_BUILTINS.values(), *sorted(user.values(), key=lambda d: d.name)]


def catalog_description() -> list[dict[str, Any]]:
    """The built-in steps as plain data: the form of ``tests/golden/steps_v1.json``, which the
    Java builders read to check step parameters and to type the ``inference`` field."""
    return [
        {
            "name": d.name,
            "stage": d.stage,
            "params": [
                {"name": p.name, "kind": p.kind, "required": p.required, "default": p.default, "choices": list(p.choices)}
                for p in d.params
            ],
            "accepts": list(d.accepts),
            "produces": d.produces,
            "batched": d.batched,
        }
        for d in _BUILTINS.values()
    ]


def _describe_params(definition: StepDefinition) -> str:
    described = []
    for p in definition.params:
        if p.required:
            described.append(f"{p.name} ({p.describe()})")
        elif p.default is None:
            described.append(f"{p.name} ({p.describe()}, optional)")
        else:
            described.append(f"{p.name} ({p.describe()}, default {p.default!r})")
    return ", ".join(described) or "none"


def check_params(definition: StepDefinition, params: Mapping[str, Any]) -> dict[str, Any]:
    """Checks ``params`` against the step's declared parameters and returns them normalised.

    Every declared parameter is in the result; an absent or None optional one has its default.
    """
    where = f"{definition.stage} step {definition.name!r}"
    known = {p.name for p in definition.params}
    unknown = sorted(set(params) - known)
    if unknown:
        raise ValueError(
            f"{where}: unknown parameter(s) {', '.join(map(repr, unknown))}; "
            f"allowed: {_describe_params(definition)}"
        )
    checked: dict[str, Any] = {}
    for p in definition.params:
        if p.required and p.name not in params:
            raise ValueError(
                f"{where}: parameter {p.name!r} is required; allowed: {_describe_params(definition)}"
            )
        value = params.get(p.name)
        if value is None and not p.required:
            # JSON null and an absent optional parameter both mean its default.
            value = p.default
            if value is None:
                checked[p.name] = None
                continue
        checked[p.name] = p.check(definition.stage, definition.name, value)
    if definition.validate is not None:
        try:
            definition.validate(checked)
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None
    return checked
