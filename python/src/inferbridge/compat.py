"""Requests from Beam's stock ``PythonExternalTransform``, served for InferBridge's composites only.

Beam's Java ``PythonExternalTransform.from("<callable>", "<host:port>")`` (and Beam's Python
``FullyQualifiedNamedTransform``) send the URN ``beam:transforms:python:fully_qualified_named``
with an ``ExternalConfigurationPayload`` whose Row is ``{constructor: STRING, args: ROW,
kwargs: ROW}``. Beam's own expansion service imports whatever ``constructor`` names and calls it,
and decoding that Row already runs code when a field has the logical type ``python_callable``
(evaluated) or ``pythonsdk_any`` (unpickled).

Here such a request is checked before any of its values are decoded: its schema may hold no
logical type at all, its ``constructor`` (the only value read at that point) must be one of
``CONSTRUCTORS``, and ``args`` must be empty. Only then is the Row decoded, and the keyword
arguments become the configuration Row of the composite's own URN (``RUN_INFERENCE_URN`` or
``EVALUATE_URN``), with defaults filled in: ``translate`` returns the equivalent native request,
which the service expands exactly as if the client had sent it.

The keyword arguments of ``inferbridge.Inference`` are the fields of ``RunInferenceConfig``
(``key_field``, ``feature_fields`` and ``models`` required; see ``INFERENCE_REQUIRED``); those of
``inferbridge.Evaluate`` are ``label_field`` (required), ``prediction_field`` and
``model_id_field``. ``expansion-service/README.md`` documents the contract.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import uuid
from typing import Any, Callable, Iterator, Mapping, NamedTuple, Optional, Sequence

from apache_beam.coders import RowCoder
from apache_beam.portability.api import beam_expansion_api_pb2, external_transforms_pb2, schema_pb2
from apache_beam.transforms.external import NamedTupleBasedPayloadBuilder
from google.protobuf.message import DecodeError

from inferbridge import bounds
from inferbridge.bounds import shorten
from inferbridge.evaluate import EVALUATE_URN, Evaluate, EvaluateConfig
from inferbridge.spec import (
    OPTIONS,
    RUN_INFERENCE_URN,
    InferenceSpec,
    Model,
    ModelConfig,
    RunInferenceConfig,
    StepConfig,
)

FULLY_QUALIFIED_NAMED_URN = "beam:transforms:python:fully_qualified_named"
PYTHON_CALLABLE_URN = "beam:logical_type:python_callable:v1"
PYTHON_ANY_URN = "beam:logical:pythonsdk_any:v1"
# Logical types whose values Beam's Python SDK turns into code while decoding them.
CODE_LOGICAL_TYPES = {
    PYTHON_CALLABLE_URN: "Python source code, which Beam evaluates while decoding it",
    PYTHON_ANY_URN: "a pickled Python object, which Beam unpickles while decoding it",
}
PAYLOAD_FIELDS = ("constructor", "args", "kwargs")
ALLOWED_FIELD_TYPES = "STRING, BOOLEAN, BYTE, INT16, INT32, INT64, FLOAT, DOUBLE, BYTES, and ARRAY, ITERABLE, MAP and ROW of these"

# The options of InferenceSpec without a default.
INFERENCE_REQUIRED = tuple(f.name for f, _ in OPTIONS if f.default is dataclasses.MISSING)
EVALUATE_REQUIRED = ("label_field",)
MODEL_REQUIRED = ("uri",)
STEP_REQUIRED = ("name",)


class Refusal(ValueError):
    """The request is refused before its values are decoded: it asks for more than is served."""


class KwargsError(ValueError):
    """The keyword arguments of an allowed constructor do not make a configuration."""


class Constructor(NamedTuple):
    """An allowed constructor name: the URN it stands for and how its kwargs become its config."""

    urn: str
    config: Callable[[Mapping[str, Any]], tuple]


def translate(request: beam_expansion_api_pb2.ExpansionRequest) -> beam_expansion_api_pb2.ExpansionRequest:
    """The native InferBridge request equivalent to a ``fully_qualified_named`` one.

    Raises ``Refusal`` (nothing but the constructor name was decoded) or ``KwargsError``. It
    decodes the client's Row, so the service runs it in an expansion process: Beam makes a type
    for each schema it decodes and keeps it for the life of the process.
    """
    payload, name, constructor = check_fully_qualified_named(request)
    # The schema holds only plain types, so decoding runs no code.
    try:
        row = RowCoder(payload.schema).decode(payload.payload)
    except Exception as e:  # a malformed Row: any decoding error
        raise KwargsError(f"{name}: the payload Row cannot be decoded ({type(e).__name__}: {e})") from None
    kwargs = _as_dict(getattr(row, "kwargs", None))
    try:
        config = constructor.config(kwargs)
    except KwargsError as e:
        raise KwargsError(f"{name}: {e}") from None
    native = beam_expansion_api_pb2.ExpansionRequest()
    native.CopyFrom(request)
    native.transform.spec.urn = constructor.urn
    native.transform.spec.payload = NamedTupleBasedPayloadBuilder(config).build().SerializeToString()
    return native


def check_fully_qualified_named(request: beam_expansion_api_pb2.ExpansionRequest) -> tuple[Any, str, Constructor]:
    """Refuses (``Refusal``) a ``fully_qualified_named`` request that ``translate`` would not
    take, decoding nothing but the constructor's name (what the service checks in its own
    process); else its payload, constructor name and constructor."""
    payload = _parse_payload(request.transform.spec.payload)
    check_schema_size(payload.schema)
    found = logical_types(payload.schema)
    if found:
        raise Refusal(describe_logical_types(found))
    fields = {f.name: f for f in payload.schema.fields}
    unknown = [name for name in fields if name not in PAYLOAD_FIELDS]
    if unknown:
        raise Refusal(f"the payload Row has fields {shorten(unknown)}; allowed: {', '.join(PAYLOAD_FIELDS)}")
    if "args" in fields:
        args_type = fields["args"].type
        if args_type.WhichOneof("type_info") != "row_type":
            raise Refusal("the args field of the payload Row must be a ROW")
        if args_type.row_type.schema.fields:
            names = ", ".join(f.name for f in args_type.row_type.schema.fields)
            raise Refusal(
                f"positional arguments are not accepted (args holds {names if len(names) <= 80 else shorten(names)}); pass every "
                "setting as a keyword argument (withKwargs)"
            )
    if "kwargs" in fields and fields["kwargs"].type.WhichOneof("type_info") != "row_type":
        raise Refusal("the kwargs field of the payload Row must be a ROW")
    name = _read_constructor(payload)
    constructor = CONSTRUCTORS.get(name)
    if constructor is None:
        shown = name if len(name) <= 200 else name[:200] + "..."
        raise Refusal(f"constructor {shown!r} is not allowed")
    return payload, name, constructor


def allowed_constructors() -> str:
    return ", ".join(CONSTRUCTORS)


# --- schemas ------------------------------------------------------------------------------------


def logical_types(schema: schema_pb2.Schema, path: str = "") -> list[tuple[str, str]]:
    """Every ``(field path, logical type URN)`` in a schema, through rows, arrays, maps, options
    and the representations and arguments of logical types themselves."""
    return list(_schema_logical_types(schema, path))


def check_schema_size(schema: schema_pb2.Schema) -> None:
    """Refuses a Row schema of more than ``bounds.MAX_SCHEMA_FIELDS`` fields, nested rows' included,
    before anything decodes a Row of it."""
    count, pending = 0, [schema]
    while pending:
        fields = pending.pop().fields
        count += len(fields)
        if count > bounds.MAX_SCHEMA_FIELDS:
            raise Refusal(
                f"the configuration Row's schema has more than {bounds.MAX_SCHEMA_FIELDS} fields (nested rows "
                "included); allowed: at most that many"
            )
        for field in fields:
            pending.extend(_row_schemas(field.type))


def _row_schemas(field_type: schema_pb2.FieldType) -> Iterator[schema_pb2.Schema]:
    kind = field_type.WhichOneof("type_info")
    if kind == "row_type":
        yield field_type.row_type.schema
    elif kind in ("array_type", "iterable_type"):
        yield from _row_schemas(getattr(field_type, kind).element_type)
    elif kind == "map_type":
        yield from _row_schemas(field_type.map_type.key_type)
        yield from _row_schemas(field_type.map_type.value_type)


def describe_logical_types(found: list[tuple[str, str]]) -> str:
    described = "; ".join(
        f"field {path} has logical type {urn}"
        + (f" ({CODE_LOGICAL_TYPES[urn]})" if urn in CODE_LOGICAL_TYPES else "")
        for path, urn in found
    )
    return f"{described}; configuration Rows hold no logical types: allowed field types are {ALLOWED_FIELD_TYPES}"


def _schema_logical_types(schema: schema_pb2.Schema, path: str) -> Iterator[tuple[str, str]]:
    for option in schema.options:
        if option.HasField("type"):
            yield from _type_logical_types(option.type, f"{path or '<row>'}<option {option.name}>")
    for field in schema.fields:
        field_path = f"{path}.{field.name}" if path else field.name
        yield from _type_logical_types(field.type, field_path)
        for option in field.options:
            if option.HasField("type"):
                yield from _type_logical_types(option.type, f"{field_path}<option {option.name}>")


def _type_logical_types(field_type: schema_pb2.FieldType, path: str) -> Iterator[tuple[str, str]]:
    kind = field_type.WhichOneof("type_info")
    if kind == "array_type":
        yield from _type_logical_types(field_type.array_type.element_type, f"{path}[]")
    elif kind == "iterable_type":
        yield from _type_logical_types(field_type.iterable_type.element_type, f"{path}[]")
    elif kind == "map_type":
        yield from _type_logical_types(field_type.map_type.key_type, f"{path}<key>")
        yield from _type_logical_types(field_type.map_type.value_type, f"{path}<value>")
    elif kind == "row_type":
        yield from _schema_logical_types(field_type.row_type.schema, path)
    elif kind == "logical_type":
        logical = field_type.logical_type
        yield path, logical.urn
        if logical.HasField("representation"):
            yield from _type_logical_types(logical.representation, f"{path}<representation>")
        if logical.HasField("argument_type"):
            yield from _type_logical_types(logical.argument_type, f"{path}<argument>")


def _parse_payload(data: bytes) -> external_transforms_pb2.ExternalConfigurationPayload:
    payload = external_transforms_pb2.ExternalConfigurationPayload()
    try:
        payload.ParseFromString(data)
    except (DecodeError, RecursionError):
        raise Refusal("the payload is not an ExternalConfigurationPayload") from None
    if not payload.schema.fields:
        raise Refusal("the payload is not an ExternalConfigurationPayload with a Row schema")
    return payload


_CONSTRUCTOR_ONLY = schema_pb2.Schema(
    id=str(uuid.uuid5(uuid.NAMESPACE_URL, "inferbridge:fully_qualified_named:constructor")),
    fields=[schema_pb2.Field(name="constructor", type=schema_pb2.FieldType(atomic_type=schema_pb2.STRING))],
)
_constructor_coder: Optional[RowCoder] = None


def _read_constructor(payload: external_transforms_pb2.ExternalConfigurationPayload) -> str:
    """Decodes the constructor name alone: the first value of the Row, as Beam's clients write it."""
    global _constructor_coder
    fields = payload.schema.fields
    first = fields[0]
    if (
        first.name != "constructor"
        or first.type.WhichOneof("type_info") != "atomic_type"
        or first.type.atomic_type != schema_pb2.STRING
    ):
        raise Refusal("the first field of the payload Row must be constructor: STRING")
    if payload.schema.encoding_positions_set and first.encoding_position != min(f.encoding_position for f in fields):
        raise Refusal("the constructor must be the first value encoded in the payload Row")
    if _constructor_coder is None:
        _constructor_coder = RowCoder(_CONSTRUCTOR_ONLY)
    try:
        # Decodes the Row's header and its first value only; the rest is not read.
        name = _constructor_coder.decode(payload.payload).constructor
    except Exception:  # truncated or malformed bytes
        raise Refusal("the constructor name in the payload Row cannot be decoded") from None
    if not name:
        raise Refusal("the payload Row names no constructor")
    return name


