"""The inference spec: the one declarative configuration Python and Java share.

On the wire it is a Beam Row (the payload of an ``ExternalConfigurationPayload``) with the
typed schema of ``RunInferenceConfig`` below; ``tests/golden/run_inference_v1.schema`` records
it, and both languages' unit tests compare their schema to that file.
"""

import dataclasses
import difflib
import functools
import inspect
import json
import math
import numbers
import re
import sys
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, NamedTuple, Optional, Sequence, Union

from inferbridge import bounds, frameworks, model_checks, steps
from inferbridge.bounds import shorten

RUN_INFERENCE_URN = "beam:transform:inferbridge:run_inference:v1"
# The same configuration, on packed blocks of rows (blocks.py).
RUN_INFERENCE_BLOCKS_URN = "beam:transform:inferbridge:run_inference_blocks:v1"

# How batches whose examples differ in shape reach the model: "bucket" runs one model call per
# shape; "pad" pads every example's last axis to the longest in the batch with ``pad_value``.
VARIABLE_LENGTH = ("bucket", "pad")
# Output fields every inference Row has; passthrough fields may not reuse these names.
OUTPUT_FIELDS = ("key", "example", "inference", "model_id")
DEFAULT_METRICS_NAMESPACE = "InferBridge"


def unknown_keyword(function: str, keyword: str, given: Any, allowed: Sequence[str]) -> TypeError:
    """The error for a keyword argument ``function`` does not take: the value, the allowed
    keyword closest to it (a misspelling), and every allowed one."""
    close = difflib.get_close_matches(keyword, allowed, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return TypeError(
        f"{function}() got an unknown keyword argument {keyword}={shorten(given)}{hint}; "
        f"allowed keywords: {', '.join(allowed)}"
    )


# What every Model factory passes on to Model besides its own keywords.
_MODEL_KEYWORDS = ("model_id", "keys", "options", "sha256", "watch_pattern", "env_vars")


def _model_factory(*, makes_options: bool = False) -> Callable[[Callable], classmethod]:
    """A classmethod making a Model whose unknown keyword arguments (``modelid=``) are named
    with the closest allowed one, not Model.__init__'s bare "unexpected keyword argument".
    ``makes_options``: the factory builds ``options`` from keywords of its own."""

    def wrap(factory: Callable) -> classmethod:
        named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        own = [n for n, p in inspect.signature(factory).parameters.items() if p.kind in named and n != "cls"]
        allowed = (*own, *(k for k in _MODEL_KEYWORDS if k not in own and not (makes_options and k == "options")))

        @functools.wraps(factory)
        def checked(cls: type, *args: Any, **kwargs: Any) -> Any:
            for keyword, given in kwargs.items():
                if keyword not in allowed:
                    raise unknown_keyword(f"Model.{factory.__name__}", keyword, given, allowed)
            return factory(cls, *args, **kwargs)

        return classmethod(checked)

    return wrap


class StepConfig(NamedTuple):
    """Wire form of one step: its registered name and its parameters as a JSON object."""

    name: str
    params: str


class ModelConfig(NamedTuple):
    """Wire form of one model."""

    model_id: Optional[str]
    framework: str
    format: str
    uri: str
    output: str
    keys: Sequence[str]
    options: str
    sha256: Optional[str]
    watch_pattern: Optional[str]


@dataclass(frozen=True)
class Step:
    """A step by registered name with parameters, e.g. ``Step("scale", factor=1 / 16)``.

    Python pipelines may also use their own functions: ``Step.custom(fn, produces="label")``, or
    a plain callable in the step list. Such a spec cannot be sent to another language.
    """

    name: str
    params: Mapping[str, Any]
    # For a Python callable: the function and how it is declared; None for a registered step.
    function: Optional[Callable[[Any], Any]] = field(default=None, compare=False)
    declared: Mapping[str, Any] = field(default_factory=dict, compare=False)

    def __init__(self, name: str, /, **params: Any) -> None:
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "params", dict(params))
        object.__setattr__(self, "function", None)
        object.__setattr__(self, "declared", {})

    @classmethod
    def custom(
        cls,
        fn: Callable[[Any], Any],
        *,
        produces: str = steps.ANY,
        accepts: Optional[Sequence[str]] = None,
        batched: bool = False,
    ) -> "Step":
        """A Python function as a step; ``produces`` types the output of a postprocessing one."""
        step = cls(getattr(fn, "__name__", type(fn).__name__))
        object.__setattr__(step, "function", fn)
        object.__setattr__(step, "declared", dict(produces=produces, accepts=accepts, batched=batched))
        return step

    def resolve(self, stage: str) -> tuple[steps.StepDefinition, dict[str, Any]]:
        """The step's definition for ``stage`` and its checked parameters."""
        if self.function is not None:
            return steps.from_callable(stage, self.function, **self.declared), {}
        definition = steps.lookup(stage, self.name)
        return definition, steps.check_params(definition, self.params)

    def to_config(self, stage: str) -> StepConfig:
        if self.function is not None:
            raise ValueError(
                f"{stage} step {self.name!r} is a Python callable and cannot be sent to another "
                "language; register it as a named step under the 'inferbridge.steps' entry point"
            )
        return StepConfig(self.name, json.dumps(dict(self.params), sort_keys=True))

    @classmethod
    def from_config(cls, stage: str, config: Any) -> "Step":
        bounds.check_length(f"{stage} step name", config.name, bounds.MAX_NAME_CHARS)
        params = bounds.json_object(f"{stage} step {config.name!r}: params", config.params, bounds.MAX_PARAMS_JSON_CHARS)
        return cls(config.name, **params)


