"""Checks an expansion request before Beam decodes any part of it.

Beam's Python expansion servicer rebuilds, from the request, every transform, PCollection, coder
and windowing strategy it carries; several of those are pickled Python or Python code that Beam
would run in the service's process. These checks refuse (or, for unneeded output coder requests,
drop) whatever Beam would unpickle or evaluate, and reduce the client's pipeline options to the
few the composites need, with bounded values.
"""

from __future__ import annotations

import logging
import re
from typing import Any, Callable

from apache_beam.portability import common_urns, python_urns
from apache_beam.portability.api import beam_expansion_api_pb2, external_transforms_pb2, schema_pb2
from google.protobuf import json_format

from inferbridge import bounds, compat, spec
from inferbridge.bounds import shorten
from inferbridge.compat import Refusal

_LOGGER = logging.getLogger("inferbridge.expansion_service")

# URNs whose payload Beam's Python SDK unpickles when it meets them in a request's components.
PICKLED_URNS = frozenset(
    value for name, value in vars(python_urns).items() if name.startswith("PICKLED_") and isinstance(value, str)
)
# What a client may send as the producer of an input: Beam's clients send a placeholder Impulse.
_PLACEHOLDER_URNS = frozenset({"", common_urns.primitives.IMPULSE.urn})
_ROW_CODER_URN = common_urns.coders.ROW.urn


def check_components(request: beam_expansion_api_pb2.ExpansionRequest) -> None:
    """Refuses components that Beam would unpickle or evaluate while reading them.

    Beam's servicer rebuilds every transform the request carries, every PCollection they and the
    expanded transform use, and those PCollections' coders and windowing strategies. A transform
    with a pickled (or any non-placeholder) payload, a pickled coder or window function, a coder
    id that names no coder (Beam unpickles the id itself) or a Row coder whose schema holds Python
    code would each run code in this process. Components that nothing refers to are never read
    (Beam's Python client sends a spare pickled coder), so they are left alone.
    """
    components = request.components
    for transform_id, transform in components.transforms.items():
        if transform.spec.urn not in _PLACEHOLDER_URNS or transform.inputs or transform.subtransforms:
            raise Refusal(
                f"components.transforms[{transform_id!r}] is a {transform.spec.urn or 'composite'} transform; "
                "a request may carry only the placeholder producers of its inputs "
                f"({common_urns.primitives.IMPULSE.urn} without inputs), as Beam's clients send them"
            )
    for tag, pcoll_id in request.transform.inputs.items():
        if pcoll_id not in components.pcollections:
            raise Refusal(f"input {tag!r} names a PCollection the request does not carry")
    roots = []
    for pcoll_id, pcoll in components.pcollections.items():
        roots.append((f"components.pcollections[{pcoll_id!r}]", pcoll.coder_id))
        strategy = components.windowing_strategies.get(pcoll.windowing_strategy_id)
        if strategy is None:
            raise Refusal(
                f"components.pcollections[{pcoll_id!r}] names a windowing strategy the request does not carry"
            )
        where = f"components.windowing_strategies[{pcoll.windowing_strategy_id!r}]"
        if strategy.window_fn.urn in PICKLED_URNS:
            raise Refusal(f"{where} has a pickled Python window function ({strategy.window_fn.urn})")
        roots.append((where, strategy.window_coder_id))
    roots.extend((f"output_coder_requests[{tag!r}]", coder_id) for tag, coder_id in request.output_coder_requests.items())
    seen: set[str] = set()
    for referrer, coder_id in roots:
        _check_coders(components, referrer, coder_id, seen)


def _check_coders(components: Any, referrer: str, coder_id: str, seen: set[str]) -> None:
    """Refuses the coder ``coder_id`` and its component coders if Beam would run code to build them."""
    pending = [(referrer, coder_id)]
    while pending:
        referrer, coder_id = pending.pop()
        if coder_id in seen:
            continue
        if coder_id not in components.coders:
            raise Refusal(f"{referrer} names a coder the request does not carry")
        seen.add(coder_id)
        coder = components.coders[coder_id]
        where = f"components.coders[{coder_id!r}]"
        if coder.spec.urn in PICKLED_URNS:
            raise Refusal(f"{where}, used by {referrer}, is a pickled Python coder ({coder.spec.urn})")
        if coder.spec.urn == _ROW_CODER_URN:
            schema = schema_pb2.Schema()
            try:
                schema.ParseFromString(coder.spec.payload)
            except Exception:  # DecodeError, RecursionError
                raise Refusal(f"{where} is a Row coder without a valid schema") from None
            code = [(path, urn) for path, urn in compat.logical_types(schema) if urn in compat.CODE_LOGICAL_TYPES]
            if code:
                raise Refusal(f"{where}: {compat.describe_logical_types(code)}")
        pending.extend((where, component) for component in coder.component_coder_ids)