# --- keyword arguments -> configuration ---------------------------------------------------------


def _as_dict(row: Any) -> dict[str, Any]:
    if row is None:
        return {}
    if isinstance(row, Mapping):
        return dict(row)
    if hasattr(row, "_asdict"):
        return dict(row._asdict())
    return {name: getattr(row, name) for name in getattr(row, "_fields", ())}


def _check_names(where: str, values: Mapping[str, Any], allowed: tuple[str, ...], required: tuple[str, ...]) -> None:
    unknown = sorted(set(values) - set(allowed))
    if unknown:
        raise KwargsError(f"{where} has unknown fields {shorten(unknown)}; allowed: {', '.join(allowed)}")
    missing = [name for name in required if values.get(name) is None]
    if missing:
        raise KwargsError(f"{where} lacks the required fields {missing} (required: {', '.join(required)})")


def _string(where: str, value: Any) -> str:
    if not isinstance(value, str):
        raise KwargsError(f"{where} must be a STRING, got {shorten(value)}")
    return value


def _optional_string(where: str, value: Any) -> Optional[str]:
    return None if value is None else _string(where, value)


def _strings(where: str, value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, (bytes, Mapping)) or not hasattr(value, "__iter__"):
        raise KwargsError(f"{where} must be an ARRAY<STRING> (or one STRING), got {shorten(value)}")
    return [_string(f"{where}[{i}]", item) for i, item in enumerate(value)]