# --- checks of single fields (name, value), named by the option declarations below --------------


def _require_name(field_name: str, value: Any) -> None:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{field_name} must be a non-empty string, got {shorten(value)}")


def _require_choice(field_name: str, value: Any, allowed: typing.Iterable[str]) -> None:
    if value not in allowed:
        raise ValueError(f"{field_name}={shorten(value)} is not supported; allowed: {', '.join(allowed)}")


def _require_number(field_name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise ValueError(f"{field_name} must be a number, got {shorten(value)}")


def _require_positive_int(field_name: str, value: Any, limit: int) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"{field_name} must be a positive integer, got {shorten(value)}")
    if value is not None and value > limit:
        raise ValueError(f"{field_name}={value} is out of range; allowed: 1 to {limit}")


# A memory size as Beam's min_ram hint takes it: a number and a unit. Checked before Beam's own
# parser, whose time grows with the square of the text's length.
_MEMORY_SIZE = re.compile(r"[0-9]+(?:\.[0-9]+)? ?(?:[KMGTP]i?B|B)")
MEMORY_UNITS = "B, KB, MB, GB, TB, PB, KiB, MiB, GiB, TiB, PiB"
# The most accelerators a hint may ask for: what a runner's 32-bit count holds.
_MAX_ACCELERATORS = 2**31 - 1


def check_resource_hints(min_ram: Optional[str], accelerator: Optional[str]) -> None:
    """Checks the ``min_ram`` and ``accelerator`` resource hints (bounded, shaped, then Beam's parse)."""
    from apache_beam.transforms import resources

    if min_ram is not None:
        if not isinstance(min_ram, str) or len(min_ram) > bounds.MAX_MIN_RAM_CHARS or not _MEMORY_SIZE.fullmatch(min_ram):
            raise ValueError(
                f"min_ram={shorten(min_ram)} is not a memory size: use a number and a unit "
                f"({MEMORY_UNITS}) in at most {bounds.MAX_MIN_RAM_CHARS} characters, e.g. '4GB' or '512MiB'"
            )
        try:
            resources.MinRamHint.parse(min_ram)
        except (ValueError, TypeError) as e:
            raise ValueError(
                f"min_ram={min_ram!r} is not a memory size ({e}); use e.g. '4GB' or '512MiB'"
            ) from None
    if accelerator is not None:
        bounds.check_length("accelerator", accelerator, bounds.MAX_ACCELERATOR_CHARS)
        _require_name("accelerator", accelerator)
        if not (accelerator.isascii() and accelerator.isprintable()):
            raise ValueError(
                f"accelerator={accelerator!r} must be printable ASCII, e.g. "
                "'type:nvidia-tesla-t4;count:1;install-nvidia-driver'"
            )
        pairs = [part.partition(":")[::2] for part in accelerator.split(";")]
        parts = dict(pairs)
        count = parts.get("count", "1")
        if (
            not parts.get("type")
            or len(parts) < len(pairs)  # an option given twice
            or not (count.isdigit() and 0 < int(count) <= _MAX_ACCELERATORS)
        ):
            raise ValueError(
                f"accelerator={accelerator!r} is not an accelerator hint; allowed: 'type:TYPE' then "
                f"';'-separated options, each once: 'count:N' (1 <= N <= {_MAX_ACCELERATORS}) and flags, "
                "e.g. 'type:nvidia-tesla-t4;count:1;install-nvidia-driver'"
            )


StepLike = Union[Step, Callable[[Any], Any]]


def _as_step(item: StepLike) -> Step:
    if isinstance(item, Step):
        return item
    if callable(item):
        return Step.custom(item)
    raise ValueError(f"a step must be a Step or a callable, got {item!r}")


