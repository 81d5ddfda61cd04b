"""What a framework module declares, and the helpers framework modules share.

A framework module (``sklearn.py``, ``pytorch.py``, ...) builds one ``Framework`` and names it
``FRAMEWORK``; ``inferbridge.frameworks`` lists the modules. The framework's own library is
imported only inside its functions, and so is Beam's inference package (which imports torch
where it is installed), so that checking a model imports nothing heavy.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional, Sequence

import numpy as np

from inferbridge import steps

if TYPE_CHECKING:
    from apache_beam.ml.inference.base import ModelHandler, PredictionResult

    from inferbridge.model_files import ModelFile
    from inferbridge.policy import LoadPolicy
    from inferbridge.spec import Model


@dataclass(frozen=True)
class Option:
    """One option of a framework format: its JSON type (str, dict, int, or float for any number)
    and whether it must be given."""

    kind: type
    required: bool = False
    choices: tuple[str, ...] = ()
    help: str = ""


# The outputs of a framework whose models give numbers: the caller says which kind to expect.
VECTOR_OR_NUMBER = {"vector": steps.VECTOR, "number": steps.NUMBER}
DEVICE = Option(str, choices=("cpu", "cuda"), help="where the model runs")
_JSON_NAMES = {str: "a string", dict: "a JSON object", float: "a number", int: "an integer"}


@dataclass(frozen=True)
class Framework:
    """One model framework: the values ``Model`` may name for it and how its models are served.

    Every callable gets the model, and ``where`` (e.g. ``models[0]``) to start its errors with.
    """

    name: str
    formats: tuple[str, ...]
    # Each allowed ``output`` and the kind of one example's result (steps.NUMBER or VECTOR).
    outputs: Mapping[str, str]
    # check(model, where): raises ValueError for options the format does not take.
    check: Callable[[Model, str], None]
    # build(model, uri, policy, where): Beam's ModelHandler for the model read from ``uri``,
    # with InferBridge's inference function; it sets no batching.
    build: Callable[[Model, str, LoadPolicy, str], ModelHandler]
    # load(model, file, policy, where): the model, read from its checked, open file only; None
    # for a framework whose handler loads (or calls) what the uri names itself (``loads_itself``).
    load: Optional[Callable[[Model, ModelFile, LoadPolicy, str], Any]]
    # The options of each format, for the catalog (tests/golden/models_v1.json).
    options: Mapping[str, Mapping[str, Option]] = field(default_factory=dict)
    # Formats whose loading cannot run code; every other one loads only from trusted roots.
    safe_formats: tuple[str, ...] = ()
    # The option that names a class to import (the load policy allows it by module prefix).
    class_option: Optional[str] = None
    # predict(model, loaded, features, inference_args, where): the results for a matrix of
    # examples in one call; None: Beam's handler runs each example and the results are stacked.
    predict: Optional[Callable[[Model, Any, np.ndarray, Optional[dict[str, Any]], str], Any]] = None
    # Whether CUDA is available to the framework, for models with options.device 'cuda'; and
    # what to install when it is not.
    cuda_available: Optional[Callable[[], bool]] = None
    cuda_hint: str = ""
    # declared_shape(model, file): the shape of one example (no batch axis) the model file
    # declares, read without loading the model; None when it declares none.
    declared_shape: Optional[Callable[[Model, ModelFile], Optional[tuple[int, ...]]]] = None
    @property
    def loads_itself(self) -> bool:
        """Whether the handler ``build`` makes loads (or calls) what the uri names itself:
        InferBridge opens no file for it (no existence check, sha256 pin or watch pattern)."""
        return self.load is None

    def runs_code(self, fmt: str) -> bool:
        return fmt not in self.safe_formats


def check_options(declared: Mapping[str, Option], model: Model, where: str) -> None:
    """Checks ``model.options`` against the options its format declares."""
    allowed = ", ".join(declared) or "none"
    for name, value in model.options.items():
        option = declared.get(name)
        if option is None:
            raise ValueError(
                f"{where}.options.{name} is not an option of {model.framework} format "
                f"{model.format!r}; allowed: {allowed}"
            )
        if isinstance(value, bool) or not isinstance(value, (int, float) if option.kind is float else option.kind):
            raise ValueError(
                f"{where}.options.{name}={value!r} must be {_JSON_NAMES[option.kind]} "
                f"({option.help})"
            )
        if option.choices and value not in option.choices:
            raise ValueError(
                f"{where}.options.{name}={value!r} is not supported; "
                f"allowed: {', '.join(option.choices)}"
            )
    for name, option in declared.items():
        if option.required and name not in model.options:
            raise ValueError(
                f"{where}.options.{name} is required for {model.framework} format "
                f"{model.format!r}: {option.help}"
            )


def import_library(module: str, package: str, what: str) -> Any:
    """Imports ``module``; a missing one is a ValueError naming ``what`` needs it and the pip
    package that provides it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ValueError(
            f"{what} needs the Python package {package!r}, which is not installed here ({e}); "
            f"install it with: pip install {package}"
        ) from e


def matrix(batch: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
    """A batch as one array: a block's matrix as is, a list of examples stacked."""
    return batch if isinstance(batch, np.ndarray) else np.stack(batch)


def results(batch: Sequence[Any], outputs: Any) -> list[PredictionResult]:
    """One PredictionResult per example, for Beam's handlers' inference functions."""
    # Imported here: Beam's inference package imports torch where it is installed, and checking
    # a model (this package's other use) needs no Beam.
    from apache_beam.ml.inference.base import PredictionResult

    return [PredictionResult(example, output) for example, output in zip(batch, outputs)]