def _integer(where: str, value: Any) -> Optional[int]:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise KwargsError(f"{where} must be an integer (INT64), got {shorten(value)}")
    return int(value)


def _number(where: str, value: Any) -> Optional[float]:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise KwargsError(f"{where} must be a number (DOUBLE), got {shorten(value)}")
    return float(value)


def _json_text(where: str, value: Any, limit: int) -> str:
    text = _string(where, value)
    try:
        bounds.json_object(where, text, limit)
    except ValueError as e:
        raise KwargsError(str(e)) from None
    return text


def _rows(where: str, value: Any) -> list[dict[str, Any]]:
    if isinstance(value, (str, bytes, Mapping)) or not hasattr(value, "__iter__"):
        raise KwargsError(f"{where} must be an ARRAY of ROWs, got {shorten(value)}")
    rows = []
    for i, item in enumerate(value):
        if not hasattr(item, "_fields") and not isinstance(item, Mapping):
            raise KwargsError(f"{where}[{i}] must be a ROW, got {shorten(item)}")
        rows.append(_as_dict(item))
    return rows


_SPEC_DEFAULTS = {f.name: f.default for f in dataclasses.fields(InferenceSpec) if f.default is not dataclasses.MISSING}
_MODEL_DEFAULTS = {f.name: f.default for f in dataclasses.fields(Model) if f.default is not dataclasses.MISSING}
# Per framework, the format and output its factory (Model.sklearn, Model.onnx, ...) defaults to.
_FORMAT_DEFAULTS = {"sklearn": "pickle", "onnx": "onnx"}
_OUTPUT_DEFAULTS = {"sklearn": "predict"}
_VECTOR = "vector"