@dataclass(frozen=True)
class Model:
    """Where a model is, how to load and call it, and which keys it serves.

    ``framework``/``format``: sklearn (pickle, joblib, skops), pytorch (state_dict, torchscript),
    onnx (onnx), handler (an allowlisted Beam ModelHandler named by ``format``), registered (a
    handler an installed package registers as ``format``) or endpoint (http_json: an HTTP model).
    ``output`` says what one example's result is: for sklearn the method (``predict`` gives a
    number, ``predict_proba`` a vector); for the others ``vector`` or ``number``.
    ``keys``: the element keys this model serves (matched by their string form; integer keys
    are kept as their decimal text, so ``keys=[1, 2]`` serves integer keys 1 and 2); a model with
    no keys serves every key no other model claims. ``sha256`` pins the file's digest.
    ``watch_pattern``: a file pattern whose newest match replaces the model (streaming).
    ``env_vars``: environment variables set in the worker before the model loads.
    ``beam_handler`` (Python pipelines only, see ``Model.of``): a Beam ModelHandler serving it.
    """

    uri: str
    framework: str = "sklearn"
    format: str = "pickle"
    output: str = "predict"
    model_id: Optional[str] = None
    keys: tuple[str, ...] = ()
    options: Mapping[str, Any] = field(default_factory=dict)
    sha256: Optional[str] = None
    watch_pattern: Optional[str] = None
    env_vars: Mapping[str, str] = field(default_factory=dict)
    beam_handler: Any = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "keys", _key_texts(self.keys))
        object.__setattr__(self, "options", dict(self.options))
        if isinstance(self.env_vars, Mapping):
            object.__setattr__(self, "env_vars", dict(self.env_vars))

    def __hash__(self) -> int:
        return hash((self.uri, self.framework, self.format, self.output, self.model_id, self.keys))

    @_model_factory()
    def sklearn(cls, uri: str, *, format: str = "pickle", output: str = "predict", **kwargs: Any) -> "Model":
        return cls(uri, "sklearn", format, output, **kwargs)

    @_model_factory(makes_options=True)
    def pytorch(
        cls,
        uri: str,
        *,
        model_class: Optional[str] = None,
        model_params: Optional[Mapping[str, Any]] = None,
        device: str = "cpu",
        output: str = "vector",
        **kwargs: Any,
    ) -> "Model":
        """A state_dict (with ``model_class`` as ``"module:Class"``) or, without it, TorchScript."""
        options: dict[str, Any] = {"device": device}
        if model_class is not None:
            options.update(model_class=model_class, model_params=dict(model_params or {}))
        fmt = "state_dict" if model_class is not None else "torchscript"
        return cls(uri, "pytorch", fmt, output, options=options, **kwargs)

    @_model_factory()
    def onnx(cls, uri: str, *, output: str = "vector", **kwargs: Any) -> "Model":
        return cls(uri, "onnx", "onnx", output, **kwargs)

    @_model_factory()
    def handler(cls, name: str, uri: str, *, output: str = "vector", options: Optional[Mapping[str, Any]] = None, **kwargs: Any) -> "Model":
        """An allowlisted Beam ModelHandler by name, with its constructor's keyword arguments."""
        return cls(uri, "handler", name, output, options=dict(options or {}), **kwargs)

    @_model_factory()
    def endpoint(cls, url: str, *, output: str = "vector", options: Optional[Mapping[str, Any]] = None, **kwargs: Any) -> "Model":
        """A model behind an HTTP endpoint taking ``{"instances": [...]}`` and answering
        ``{"predictions": [...]}`` (see ``inferbridge.frameworks.endpoint``); ``url`` must be
        under an allowed endpoint of the load policy. ``options``: timeout_secs, num_retries,
        throttle_delay_secs, bearer_token_env."""
        return cls(url, "endpoint", "http_json", output, options=dict(options or {}), **kwargs)

    @_model_factory(makes_options=True)
    def registered(
        cls, name: str, uri: str, *, output: str = "vector", arguments: Optional[Mapping[str, Any]] = None, **kwargs: Any
    ) -> "Model":
        """The handler an installed package registered as ``name`` (see
        ``inferbridge.frameworks.registered``), built with ``uri`` and ``arguments`` (JSON values)."""
        return cls(uri, "registered", name, output, options=dict(arguments or {}), **kwargs)

    @_model_factory()
    def of(cls, handler: Any, *, output: Optional[str] = None, examples: Optional[str] = None, **kwargs: Any) -> "Model":
        """A Beam ``ModelHandler`` you built, served by the composite (Python pipelines only).

        The composite calls its ``load_model``, its ``run_inference`` with each example as a 1-D
        array of the preprocessed features (at most its ``max_batch_size`` per call), and its
        ``update_model_path`` for model updates. ``output``: ``vector`` or ``number``; by default
        ``number`` for Beam's ``SklearnModelHandlerNumpy`` calling ``predict`` (its default), else
        ``vector``.
        ``examples``: what each example is: ``numpy`` (float64), ``torch`` (a float32 tensor),
        ``torch_int64`` (an int64 tensor, e.g. token ids for a Hugging Face model; a row with a
        fractional value fails) or ``list`` (of floats). By default ``torch`` for Beam's
        PyTorch and Hugging Face tensor handlers, else ``numpy``.
        The model id defaults to the handler's class name.
        """
        if hasattr(handler, "_single_model"):  # a KeyedModelHandler: the composite routes keys
            if not handler._single_model:
                raise ValueError(
                    f"Model.of takes one model, and this KeyedModelHandler holds "
                    f"{len(handler._id_to_mh_map)}; give them as Model.keyed(handler, output=...)"
                )
            handler = handler._unkeyed
        if examples is not None:
            kwargs["options"] = {**kwargs.get("options", {}), "examples": examples}
        output = output or _default_output(handler)
        return cls(type(handler).__name__, "beam", "instance", output, beam_handler=handler, **kwargs)

    @classmethod
    def keyed(cls, handler: Any, *, output: Optional[str] = None) -> tuple["Model", ...]:
        """The models of a Beam ``KeyedModelHandler``, or of a list of ``KeyModelMapping``s (which,
        unlike a KeyedModelHandler, logs no warning about the handlers' batch sizes: the
        composite applies each one's): one model per mapping, serving its keys (as strings), its
        model id the mapping's first key; or one model serving every key. ``output``: as for
        ``Model.of``, of every model."""
        if isinstance(handler, (list, tuple)):
            return _mapped_models(((m.keys[0], m.mh, m.keys) for m in handler), output)
        return _handler_models(handler, output)

    @property
    def id(self) -> str:
        """The ``model_id`` reported with every inference: the given id, else the URI."""
        return self.model_id or self.uri

    def to_config(self) -> ModelConfig:
        if self.python_only:
            raise ValueError(
                f"model {self.id!r} has a Python ModelHandler or env_vars, which only Python "
                "pipelines can run; it has no cross-language form"
            )
        return ModelConfig(
            model_id=self.model_id,
            framework=self.framework,
            format=self.format,
            uri=self.uri,
            output=self.output,
            keys=list(self.keys),
            options=json.dumps(self.options, sort_keys=True),
            sha256=self.sha256,
            watch_pattern=self.watch_pattern,
        )

    @property
    def python_only(self) -> bool:
        return self.beam_handler is not None or bool(self.env_vars)

    @property
    def has_file(self) -> bool:
        """Whether InferBridge opens the model's file; else its handler loads (or calls) what the
        uri names itself: no file to check, pin or watch."""
        if self.beam_handler is not None:
            return False
        framework = frameworks.REGISTRY.get(self.framework)
        return framework is None or not framework.loads_itself

    @classmethod
    def from_config(cls, where: str, config: Any) -> "Model":
        _check_model_strings(where, config)
        return cls(
            uri=config.uri,
            framework=config.framework,
            format=config.format,
            output=config.output,
            model_id=config.model_id,
            keys=tuple(config.keys or ()),
            options=bounds.json_object(f"{where}.options", config.options, bounds.MAX_OPTIONS_JSON_CHARS),
            sha256=config.sha256,
            watch_pattern=config.watch_pattern,
        )


