"""Model loading: checks a model's configuration and builds the Beam ModelHandler that serves it.

Every model is served by a ``CheckedModelHandler`` around one of Beam's framework handlers:

* sklearn: ``SklearnModelHandlerNumpy`` (pickle, joblib); skops files are loaded with
  ``skops.io`` and refused if they hold types skops does not trust by default.
* pytorch: ``PytorchModelHandlerTensor``; a ``state_dict`` is loaded with
  ``torch.load(weights_only=True)`` into ``options.model_class``, TorchScript with
  ``torch.jit.load``. Inputs become float32 tensors on the device.
* onnx: ``OnnxModelHandlerNumpy`` on onnxruntime's CPU provider (CUDA first for device cuda).
* handler: an allowlisted Beam handler (``BEAM_HANDLERS``), its options being constructor
  keyword arguments.

The wrapper loads each model itself, from the file opened once and checked against the load
policy and the sha256 pin (``inferbridge.model_files``), so that nothing opens the path a second
time; Beam's handlers run the loaded models. It supports model refresh for every framework (by
rebuilding the Beam handler for the new path), and gives each example's result as a number or a
flat vector, always as numpy values.

Framework libraries are imported lazily, so ``import inferbridge`` and ``validate`` stay light.
"""

from __future__ import annotations

import enum
import importlib
import inspect
import itertools
import logging
import math
import pickle
import re
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Optional, Sequence

import numpy as np
from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from inferbridge import model_files, steps
from inferbridge.policy import LoadPolicy

if TYPE_CHECKING:
    from inferbridge.spec import Model

_LOGGER = logging.getLogger(__name__)

_GENERIC_OUTPUTS = {"vector": steps.VECTOR, "number": steps.NUMBER}
# For each framework: the allowed ``output`` values and the kind of one example's result.
OUTPUTS: dict[str, dict[str, str]] = {
    "sklearn": {"predict": steps.NUMBER, "predict_proba": steps.VECTOR},
    "pytorch": _GENERIC_OUTPUTS,
    "onnx": _GENERIC_OUTPUTS,
    "handler": _GENERIC_OUTPUTS,
}
# Formats whose loading cannot run code; every other one is loaded only from trusted roots.
_SAFE_FORMATS = {("sklearn", "skops"), ("pytorch", "state_dict"), ("onnx", "onnx")}


@dataclass(frozen=True)
class _Option:
    """One option of a framework format: its JSON type and whether it must be given."""

    kind: type
    required: bool = False
    choices: tuple[str, ...] = ()
    help: str = ""


_DEVICE = _Option(str, choices=("cpu", "cuda"), help="where the model runs")
# The options of each (framework, format); the handler framework's come from Beam signatures.
OPTIONS: dict[tuple[str, str], dict[str, _Option]] = {
    ("sklearn", "pickle"): {},
    ("sklearn", "joblib"): {},
    ("sklearn", "skops"): {},
    ("pytorch", "state_dict"): {
        "model_class": _Option(
            str, required=True, help="the torch.nn.Module class, 'module:Class'"
        ),
        "model_params": _Option(dict, help="keyword arguments for model_class"),
        "device": _DEVICE,
    },
    ("pytorch", "torchscript"): {"device": _DEVICE},
    ("onnx", "onnx"): {
        "device": _DEVICE,
        "output_name": _Option(str, help="which model output is the result"),
    },
}
_JSON_NAMES = {str: "a string", dict: "a JSON object"}