def _default(name: str, value: Any) -> Any:
    if value is not None:
        return value
    default = _SPEC_DEFAULTS.get(name)
    return list(default) if isinstance(default, tuple) else default


def _model_config(where: str, values: Mapping[str, Any]) -> ModelConfig:
    _check_names(where, values, ModelConfig._fields, MODEL_REQUIRED)
    framework = _string(f"{where}.framework", values.get("framework") or _MODEL_DEFAULTS["framework"])
    options = _json_text(f"{where}.options", values.get("options") or "{}", bounds.MAX_OPTIONS_JSON_CHARS)
    fmt = values.get("format")
    if fmt is None:
        if framework == "pytorch":
            fmt = "state_dict" if "model_class" in json.loads(options) else "torchscript"
        elif framework in _FORMAT_DEFAULTS:
            fmt = _FORMAT_DEFAULTS[framework]
        else:
            raise KwargsError(f"{where}.format is required for framework {framework!r} (the handler name)")
    keys = values.get("keys")
    return ModelConfig(
        model_id=_optional_string(f"{where}.model_id", values.get("model_id")),
        framework=framework,
        format=_string(f"{where}.format", fmt),
        uri=_string(f"{where}.uri", values["uri"]),
        output=_string(f"{where}.output", values.get("output") or _OUTPUT_DEFAULTS.get(framework, _VECTOR)),
        keys=[] if keys is None else _strings(f"{where}.keys", keys),
        options=options,
        sha256=_optional_string(f"{where}.sha256", values.get("sha256")),
        watch_pattern=_optional_string(f"{where}.watch_pattern", values.get("watch_pattern")),
    )