# --- the options of the composite -------------------------------------------------------------
# Each option is declared once, as an ``InferenceSpec`` field made by ``option``: its type on the
# wire, its default and its check. The wire form ``RunInferenceConfig`` (fields in declaration
# order; tests/golden/run_inference_v1.schema), ``to_config``/``from_config`` and the translation
# of Beam's stock requests (compat.py) are derived from these declarations.

_WIRE = "inferbridge.wire"


class Wire(NamedTuple):
    """How one ``InferenceSpec`` field is checked and travels as the ``RunInferenceConfig`` field of
    the same name."""

    type: Any  # the field's type in RunInferenceConfig; Beam derives the Row schema from it
    check: Optional[Callable[[str, Any], None]]  # (field name, value); raises ValueError
    normalize: Callable[[Any], Any]  # the value given -> the value kept, before any check
    to_wire: Callable[[str, Any], Any]  # (field name, value) -> wire value
    from_wire: Callable[[str, Any], Any]  # (field name, decoded wire value) -> value


def _same(value: Any) -> Any:
    return value


def _keep(_: str, value: Any) -> Any:
    return value


def _as_names(value: Any) -> tuple[str, ...]:
    return (value,) if isinstance(value, str) else tuple(value)


def _names_from_wire(_: str, value: Any) -> tuple[str, ...]:
    return tuple(value or ())


def _float_to_wire(_: str, value: Any) -> Optional[float]:
    return None if value is None else float(value)


