"""Model handlers that installed Python packages register under the ``inferbridge.model_handlers``
entry-point group, named from any language (``Model.registered`` in Python,
``BeamHandlerModel.registered`` in Java) with the model's uri and JSON arguments.

Each entry point loads to a callable ``factory(uri, **arguments)`` that returns a Beam
``ModelHandler``: a handler class whose first parameter is the uri, or a function::

    # my_package/handlers.py
    def sentiment(uri, *, timeout_secs=30.0):
        return MyEndpointHandler(endpoint=uri, timeout_secs=timeout_secs)

    # pyproject.toml of my_package
    [project.entry-points."inferbridge.model_handlers"]
    sentiment = "my_package.handlers:sentiment"

A name is served only where the load policy allows it (``--allow-registered-handler``; none by
default). The arguments are checked against the factory's signature when the pipeline is built,
and the factory runs then too. The handler is the operator's code: it gets the uri as the pipeline gives
it and loads (or calls) what that names itself, so the load policy, which governs the files
InferBridge opens, does not apply to it, and it takes no ``sha256`` or ``watch_pattern``.
"""

from __future__ import annotations

import functools
import inspect
import logging
from importlib import metadata
from typing import TYPE_CHECKING, Any, Callable

from inferbridge import steps
from inferbridge.frameworks.base import VECTOR_OR_NUMBER, Framework

if TYPE_CHECKING:
    from apache_beam.ml.inference.base import ModelHandler

    from inferbridge.policy import LoadPolicy
    from inferbridge.spec import Model

ENTRY_POINT_GROUP = "inferbridge.model_handlers"
_LOGGER = logging.getLogger(__name__)


@functools.cache
def _registered() -> tuple[dict[str, tuple[Callable[..., Any], str]], dict[str, str]]:
    """The factories of the installed packages by name (with their origin), and why each
    unusable name cannot be used."""
    found: dict[str, tuple[Callable[..., Any], str]] = {}
    problems: dict[str, str] = {}
    for entry_point in metadata.entry_points(group=ENTRY_POINT_GROUP):
        origin = steps.entry_point_origin(entry_point)
        name = entry_point.name
        if name in found or name in problems:
            problems[name] = f"{origin} and another entry point are both named {name!r}; rename one"
            found.pop(name, None)
            continue
        try:
            factory = entry_point.load()
        except Exception as e:  # a broken package must only break the lookup of its own name
            problems[name] = f"{origin} failed to load: {type(e).__name__}: {e}"
            continue
        if not callable(factory):
            problems[name] = f"{origin} loads to {factory!r}, not a callable factory(uri, **arguments)"
            continue
        found[name] = (factory, origin)
    return found, problems


def _factory(model: Model, where: str) -> tuple[Callable[..., Any], str]:
    found, problems = _registered()
    name = model.format
    if name in problems:
        # Which package and why: for the operator's log, not for whoever named it.
        _LOGGER.error("Registered model handler %r cannot be used: %s", name, problems[name])
        raise ValueError(f"{where}.format={name!r} names a registered handler that cannot be used (see the log)")
    if name not in found:
        raise ValueError(
            f"{where}.format={name!r} is not a registered model handler; registered: "
            f"{', '.join(sorted(found)) or 'none'} (the {ENTRY_POINT_GROUP!r} entry points of the "
            "installed packages)"
        )
    return found[name]


def _check(model: Model, where: str) -> None:
    factory, _ = _factory(model, where)
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):  # no signature to read (a builtin): the factory says at build
        return
    try:
        signature.bind(model.uri, **model.options)
    except TypeError as e:
        raise ValueError(
            f"{where}.options={model.options!r} do not fit the registered handler {model.format!r}: {e}; "
            f"it takes {model.format}{signature}"
        ) from None


def _build(model: Model, uri: str, policy: LoadPolicy, where: str) -> ModelHandler:
    """The registered factory's handler for ``uri`` and the model's arguments, once the policy
    allows the name (the factory runs only then)."""
    policy.check_registered_handler(model.format, where)
    factory, _ = _factory(model, where)
    return factory(uri, **model.options)


# Formats are the registered names, found when a model names one (so none are listed here).
FRAMEWORK = Framework(
    name="registered", formats=(), outputs=VECTOR_OR_NUMBER, check=_check, build=_build, load=None
)
