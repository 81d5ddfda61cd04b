"""The model frameworks InferBridge serves, one module each, and what the rest asks of them.

Each module (``sklearn``, ``pytorch``, ``onnx``, ``handler``, ``registered``, ``endpoint``) declares its ``FRAMEWORK``: the
formats, outputs and options a ``Model`` may name, how to check them, which formats run code
when loaded, and how to build Beam's handler and load a model file. To add a framework, write
one such module and list it in ``_MODULES`` (the Java wrapper needs one ``Model`` subclass).
This package imports no framework library; those are imported when a model is built or loaded.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

from inferbridge.frameworks import endpoint, handler, onnx, pytorch, registered, sklearn
from inferbridge.frameworks.base import Framework

if TYPE_CHECKING:
    from inferbridge.spec import Model

# In this order in the catalog (tests/golden/models_v1.json) and in error messages.
_MODULES = (sklearn, pytorch, onnx, handler, registered, endpoint)
REGISTRY: dict[str, Framework] = {module.FRAMEWORK.name: module.FRAMEWORK for module in _MODULES}


def lookup(name: Any, where: str) -> Framework:
    """The framework called ``name``; a ValueError naming ``where`` and the frameworks if none."""
    framework = REGISTRY.get(name) if isinstance(name, str) else None
    if framework is None:
        raise ValueError(
            f"{where}.framework={name!r} is not supported; allowed: {', '.join(REGISTRY)}"
        )
    return framework


def runs_code_on_load(model: Model) -> bool:
    """Whether loading ``model`` can run code from its file (pickle, joblib, TorchScript, ...);
    an unknown framework or format counts as one that does."""
    framework = REGISTRY.get(model.framework)
    return framework is None or framework.runs_code(model.format)


def class_to_import(model: Model) -> Optional[tuple[str, Any]]:
    """(option name, value) of the option that names a class ``model``'s loading imports."""
    framework = REGISTRY.get(model.framework)
    if framework is None or framework.class_option is None:
        return None
    name = framework.class_option
    return (name, model.options[name]) if name in model.options else None


def catalog_description() -> dict[str, Any]:
    """Frameworks, formats, outputs (with the kind each gives) and options as plain data: the
    form of ``tests/golden/models_v1.json``, which the Java unit tests compare the Java model
    builders with."""
    return {
        "frameworks": {
            framework.name: {
                "formats": list(framework.formats),
                "outputs": dict(framework.outputs),
                "options": {
                    fmt: {name: {"required": option.required} for name, option in options.items()}
                    for fmt, options in framework.options.items()
                },
            }
            for framework in REGISTRY.values()
        },
        "handlers": list(handler.BEAM_HANDLERS),
    }