def option(
    wire_type: Any,
    default: Any = dataclasses.MISSING,
    *,
    check: Optional[Callable[[str, Any], None]] = None,
    normalize: Optional[Callable[[Any], Any]] = None,
    to_wire: Optional[Callable[[str, Any], Any]] = None,
    from_wire: Optional[Callable[[str, Any], Any]] = None,
) -> Any:
    """An ``InferenceSpec`` field that travels as ``wire_type``; keyword-only when it has a default.

    Lists of names take one name or several and travel as lists; numbers travel as floats.
    """
    if wire_type == Sequence[str]:
        normalize, to_wire = normalize or _as_names, to_wire or (lambda _, v: list(v))
        from_wire = from_wire or _names_from_wire
    elif wire_type in (float, Optional[float]):
        to_wire = to_wire or _float_to_wire
    wire = Wire(wire_type, check, normalize or _same, to_wire or _keep, from_wire or _keep)
    return field(default=default, kw_only=default is not dataclasses.MISSING, metadata={_WIRE: wire})


def _check_field_names(name: str, value: tuple[str, ...]) -> None:
    for i, item in enumerate(value):
        _require_name(f"{name}[{i}]", item)
        if item in value[:i]:
            raise ValueError(f"{name}[{i}]={item!r} is given twice; give each field once")


def _check_feature_fields(name: str, value: tuple[str, ...]) -> None:
    if not value:
        raise ValueError(f"{name} must name at least one input field")
    _check_field_names(name, value)


def _check_passthrough_fields(name: str, value: tuple[str, ...]) -> None:
    _check_field_names(name, value)
    for i, item in enumerate(value):
        if item in OUTPUT_FIELDS:
            raise ValueError(
                f"{name}[{i}]={item!r} clashes with an output field; output fields are {', '.join(OUTPUT_FIELDS)}"
            )


def _check_seconds(name: str, value: Any, low: float, high: float, low_open: bool = False) -> None:
    if value is None:
        return
    _require_number(name, value)
    if value <= 0:
        raise ValueError(f"{name}={value!r} must be positive")
    bounds.check_range(name, value, low, high, low_open=low_open)


def _check_finite(name: str, value: Any) -> None:
    _require_number(name, value)
    bounds.check_range(name, value, -math.inf, math.inf)


def _as_models(value: Any) -> tuple["Model", ...]:
    """Models given as a Model, a Beam ModelHandler (a KeyedModelHandler gives one model per
    key mapping) or a sequence of them."""
    if isinstance(value, Model):
        return (value,)
    if _is_model_handler(value):
        return _handler_models(value)
    if isinstance(value, (str, bytes)) or not isinstance(value, typing.Iterable):
        raise ValueError(
            f"models={shorten(value)} is not a model; allowed: a Model (Model.sklearn(path), "
            "Model.pytorch(...), Model.onnx(...), Model.handler(...)), a Beam ModelHandler, or a "
            "list of them"
        )
    models: list[Model] = []
    for i, item in enumerate(value):
        if isinstance(item, Model):
            models.append(item)
        elif _is_model_handler(item):
            models += _handler_models(item)
        else:
            raise ValueError(
                f"models[{i}]={shorten(item)} is not a model; allowed: a Model or a Beam ModelHandler"
            )
    return tuple(models)


def _is_model_handler(value: Any) -> bool:
    # Duck-typed: this module imports no Beam.
    return callable(getattr(value, "load_model", None)) and callable(getattr(value, "run_inference", None))


def _default_output(handler: Any) -> str:
    """``number`` for Beam's scikit-learn handler with its own inference function (``predict``,
    one number per example), else ``vector``. By class name: telling imports nothing."""
    kind = type(handler)
    if (kind.__module__, kind.__name__) != ("apache_beam.ml.inference.sklearn_inference", "SklearnModelHandlerNumpy"):
        return "vector"
    beams = getattr(sys.modules[kind.__module__], "_default_numpy_inference_fn", None)
    return "number" if getattr(handler, "_model_inference_fn", None) is beams else "vector"


def _handler_models(handler: Any, output: Optional[str] = None) -> tuple["Model", ...]:
    """The models a Beam handler stands for: itself, or each model of a KeyedModelHandler, with
    the keys of its KeyModelMapping (as strings) and the first key as its model id."""
    if getattr(handler, "_single_model", True):  # one model, keyed or not
        return (Model.of(handler, output=output),)
    keys: dict[str, list] = {}
    for key, model_id in handler._key_to_id_map.items():
        keys.setdefault(model_id, []).append(key)
    return _mapped_models(
        ((model_id, inner, keys.get(model_id, ())) for model_id, inner in handler._id_to_mh_map.items()), output
    )