def _matrix(batch: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
    """A batch as one array: a block's matrix as is, a list of examples stacked."""
    return batch if isinstance(batch, np.ndarray) else np.stack(batch)


def _sklearn_call(
    method: str, model: Any, batch: Sequence[np.ndarray] | np.ndarray, inference_args: Any = None
) -> Any:
    return getattr(model, method)(_matrix(batch), **(inference_args or {}))


def _xgboost_inference(batch: Sequence[np.ndarray], model: Any, inference_args: Any = None) -> list:
    """One predict call for the stacked batch (Beam's default calls predict per 2-D example)."""
    import xgboost

    features = np.stack(batch)
    if isinstance(model, xgboost.Booster):
        features = xgboost.DMatrix(features)
    return _results(batch, model.predict(features, **(inference_args or {})))


@dataclass(frozen=True)
class BeamHandler:
    """An allowlisted Beam ModelHandler class, built with the model's uri as ``uri_param``."""

    module: str
    name: str
    uri_param: str
    # The pip packages the handler's Beam module needs.
    package: str
    # Whether loading a model file can run code (then it loads only from trusted roots).
    runs_code: bool
    # Options whose value names a class of ``library``, with the names allowed.
    class_choices: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    library: str = ""
    # Constructor arguments that options may not set (paths outside the policy, callables).
    excluded: tuple[str, ...] = ()
    # Replaces Beam's default inference_fn where that does not take one 1-D array per example.
    inference_fn: Optional[Callable[..., Any]] = None


BEAM_HANDLERS: dict[str, BeamHandler] = {
    "sklearn_numpy": BeamHandler(
        "apache_beam.ml.inference.sklearn_inference", "SklearnModelHandlerNumpy", "model_uri",
        package="scikit-learn", runs_code=True,
    ),
    "xgboost_numpy": BeamHandler(
        "apache_beam.ml.inference.xgboost_inference", "XGBoostModelHandlerNumpy", "model_state",
        package="xgboost datatable", runs_code=False, library="xgboost",
        class_choices={
            "model_class": (
                "XGBClassifier", "XGBRegressor", "XGBRFClassifier", "XGBRFRegressor", "Booster"
            )
        },
        inference_fn=_xgboost_inference,
    ),
    "tensorflow_numpy": BeamHandler(
        "apache_beam.ml.inference.tensorflow_inference", "TFModelHandlerNumpy", "model_uri",
        package="tensorflow", runs_code=True, excluded=("create_model_fn", "custom_weights"),
    ),
}
FORMATS: dict[str, tuple[str, ...]] = {
    "sklearn": ("pickle", "joblib", "skops"),
    "pytorch": ("state_dict", "torchscript"),
    "onnx": ("onnx",),
    "handler": tuple(BEAM_HANDLERS),
}
FRAMEWORKS = tuple(FORMATS)
# Constructor arguments of Beam handlers that InferBridge or the composite sets, never options.
_COMPOSITE_ARGS = frozenset({
    "inference_fn", "min_batch_size", "max_batch_size", "max_batch_duration_secs",
    "max_batch_weight", "element_size_fn", "batch_length_fn", "batch_bucket_boundaries",
    "large_model", "model_copies", "env_vars",
})


def catalog_description() -> dict[str, Any]:
    """Frameworks, formats, outputs (with the kind each gives) and options as plain data: the
    form of ``tests/golden/models_v1.json``, which the Java unit tests compare the Java model
    builders with."""
    return {
        "frameworks": {
            framework: {
                "formats": list(formats),
                "outputs": dict(OUTPUTS[framework]),
                "options": {
                    fmt: {name: {"required": option.required} for name, option in OPTIONS[(framework, fmt)].items()}
                    for fmt in formats
                    if (framework, fmt) in OPTIONS
                },
            }
            for framework, formats in FORMATS.items()
        },
        "handlers": list(BEAM_HANDLERS),
    }


def validate(model: Model, where: str) -> str:
    """Checks framework, format, output, options and sha256; returns "vector" or "number".

    Errors are ValueErrors that start with ``where`` and name the field, the bad value and what
    is allowed. Only the handler framework imports anything (the Beam handler's module, to
    read its constructor's signature).
    """
    if not isinstance(model.uri, str) or not model.uri.strip():
        raise ValueError(f"{where}.uri must be a non-empty string, got {model.uri!r}")
    framework = model.framework
    if framework not in FORMATS:
        raise ValueError(
            f"{where}.framework={framework!r} is not supported; allowed: {', '.join(FRAMEWORKS)}"
        )
    if model.format not in FORMATS[framework]:
        raise ValueError(
            f"{where}.format={model.format!r} is not supported for framework {framework!r}; "
            f"allowed: {', '.join(FORMATS[framework])}"
        )
    outputs = OUTPUTS[framework]
    if model.output not in outputs:
        raise ValueError(
            f"{where}.output={model.output!r} is not supported for framework {framework!r}; "
            f"allowed: {', '.join(outputs)}"
        )
    if not isinstance(model.options, Mapping):
        raise ValueError(f"{where}.options must be a JSON object, got {model.options!r}")
    for name, value in model.options.items():
        _check_json(value, f"{where}.options.{name}")
    if framework == "handler":
        _beam_handler_args(model, where)
    else:
        _check_options(model, where)
    _check_pin(model, where)
    if model.watch_pattern is not None:
        model_files.parse_watch_pattern(model.watch_pattern, where)
    return outputs[model.output]


def runs_code_on_load(model: Model) -> bool:
    """Whether loading ``model`` can run code from its file (pickle, joblib, TorchScript, ...)."""
    if model.framework == "handler":
        entry = BEAM_HANDLERS.get(model.format)
        return entry is None or entry.runs_code
    return (model.framework, model.format) not in _SAFE_FORMATS


def handler_for(model: Model, policy: LoadPolicy, where: str = "model") -> CheckedModelHandler:
    """The ModelHandler that serves ``model`` under ``policy``; it sets no batching.

    The policy is checked now (the model's path, its watch pattern's directory), so a refused
    model fails at construction, and again at each load. The framework library is imported now:
    a missing one fails here, naming its package.
    """
    kind = validate(model, where)
    policy.check(model, model.uri, where)
    if model.watch_pattern is not None:
        watch = model_files.parse_watch_pattern(model.watch_pattern, where)
        policy.check_watch_directory(model, watch.pattern, watch.directory, where)
    return CheckedModelHandler(model, policy, kind, where)


class CheckedModelHandler(ModelHandler):
    """A Beam framework handler with the policy, the pin, model refresh and uniform results.

    ``run_inference`` takes equally shaped numpy arrays and yields one PredictionResult per
    example, in order: its inference a numpy scalar (``number``) or a 1-D numpy array
    (``vector``; a multi-dimensional result is flattened), its model_id the model's id, else
    the current path.
    """

    def __init__(self, model: Model, policy: LoadPolicy, kind: str, where: str = "model") -> None:
        super().__init__()
        self._model = model
        self._policy = policy
        self._kind = kind
        self._where = where
        self._uri = model.uri
        self._inner = _build(model, self._uri, policy, where)
        self._watch = (
            None if model.watch_pattern is None else model_files.parse_watch_pattern(model.watch_pattern, where)
        )

    @property
    def uri(self) -> str:
        """The path the next load reads."""
        return self._uri

    def load_model(self) -> Any:
        with model_files.open_model(self._model, self._uri, self._policy, self._where) as file:
            _warn_if_cuda_missing(self._model, self._uri, self._where)
            return _load(self._model, file, self._policy, self._where)

    def newest_watched(self) -> Optional[str]:
        """The newest file of the model's watch pattern that it may be loaded from, if any."""
        if self._watch is None:
            return None
        return model_files.newest_match(self._watch, self._model, self._policy)

    def update_model_path(self, model_path: Optional[str] = None) -> None:
        # Rebuilding the Beam handler works for every framework, including the ONNX and
        # XGBoost handlers that have no update_model_path of their own.
        if model_path:
            self._uri = model_path
            self._inner = _build(self._model, model_path, self._policy, self._where)

    def run_inference(
        self, batch: Sequence[Any], model: Any, inference_args: Optional[dict[str, Any]] = None
    ) -> Iterable[PredictionResult]:
        results = list(self._inner.run_inference(batch, model, inference_args))
        if len(results) != len(batch):
            raise ValueError(
                f"{self._where}: the model gave {len(results)} results for {len(batch)} examples"
            )
        model_id = self._model.model_id or self._uri
        return [
            PredictionResult(example, self._shaped(result.inference), model_id)
            for example, result in zip(batch, results)
        ]

    def predict_matrix(
        self, features: np.ndarray, model: Any, inference_args: Optional[dict[str, Any]] = None
    ) -> np.ndarray:
        """The model's outputs for a matrix of examples (first axis), as one array.

        Shape ``(n,)`` for a number, ``(n, k)`` for a vector. No per-example objects are made:
        this is the block path's model call.
        """
        framework, output = self._model.framework, self._model.output
        if framework == "sklearn":
            outputs = _sklearn_call(output, model, features, inference_args)
        elif framework == "pytorch":
            outputs = _torch_outputs(features, model, inference_args)
        elif framework == "onnx":
            options = self._model.options
            outputs = _onnx_inference(
                options.get("output_name"), OUTPUTS["onnx"][output], self._where, model, features, inference_args
            )
        else:  # an allowlisted Beam handler: its own per-example results, stacked
            outputs = [r.inference for r in self._inner.run_inference(list(features), model, inference_args)]
            outputs = [self._shaped(o) for o in outputs]
        array = np.asarray(outputs)
        count = len(features)
        if array.ndim == 0 or len(array) != count:
            raise ValueError(
                f"{self._where}: the model gave {array.size if array.ndim == 0 else len(array)} "
                f"results for {count} examples"
            )
        output_name = f"{self._where}.output={output!r}"
        if self._kind == steps.NUMBER:
            if array.size != count:
                raise ValueError(
                    f"{output_name} gives one number per example, but the model gave shape "
                    f"{array.shape[1:]} per example; choose an output that gives a vector"
                )
            return array.reshape(count)
        if array.ndim == 1:
            raise ValueError(
                f"{output_name} gives a vector per example, but the model gave one number; choose "
                "an output that gives a number"
            )
        return array.reshape(count, -1)

    def _shaped(self, value: Any) -> Any:
        if hasattr(value, "detach"):  # a torch tensor, possibly on a GPU
            value = value.detach().cpu()
        array = np.asarray(value)
        output = f"{self._where}.output={self._model.output!r}"
        if self._kind == steps.NUMBER:
            if array.size != 1:
                raise ValueError(
                    f"{output} gives one number per example, but the model gave {array.size} "
                    f"values (shape {array.shape}); choose an output that gives a vector"
                )
            return array.reshape(())[()]
        if array.ndim == 0:
            raise ValueError(
                f"{output} gives a vector per example, but the model gave one number; choose "
                "an output that gives a number"
            )
        return array.reshape(-1)

    def get_num_bytes(self, batch: Sequence[Any]) -> int:
        return sum(np.asarray(example).nbytes for example in batch)

    def get_metrics_namespace(self) -> str:
        return self._inner.get_metrics_namespace()

    def validate_inference_args(self, inference_args: Optional[dict[str, Any]]) -> None:
        self._inner.validate_inference_args(inference_args)


# Validation helpers.


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


def _check_options(model: Model, where: str) -> None:
    declared = OPTIONS[(model.framework, model.format)]
    allowed = ", ".join(declared) or "none"
    for name, value in model.options.items():
        option = declared.get(name)
        if option is None:
            raise ValueError(
                f"{where}.options.{name} is not an option of {model.framework} format "
                f"{model.format!r}; allowed: {allowed}"
            )
        if not isinstance(value, option.kind):
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
    if "model_class" in model.options:
        _split_class_path(model.options["model_class"], f"{where}.options.model_class")


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


def _split_class_path(path: Any, where: str) -> tuple[str, str]:
    """("module", "Class") from "module:Class" or "module.Class"."""
    if isinstance(path, str):
        module, sep, name = path.partition(":") if ":" in path else path.rpartition(".")
        parts = module.split(".") + name.split(".")
        if sep and all(part.isidentifier() for part in parts):
            return module, name
    raise ValueError(f"{where}={path!r} is not a class path; allowed: 'package.module:Class'")


def _beam_handler_args(model: Model, where: str) -> tuple[type, dict[str, Any]]:
    """The allowlisted Beam handler class and its keyword arguments from ``model.options``."""
    entry = BEAM_HANDLERS[model.format]
    module = _import(entry.module, entry.package, f"{where}.format={model.format!r}")
    cls = getattr(module, entry.name)
    parameters = {
        name: p
        for name, p in inspect.signature(cls).parameters.items()
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        and name not in _COMPOSITE_ARGS
        and name not in entry.excluded
        and name != entry.uri_param
    }
    allowed = ", ".join(parameters) or "none"
    kwargs: dict[str, Any] = {}
    for name, value in model.options.items():
        parameter = parameters.get(name)
        option = f"{where}.options.{name}"
        if parameter is None:
            raise ValueError(
                f"{option} is not an option of handler {model.format!r}; allowed: {allowed}"
            )
        if name in entry.class_choices:
            choices = entry.class_choices[name]
            if value not in choices:
                raise ValueError(
                    f"{option}={value!r} is not supported; allowed: {', '.join(choices)}"
                )
            value = getattr(importlib.import_module(entry.library), value)
        elif isinstance(parameter.default, enum.Enum):
            members = type(parameter.default).__members__
            member = members.get(value.upper()) if isinstance(value, str) else None
            if member is None:
                names = ", ".join(m.lower() for m in members)
                raise ValueError(f"{option}={value!r} is not supported; allowed: {names}")
            value = member
        kwargs[name] = value
    for name, parameter in parameters.items():
        if parameter.default is inspect.Parameter.empty and name not in kwargs:
            raise ValueError(f"{where}.options.{name} is required for handler {model.format!r}")
    return cls, kwargs


# Building and loading.


def _import(module: str, package: str, what: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ValueError(
            f"{what} needs the Python package {package!r}, which is not installed here ({e}); "
            f"install it with: pip install {package}"
        ) from e


def _build(model: Model, uri: str, policy: LoadPolicy, where: str) -> ModelHandler:
    """Beam's handler for ``model`` reading ``uri``, with InferBridge's inference function."""
    what = f"{where}.framework={model.framework!r}"
    options = model.options
    if model.framework == "sklearn":
        sklearn = _import("apache_beam.ml.inference.sklearn_inference", "scikit-learn", what)
        if model.format == "skops":
            _import("skops.io", "skops", f"{where}.format='skops'")
        file_types = sklearn.ModelFileType
        file_type = file_types.JOBLIB if model.format == "joblib" else file_types.PICKLE
        return sklearn.SklearnModelHandlerNumpy(
            uri, file_type, inference_fn=partial(_sklearn_call, model.output)
        )
    if model.framework == "pytorch":
        pytorch_inference = _import("apache_beam.ml.inference.pytorch_inference", "torch", what)
        device = "GPU" if options.get("device") == "cuda" else "CPU"
        if model.format == "torchscript":
            return pytorch_inference.PytorchModelHandlerTensor(
                torch_script_model_path=uri, device=device, inference_fn=_torch_inference
            )
        return pytorch_inference.PytorchModelHandlerTensor(
            state_dict_path=uri,
            model_class=_import_model_class(options["model_class"], policy, f"{where}.options.model_class"),
            model_params=dict(options.get("model_params") or {}),
            device=device,
            inference_fn=_torch_inference,
            load_model_args={"weights_only": True},
        )
    if model.framework == "onnx":
        onnx = _import("apache_beam.ml.inference.onnx_inference", "onnxruntime onnx", what)
        kind = OUTPUTS["onnx"][model.output]
        return onnx.OnnxModelHandlerNumpy(
            uri,
            providers=_onnx_providers(model),
            inference_fn=partial(_onnx_inference, options.get("output_name"), kind, where),
        )
    cls, kwargs = _beam_handler_args(model, where)
    entry = BEAM_HANDLERS[model.format]
    if entry.inference_fn is not None:
        kwargs["inference_fn"] = entry.inference_fn
    return cls(**{entry.uri_param: uri}, **kwargs)


def _onnx_providers(model: Model) -> list[str]:
    if model.options.get("device") == "cuda":
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def _import_model_class(path: str, policy: LoadPolicy, where: str) -> type:
    """Imports a torch.nn.Module subclass; call only after the policy allowed ``path``.

    The class found must itself be defined under an allowed prefix: a name such as
    ``allowed_module:nn.Linear`` would otherwise reach a class of any module through the
    allowed module's attributes.
    """
    import torch

    module_name, name = _split_class_path(path, where)
    try:
        found: Any = importlib.import_module(module_name)
        for part in name.split("."):
            found = getattr(found, part)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"{where}={path!r} cannot be imported: {e}") from e
    if not isinstance(found, type):
        raise ValueError(f"{where}={path!r} is not a class")
    defined_in = getattr(found, "__module__", None)
    try:
        policy.check_model_class(f"{defined_in}:{found.__qualname__}", where)
    except ValueError:
        raise ValueError(
            f"{where}={path!r} is a class defined in module {defined_in!r}, which is not under an "
            f"allowed model class prefix ({', '.join(policy.allowed_model_classes) or 'none'}); "
            "name the class by the module that defines it, and allow that module"
        ) from None
    if not issubclass(found, torch.nn.Module):
        raise ValueError(f"{where}={path!r} is not a torch.nn.Module subclass")
    return found


def _load(model: Model, file: model_files.ModelFile, policy: LoadPolicy, where: str) -> Any:
    """Loads ``model`` from its checked, open ``file`` (never from its path)."""
    framework, fmt = model.framework, model.format
    if framework == "sklearn":
        if fmt == "skops":
            return _load_skops(file.data(), model.uri, where)
        if fmt == "joblib":
            import joblib

            return joblib.load(file.file)
        return pickle.load(file.file)
    if framework == "pytorch":
        return _load_torch(model, file, policy, where)
    if framework == "onnx":
        import onnxruntime

        return onnxruntime.InferenceSession(file.data(), providers=_onnx_providers(model))
    # An allowlisted Beam handler loads by path: a fresh one for a path that leads to this file.
    with file.path() as path:
        return _build(model, path, policy, where).load_model()


def _load_torch(model: Model, file: model_files.ModelFile, policy: LoadPolicy, where: str) -> Any:
    import torch

    wanted = model.options.get("device") == "cuda" and torch.cuda.is_available()
    device = torch.device("cuda" if wanted else "cpu")
    if model.format == "torchscript":
        net = torch.jit.load(file.file, map_location=device)
    else:
        model_class = _import_model_class(model.options["model_class"], policy, f"{where}.options.model_class")
        net = model_class(**dict(model.options.get("model_params") or {}))
        net.load_state_dict(torch.load(file.file, map_location=device, weights_only=True))
        net.requires_grad_(False)
    net.to(device)
    net.eval()
    return net


def _load_skops(data: bytes, uri: str, where: str) -> Any:
    import skops.io

    untrusted = skops.io.get_untrusted_types(data=data)
    if untrusted:
        raise ValueError(
            f"{where}.uri={uri!r} is a skops file holding types that skops does not trust, whose "
            f"loading could run code: {', '.join(untrusted)}; save the model without them, or "
            "save it as pickle or joblib under a trusted model root"
        )
    return skops.io.loads(data)


def _warn_if_cuda_missing(model: Model, uri: str, where: str) -> None:
    if model.options.get("device") != "cuda":
        return
    if model.framework == "pytorch":
        import torch

        if torch.cuda.is_available():
            return
        hint = ""
    else:
        import onnxruntime

        if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
            return
        hint = " (onnxruntime-gpu provides CUDA for ONNX)"
    _LOGGER.warning(
        "%s.options.device='cuda', but CUDA is not available here%s; loading %s on the CPU",
        where, hint, uri,
    )


# Inference functions, called by Beam's handlers with numpy examples.


def _results(batch: Sequence[Any], outputs: Any) -> list[PredictionResult]:
    return [PredictionResult(example, output) for example, output in zip(batch, outputs)]


def _torch_inference(
    batch: Sequence[np.ndarray],
    model: Any,
    device: Any,
    inference_args: Any = None,
    model_id: Any = None,
) -> list[PredictionResult]:
    # Beam's ``device`` is the one asked for; the model's own is where it was loaded.
    return _results(batch, _torch_outputs(batch, model, inference_args))


def _torch_outputs(batch: Sequence[np.ndarray] | np.ndarray, model: Any, inference_args: Any = None) -> np.ndarray:
    import torch

    weights = next(itertools.chain(model.parameters(), model.buffers()), None)
    device = weights.device if weights is not None else torch.device("cpu")
    with torch.no_grad():
        inputs = torch.from_numpy(_matrix(batch).astype(np.float32, copy=False)).to(device)
        outputs = model(inputs, **(inference_args or {}))
    return outputs.detach().cpu().numpy()


def _onnx_inference(
    output_name: Optional[str],
    kind: str,
    where: str,
    session: Any,
    batch: Sequence[np.ndarray],
    inference_args: Any = None,
) -> Any:
    """Runs the first input on the batch (float32, or float64 for a double input).

    The result is ``output_name`` if given, else the last output for a vector (a classifier's
    probabilities, as skl2onnx exports them after the labels) and the first for a number.
    """
    first = session.get_inputs()[0]
    dtype = np.float64 if first.type == "tensor(double)" else np.float32
    names = [output.name for output in session.get_outputs()]
    if output_name is None:
        output_name = names[-1] if kind == steps.VECTOR else names[0]
    elif output_name not in names:
        raise ValueError(
            f"{where}.options.output_name={output_name!r} is not an output of the model; "
            f"allowed: {', '.join(names)}"
        )
    feeds = {first.name: _matrix(batch).astype(dtype, copy=False), **(inference_args or {})}
    result = session.run([output_name], feeds)[0]
    if isinstance(result, list) and result and isinstance(result[0], dict):
        # skl2onnx's ZipMap: one {class: probability} map per example; classes in sorted order,
        # as scikit-learn's predict_proba orders them.
        result = np.array([[row[label] for label in sorted(row)] for row in result])
    return result