def _step_configs(where: str, value: Any) -> list[StepConfig]:
    steps = []
    for i, values in enumerate(_rows(where, value)):
        at = f"{where}[{i}]"
        _check_names(at, values, StepConfig._fields, STEP_REQUIRED)
        steps.append(StepConfig(_string(f"{at}.name", values["name"]), _json_text(f"{at}.params", values.get("params") or "{}", bounds.MAX_PARAMS_JSON_CHARS)))
    return steps


def _model_configs(where: str, value: Any) -> list[ModelConfig]:
    return [_model_config(f"{where}[{i}]", m) for i, m in enumerate(_rows(where, value))]


# How a keyword argument of each wire type of the InferenceSpec options is read.
_READERS: dict[Any, Callable[[str, Any], Any]] = {
    str: _string,
    Optional[str]: _optional_string,
    Sequence[str]: _strings,
    int: _integer,
    Optional[int]: _integer,
    float: _number,
    Optional[float]: _number,
    Sequence[ModelConfig]: _model_configs,
    Sequence[StepConfig]: _step_configs,
}


def _reader(name: str, wire_type: Any) -> Callable[[str, Any], Any]:
    if wire_type not in _READERS:
        raise TypeError(
            f"InferenceSpec option {name!r} has the wire type {wire_type!r}, which stock requests "
            f"cannot carry; wire types read here: {', '.join(map(repr, _READERS))}"
        )
    return _READERS[wire_type]


# Checked at import: every option of InferenceSpec can be read from a stock request.
_INFERENCE_READERS = {f.name: _reader(f.name, wire.type) for f, wire in OPTIONS}


def inference_config(kwargs: Mapping[str, Any]) -> RunInferenceConfig:
    """``RunInferenceConfig`` from keyword arguments; omitted or null fields take the defaults of
    ``InferenceSpec`` (of ``Model`` for model rows)."""
    _check_names("kwargs", kwargs, RunInferenceConfig._fields, INFERENCE_REQUIRED)
    return RunInferenceConfig(
        **{name: read(name, _default(name, kwargs.get(name))) for name, read in _INFERENCE_READERS.items()}
    )


_EVALUATE_DEFAULTS = {
    name: p.default
    for name, p in inspect.signature(Evaluate.__init__).parameters.items()
    if p.default is not inspect.Parameter.empty
}


def evaluate_config(kwargs: Mapping[str, Any]) -> EvaluateConfig:
    """``EvaluateConfig`` from keyword arguments; omitted or null ones take ``Evaluate``'s defaults."""
    _check_names("kwargs", kwargs, EvaluateConfig._fields, EVALUATE_REQUIRED)
    return EvaluateConfig(
        *(
            _string(name, kwargs[name] if kwargs.get(name) is not None else _EVALUATE_DEFAULTS[name])
            for name in EvaluateConfig._fields
        )
    )


CONSTRUCTORS: dict[str, Constructor] = {
    "inferbridge.Inference": Constructor(RUN_INFERENCE_URN, inference_config),
    "inferbridge.inference.Inference": Constructor(RUN_INFERENCE_URN, inference_config),
    "inferbridge.Evaluate": Constructor(EVALUATE_URN, evaluate_config),
    "inferbridge.evaluate.Evaluate": Constructor(EVALUATE_URN, evaluate_config),
}