def _mapped_models(mappings: Iterable[tuple[Any, Any, Sequence]], output: Optional[str]) -> tuple["Model", ...]:
    """One model per ``(model_id, handler, keys)`` of a Beam key-model mapping, its id and keys
    as strings."""
    return tuple(
        Model.of(inner, output=output, model_id=str(model_id), keys=[str(k) for k in keys])
        for model_id, inner, keys in mappings
    )


def _models_from_wire(name: str, value: Any) -> tuple["Model", ...]:
    return tuple(Model.from_config(f"{name}[{i}]", m) for i, m in enumerate(value or ()))


def _as_steps(value: Any) -> tuple[Step, ...]:
    return tuple(_as_step(s) for s in value)


def _steps_from_wire(stage: str, value: Any) -> tuple[Step, ...]:
    return tuple(Step.from_config(stage, s) for s in value or ())


def _steps_option() -> Any:
    """A list of steps; the field's name is its stage (``preprocess``, ``postprocess``)."""
    return option(
        Sequence[StepConfig],
        (),
        normalize=_as_steps,
        to_wire=lambda stage, v: [s.to_config(stage) for s in v],
        from_wire=_steps_from_wire,
    )


@dataclass(frozen=True)
class InferenceSpec:
    """Everything the inference composite does, validated on construction.

    Each field is one option, declared once (see ``option``); the wire form follows this order.
    """

    key_field: str = option(str, check=_require_name)
    feature_fields: tuple[str, ...] = option(Sequence[str], check=_check_feature_fields)
    passthrough_fields: tuple[str, ...] = option(Sequence[str], (), check=_check_passthrough_fields)
    models: tuple[Model, ...] = option(
        Sequence[ModelConfig],
        normalize=_as_models,
        to_wire=lambda _, v: [m.to_config() for m in v],
        from_wire=_models_from_wire,
    )
    preprocess: tuple[Step, ...] = _steps_option()
    postprocess: tuple[Step, ...] = _steps_option()
    min_batch_size: Optional[int] = option(
        Optional[int], None, check=functools.partial(_require_positive_int, limit=bounds.MAX_BATCH_SIZE)
    )
    max_batch_size: Optional[int] = option(
        Optional[int], None, check=functools.partial(_require_positive_int, limit=bounds.MAX_BATCH_SIZE)
    )
    max_batch_duration_secs: Optional[float] = option(
        Optional[float],
        None,
        check=functools.partial(_check_seconds, low=0, high=bounds.MAX_BATCH_DURATION_SECS, low_open=True),
    )
    variable_length: str = option(str, "bucket", check=functools.partial(_require_choice, allowed=VARIABLE_LENGTH))
    pad_value: float = option(float, 0.0, check=_check_finite)
    max_models_per_worker: Optional[int] = option(
        Optional[int], None, check=functools.partial(_require_positive_int, limit=bounds.MAX_MODELS_PER_WORKER)
    )
    # How often each model's watch_pattern is checked for a newer file.
    watch_interval_secs: float = option(
        float,
        360.0,
        check=functools.partial(
            _check_seconds, low=bounds.MIN_WATCH_INTERVAL_SECS, high=bounds.MAX_WATCH_INTERVAL_SECS
        ),
    )
    min_ram: Optional[str] = option(Optional[str], None, check=lambda _, v: check_resource_hints(v, None))
    accelerator: Optional[str] = option(Optional[str], None, check=lambda _, v: check_resource_hints(None, v))
    metrics_namespace: str = option(str, DEFAULT_METRICS_NAMESPACE, check=_require_name)
    # The kind of the output ``inference`` field after every postprocessing step; derived.
    inference_kind: str = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        for f, wire in OPTIONS:
            object.__setattr__(self, f.name, wire.normalize(getattr(self, f.name)))
        self._check_bounds()
        for f, wire in OPTIONS:
            if wire.check is not None:
                wire.check(f.name, getattr(self, f.name))
        if self.min_batch_size and self.max_batch_size and self.min_batch_size > self.max_batch_size:
            raise ValueError(
                f"min_batch_size={self.min_batch_size} is larger than "
                f"max_batch_size={self.max_batch_size}; make min_batch_size <= max_batch_size"
            )
        object.__setattr__(self, "inference_kind", self._check_models_and_steps())

    def _check_bounds(self) -> None:
        """The sizes of every string and list, before any other check reads (or echoes) them."""
        _check_counts(self)
        for stage in steps.STAGES:
            for i, step in enumerate(getattr(self, stage)):
                bounds.check_length(f"{stage}[{i}].name", step.name, bounds.MAX_NAME_CHARS)
        # Names (str options and lists of them); optional strings bound themselves in their check.
        for f, wire in OPTIONS:
            value = getattr(self, f.name)
            if wire.type is str:
                bounds.check_length(f.name, value, bounds.MAX_NAME_CHARS)
            elif wire.type == Sequence[str]:
                for i, item in enumerate(value):
                    bounds.check_length(f"{f.name}[{i}]", item, bounds.MAX_NAME_CHARS)
        for i, model in enumerate(self.models):
            _check_model_strings(f"models[{i}]", model)

    def _check_models_and_steps(self) -> str:
        """Checks models, key routing and steps; returns the final kind of the inference."""
        if not self.models:
            raise ValueError("models must hold at least one model")
        kinds, ids, owner = {}, {}, {}
        defaults = []
        for i, model in enumerate(self.models):
            where = f"models[{i}]"
            _require_name(f"{where}.uri", model.uri)
            kinds[i] = model_checks.check_model(model, where)
            if model.id in ids:
                raise ValueError(
                    f"{where} has model_id {model.id!r}, already used by models[{ids[model.id]}]; "
                    "give each model a distinct model_id"
                )
            ids[model.id] = i
            if not model.keys:
                defaults.append(i)
            for key in model.keys:
                if not isinstance(key, str) or not key:
                    raise ValueError(
                        f"{where}.keys holds {shorten(key)}; allowed: non-empty strings, or integers "
                        "(kept as their decimal text, which is how integer key fields are routed)"
                    )
                if key in owner:
                    raise ValueError(
                        f"key {key!r} is mapped to models[{owner[key]}] and {where}; "
                        "each key may be served by one model only"
                    )
                owner[key] = i
        if len(defaults) > 1:
            raise ValueError(
                f"models {defaults} have no keys, so each would be the default model; give all "
                "but one of them keys (the one without keys serves every unmapped key)"
            )
        if len(set(kinds.values())) > 1:
            described = ", ".join(f"models[{i}] gives a {k}" for i, k in kinds.items())
            raise ValueError(
                f"all models must give the same kind of output so the output schema is fixed: "
                f"{described}; choose outputs of one kind"
            )
        for step in self.preprocess:
            step.resolve(steps.PREPROCESS)
        kind = kinds[0]
        for step in self.postprocess:
            definition, _ = step.resolve(steps.POSTPROCESS)
            accepts = definition.accepts
            if accepts and kind != steps.ANY and kind not in accepts:
                raise ValueError(
                    f"postprocess step {step.name!r} takes a {' or '.join(accepts)} but receives "
                    f"a {kind} here (model output {self.models[0].output!r}); reorder the steps "
                    "or choose another model output"
                )
            kind = definition.produces or steps.ANY
        return kind

    @property
    def python_only(self) -> bool:
        """Whether a step is a Python function, or a model a Python handler or env_vars, which
        only Python pipelines can run."""
        return any(s.function is not None for s in self.preprocess + self.postprocess) or any(
            m.python_only for m in self.models
        )

    @property
    def default_model(self) -> Optional[Model]:
        """The model serving keys no model lists, or None: such keys are failures."""
        return next((m for m in self.models if not m.keys), None)

    def check_integer_keys(self) -> None:
        """For an integer key field: refuses model keys that are no integer's decimal text. Rows
        are routed by the text of their key, so such a key would never match, and its rows
        would go to the default model (or fail as unmapped) without a word."""
        for i, model in enumerate(self.models):
            for j, key in enumerate(model.keys):
                if not re.fullmatch(r"-?(0|[1-9][0-9]*)", key):
                    raise ValueError(
                        f"models[{i}].keys[{j}]={key!r} can never match: key_field {self.key_field!r} "
                        f"is an integer field, whose keys are matched by their decimal text; allowed: "
                        f"integer keys, e.g. keys=[1, 2] or keys=['1', '2']"
                    )

    def model_for_key(self, key: str) -> Optional[Model]:
        for model in self.models:
            if key in model.keys:
                return model
        return self.default_model

    def to_config(self) -> "RunInferenceConfig":
        return RunInferenceConfig(**{f.name: wire.to_wire(f.name, getattr(self, f.name)) for f, wire in OPTIONS})

    @classmethod
    def from_config(cls, config: Any) -> "InferenceSpec":
        """Builds a spec from a decoded configuration Row, naming any field that is off."""
        check_config_fields(config, RunInferenceConfig, RUN_INFERENCE_URN)
        _check_counts(config)
        return cls(**{f.name: wire.from_wire(f.name, getattr(config, f.name)) for f, wire in OPTIONS})