def drop_unsafe_output_coder_requests(
    request: beam_expansion_api_pb2.ExpansionRequest,
) -> beam_expansion_api_pb2.ExpansionRequest:
    """The request without output coder requests whose coders Beam would have to unpickle.

    Beam's Python client asks for a pickled ``FastPrimitivesCoder`` output coder whenever it knows
    no output type; honouring it means unpickling client bytes. The composites type their outputs
    themselves, so such a request is dropped rather than refused.
    """
    unsafe = []
    for tag, coder_id in request.output_coder_requests.items():
        try:
            _check_coders(request.components, f"output_coder_requests[{tag!r}]", coder_id, set())
        except Refusal as e:
            unsafe.append(tag)
            _LOGGER.debug("Ignoring output coder request: %s", e)
    if not unsafe:
        return request
    cleaned = beam_expansion_api_pb2.ExpansionRequest()
    cleaned.CopyFrom(request)
    for tag in unsafe:
        del cleaned.output_coder_requests[tag]
    return cleaned


def check_configuration(request: beam_expansion_api_pb2.ExpansionRequest) -> None:
    """Refuses a configuration payload whose schema holds logical types (Python code among them)."""
    payload = external_transforms_pb2.ExternalConfigurationPayload()
    try:
        payload.ParseFromString(request.transform.spec.payload)
    except Exception:  # DecodeError, RecursionError
        raise Refusal("the payload is not an ExternalConfigurationPayload") from None
    compat.check_schema_size(payload.schema)
    found = compat.logical_types(payload.schema)
    if found:
        raise Refusal(compat.describe_logical_types(found))



# Resource hints a client's pipeline options may carry ("name=value", as Beam's clients send
# them): the ones the configuration has, under Beam's names for them.
_RESOURCE_HINTS: dict[str, Callable[[str], None]] = {
    "min_ram": lambda value: spec.check_resource_hints(value, None),
    "minRam": lambda value: spec.check_resource_hints(value, None),
    "accelerator": lambda value: spec.check_resource_hints(None, value),
}
MAX_RESOURCE_HINTS = 8
_VERSION = re.compile(r"[0-9]{1,6}(?:\.[0-9]{1,6}){0,2}")


def _check_streaming(value: Any) -> None:
    if not isinstance(value, bool):
        raise ValueError("must be true or false")


def _check_update_compatibility_version(value: Any) -> None:
    if not isinstance(value, str) or not _VERSION.fullmatch(value):
        raise ValueError("must be a Beam version such as 2.60.0")


def _check_resource_hints(value: Any) -> None:
    if not isinstance(value, list):
        raise ValueError("must be a list of name=value strings")
    bounds.check_count("resource_hints", value, MAX_RESOURCE_HINTS, "hints")
    for hint in value:
        name, _, hint_value = hint.partition("=") if isinstance(hint, str) else ("", "", "")
        if name not in _RESOURCE_HINTS:
            raise ValueError(f"holds {shorten(hint)}; allowed: {', '.join(f'{n}=...' for n in _RESOURCE_HINTS)}")
        _RESOURCE_HINTS[name](hint_value)


# The client pipeline options Beam's servicer may merge into its own, and how each is checked:
# those that change how the composites expand. Every other option is dropped.
PIPELINE_OPTIONS: dict[str, Callable[[Any], None]] = {
    "streaming": _check_streaming,
    "update_compatibility_version": _check_update_compatibility_version,
    "resource_hints": _check_resource_hints,
}
_OPTION_URN = re.compile(r"beam:option:([a-z_]+):v1")


def reduce_pipeline_options(
    request: beam_expansion_api_pb2.ExpansionRequest,
) -> beam_expansion_api_pb2.ExpansionRequest:
    """The request with only the allowlisted pipeline options (``PIPELINE_OPTIONS``), valid ones.

    Beam's servicer merges a request's pipeline options into the service's own and parses some
    of them (resource hints, with a parser whose time grows with the square of the value's
    length). Java clients send all of their options with every expansion, so the others are
    dropped, not refused (logged at debug); an allowlisted option whose value is out of bounds
    is dropped with a warning.
    """
    options = request.pipeline_options
    kept: list[str] = []
    dropped: list[str] = []
    for key, field in options.fields.items():
        match = _OPTION_URN.fullmatch(key)
        check = PIPELINE_OPTIONS.get(match.group(1)) if match else None
        if check is None:
            dropped.append(key)
            continue
        value = json_format.MessageToDict(field)  # a Python bool, number, string, list, dict or None
        try:
            check(value)
        except ValueError as e:
            _LOGGER.warning("Ignoring the client pipeline option %s=%s: %s", match.group(1), shorten(value), e)
            continue
        kept.append(key)
    if len(kept) == len(options):
        return request
    if dropped and _LOGGER.isEnabledFor(logging.DEBUG):
        _LOGGER.debug("Ignoring %d client pipeline options not used by the composites: %s", len(dropped), shorten(dropped))
    reduced = beam_expansion_api_pb2.ExpansionRequest()
    reduced.CopyFrom(request)
    reduced.pipeline_options.Clear()
    for key in kept:
        reduced.pipeline_options.fields[key].CopyFrom(options.fields[key])
    return reduced