# Every option of InferenceSpec with how it travels, in wire order.
OPTIONS: tuple[tuple[dataclasses.Field, Wire], ...] = tuple(
    (f, f.metadata[_WIRE]) for f in dataclasses.fields(InferenceSpec) if _WIRE in f.metadata
)

# The wire form of the spec, derived from OPTIONS: field order and types are the cross-language
# contract (tests/golden/run_inference_v1.schema).
RunInferenceConfig = NamedTuple(  # type: ignore[misc]
    "RunInferenceConfig", [(f.name, wire.type) for f, wire in OPTIONS]
)


def check_config_fields(config: Any, config_type: type, urn: str) -> None:
    """Fails, naming missing and unknown fields, when a decoded Row is not a ``config_type``."""
    present = set(getattr(config, "_fields", ()))
    expected = set(config_type._fields)
    missing = sorted(expected - present)
    unknown = sorted(present - expected)
    if missing or unknown:
        raise ValueError(
            f"configuration Row does not match {urn}: missing fields {missing}, "
            f"unknown fields {shorten(unknown)}; expected {sorted(expected)}"
        )


def input_fields(element_type: Any) -> Optional[dict[str, Any]]:
    """The fields of a PCollection's element type and their types; None without a schema."""
    from apache_beam.typehints.row_type import RowTypeConstraint

    row_type = element_type if isinstance(element_type, RowTypeConstraint) else None
    if row_type is None and isinstance(element_type, type):
        row_type = RowTypeConstraint.from_user_type(element_type)
    return None if row_type is None else dict(row_type._fields)


def require_input_fields(fields: Mapping[str, Any], named: typing.Iterable[tuple[str, str]]) -> None:
    """Fails for the first ``(setting, field name)`` whose field the input schema lacks."""
    for setting, value in named:
        if value not in fields:
            raise ValueError(
                f"{setting}={value!r} is not a field of the input schema; available fields: "
                f"{', '.join(fields)}"
            )


def schema_description(config_type: type = RunInferenceConfig) -> list[str]:
    """A configuration schema as ``name: TYPE`` lines, the form of the golden files."""
    from apache_beam.typehints import schemas

    return describe_schema(schemas.named_tuple_to_schema(config_type))


def describe_schema(schema: Any) -> list[str]:
    """A ``schema_pb2.Schema`` as ``name: TYPE`` lines."""
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


def _check_counts(spec: Any) -> None:
    """The lengths of the lists of a spec (an ``InferenceSpec`` or its wire form)."""
    bounds.check_count("feature_fields", spec.feature_fields or (), bounds.MAX_FEATURE_FIELDS, "fields")
    bounds.check_count("passthrough_fields", spec.passthrough_fields or (), bounds.MAX_PASSTHROUGH_FIELDS, "fields")
    models = spec.models or ()
    bounds.check_count("models", models, bounds.MAX_MODELS, "models")
    keys = sum(len(m.keys or ()) for m in models)
    if keys > bounds.MAX_KEYS:
        raise ValueError(f"the models hold {keys} keys together; at most {bounds.MAX_KEYS} are allowed")
    for stage in steps.STAGES:
        bounds.check_count(stage, getattr(spec, stage) or (), bounds.MAX_STEPS, "steps")


def _check_model_strings(where: str, model: Any) -> None:
    """The lengths of a model's strings (a ``Model`` or its wire form), before they are read."""
    bounds.check_length(f"{where}.uri", model.uri, bounds.MAX_URI_CHARS)
    bounds.check_length(f"{where}.model_id", model.model_id, bounds.MAX_ID_CHARS)
    for name in ("framework", "format", "output"):
        bounds.check_length(f"{where}.{name}", getattr(model, name), bounds.MAX_NAME_CHARS)
    bounds.check_length(f"{where}.sha256", model.sha256, bounds.MAX_SHA256_CHARS)
    for i, key in enumerate(model.keys or ()):
        bounds.check_length(f"{where}.keys[{i}]", key, bounds.MAX_ID_CHARS)


# Bits of the largest integer key whose decimal text fits MAX_ID_CHARS (with a sign).
_MAX_KEY_BITS = int((bounds.MAX_ID_CHARS - 1) * math.log2(10))


def _key_texts(keys: Any) -> tuple[Any, ...]:
    """A model's keys, integers (not bools) as their decimal text: rows are routed by the text of
    their key, so ``keys=[1, 2]`` serves the rows of an integer key field whose key is 1 or 2.
    Other values are kept as given, for the spec's checks to name."""
    if isinstance(keys, (str, bytes)):
        raise ValueError(f"keys={shorten(keys)} is one string; allowed: a list of keys, e.g. keys=[{keys!r}]")
    texts = []
    for i, key in enumerate(tuple(keys)):
        if isinstance(key, numbers.Integral) and not isinstance(key, bool):
            if int(key).bit_length() > _MAX_KEY_BITS:
                raise ValueError(
                    f"keys[{i}] is an integer of {int(key).bit_length()} bits; allowed: keys of at most "
                    f"{bounds.MAX_ID_CHARS} characters"
                )
            key = str(int(key))
        texts.append(key)
    return tuple(texts)
