"""Serving a model: the Beam ModelHandler that loads it safely and runs it.

Every model is served by a ``CheckedModelHandler`` around the Beam handler its framework builds
(``inferbridge.frameworks``, one module per framework). The wrapper loads each model itself, from
the file opened once and checked against the load policy and the sha256 pin
(``inferbridge.model_files``), so that nothing opens the path a second time; Beam's handlers run
the loaded models. It supports model refresh for every framework (by rebuilding the Beam handler
for the new path), and gives each example's result as a number or a flat vector, always as numpy
values.

A model's configuration is checked by ``inferbridge.model_checks``, which imports no Beam.
"""

from __future__ import annotations

import copy
import logging
import os
import pickle
import threading
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Optional, Sequence

import numpy as np

from inferbridge import bounds, frameworks, model_checks, model_files, steps
from inferbridge.beam_ml import ModelHandler, PredictionResult
from inferbridge.policy import LoadPolicy

if TYPE_CHECKING:
    from inferbridge.spec import Model

_LOGGER = logging.getLogger(__name__)


_ENV_LOCK = threading.Lock()


def set_env_vars(env_vars: Mapping[str, str]) -> None:
    """Sets a model's ``env_vars`` in this worker process (for every model it holds: the
    environment is the process's), one loading thread at a time."""
    if env_vars:
        with _ENV_LOCK:
            os.environ.update(env_vars)


def handler_for(model: Model, policy: LoadPolicy, where: str = "model") -> CheckedModelHandler | ProvidedModelHandler:
    """The ModelHandler that serves ``model`` under ``policy``; it sets no batching.

    The policy is checked now (the model's path, its watch pattern's directory), so a refused
    model fails at construction, and again at each load; so is a sha256 pin (the file is read
    once, here, and again at each load). The framework library is imported now: a missing one
    fails here, naming its package.
    """
    kind = model_checks.check_model(model, where)
    if model.beam_handler is not None:
        return ProvidedModelHandler(model, kind, where, model.beam_handler)
    if not model.has_file:  # a registered or endpoint handler: built now, checked like Model.of's
        built = frameworks.REGISTRY[model.framework].build(model, model.uri, policy, where)
        model_checks.check_handler(built, f"the handler {where}.format={model.format!r} built")
        return ProvidedModelHandler(model, kind, where, built)
    policy.check(model, model.uri, where)
    if model.sha256:
        with model_files.open_model(model, model.uri, policy, where):
            pass
    if model.watch_pattern is not None:
        watch = model_files.parse_watch_pattern(model.watch_pattern, where)
        policy.check_watch_directory(model, watch.pattern, watch.directory, where)
    return CheckedModelHandler(model, policy, kind, where)


# How files of the scikit-learn formats begin: a zip archive (skops), a pickle of protocol 2+.
_ZIP = b"PK\x03\x04"
_PICKLE = b"\x80"


class ModelLoadError(Exception):
    """A model file that its framework could not load (corrupt, or of another format than
    given), naming the file, the framework and format, and what failed."""

    def __init__(self, model: Model, uri: str, where: str, error: BaseException, head: bytes = b"") -> None:
        hint = ""
        if head.startswith(_ZIP):
            if model.format != "skops":
                hint = "; the file is a zip archive: a skops file needs format 'skops' (Java: SklearnModel.skops)"
        elif head.startswith(_PICKLE):
            if model.format == "pickle" and isinstance(error, pickle.UnpicklingError):
                # joblib writes numpy arrays raw between pickle opcodes, which pickle cannot read
                hint = "; a file saved with joblib.dump needs format 'joblib' (Java: SklearnModel.joblib)"
            elif model.format == "skops":
                hint = "; the file is a pickle: it needs format 'pickle' or 'joblib', from a trusted root"
        super().__init__(
            f"{where}.uri={uri!r} could not be loaded as {model.framework} format {model.format!r}: "
            f"{type(error).__name__}: {error}{hint}"
        )


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
        self._framework = frameworks.REGISTRY[model.framework]
        self._inner = self._framework.build(model, self._uri, policy, where)
        self._watch = (
            None if model.watch_pattern is None else model_files.parse_watch_pattern(model.watch_pattern, where)
        )

    @property
    def uri(self) -> str:
        """The path the next load reads."""
        return self._uri

    def declared_example_shape(self) -> Optional[tuple[int, ...]]:
        """The shape of one example that the model file declares (ONNX), read now; None when
        its format declares none or the file is too large to read at construction."""
        read = self._framework.declared_shape
        if read is None:
            return None
        with model_files.open_model(self._model, self._uri, self._policy, self._where) as file:
            if os.fstat(file.file.fileno()).st_size > bounds.MAX_SHAPE_READ_BYTES:
                return None
            return read(self._model, file)

    def load_model(self) -> Any:
        set_env_vars(self._model.env_vars)
        with model_files.open_model(self._model, self._uri, self._policy, self._where) as file:
            self._warn_if_cuda_missing()
            try:
                return self._framework.load(self._model, file, self._policy, self._where)
            except Exception as e:
                if str(e).startswith(f"{self._where}."):  # InferBridge's own, naming the model
                    raise
                file.file.seek(0)
                raise ModelLoadError(self._model, self._uri, self._where, e, file.file.read(4)) from e

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
            self._inner = self._framework.build(self._model, model_path, self._policy, self._where)

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
        if self._framework.predict is not None:
            outputs = self._framework.predict(self._model, model, features, inference_args, self._where)
        else:  # Beam's handler, per example: its results, stacked
            results = self._inner.run_inference(list(features), model, inference_args)
            outputs = [self._shaped(r.inference) for r in results]
        return stacked(outputs, len(features), self._model, self._kind, self._where)

    def _shaped(self, value: Any) -> Any:
        return shaped(value, self._model, self._kind, self._where)

    def get_num_bytes(self, batch: Sequence[Any]) -> int:
        return sum(np.asarray(example).nbytes for example in batch)

    def get_metrics_namespace(self) -> str:
        return self._inner.get_metrics_namespace()

    def validate_inference_args(self, inference_args: Optional[dict[str, Any]]) -> None:
        self._inner.validate_inference_args(inference_args)

    def _warn_if_cuda_missing(self) -> None:
        available = self._framework.cuda_available
        if self._model.options.get("device") != "cuda" or available is None or available():
            return
        hint = f" ({self._framework.cuda_hint})" if self._framework.cuda_hint else ""
        _LOGGER.warning(
            "%s.options.device='cuda', but CUDA is not available here%s; loading %s on the CPU",
            self._where, hint, self._uri,
        )


class ProvidedModelHandler:
    """A Beam ModelHandler the pipeline's author built (``Model.of``) or an installed package
    registered (``Model.registered``), as a model slot serves it.

    The handler loads its model itself (the load policy governs only the files InferBridge
    opens), takes updates through its ``update_model_path``, and gets each example as a 1-D
    array of the preprocessed features (``examples``), at most its ``max_batch_size`` per call.
    Its results are shaped as every model's are.
    """

    def __init__(self, model: Model, kind: str, where: str, handler: ModelHandler) -> None:
        self._model, self._kind, self._where = model, kind, where
        self._handler = handler
        # The handler as given: what a failed update falls back to (its uri is no file, but the
        # handler's name: the model the handler itself names). None for a handler that cannot be
        # copied: a failed update then stays, and fails its rows with its own error.
        try:
            self._given: Optional[ModelHandler] = copy.deepcopy(handler)
        except Exception:  # noqa: BLE001 - whatever its parts refuse
            self._given = None
        self._uri = model.uri
        self._max_batch = self._handler.batch_elements_kwargs().get("max_batch_size")
        self._examples = model.options.get("examples") or _default_examples(handler)

    @property
    def uri(self) -> str:
        return self._uri

    def declared_example_shape(self) -> None:
        return None

    def newest_watched(self) -> None:
        return None

    def load_model(self) -> Any:
        set_env_vars(self._model.env_vars)
        set_handler_env = getattr(self._handler, "set_environment_vars", None)  # Beam handlers have it
        if set_handler_env is not None:
            with _ENV_LOCK:
                set_handler_env()
        return self._handler.load_model()

    def update_model_path(self, model_path: Optional[str] = None) -> None:
        if model_path == self._model.uri:  # the handler as given, with its own model
            if self._given is not None:
                self._uri, self._handler = model_path, copy.deepcopy(self._given)
        elif model_path:
            self._uri = model_path
            self._handler.update_model_path(model_path)

    def predict_matrix(
        self, features: np.ndarray, model: Any, inference_args: Optional[dict[str, Any]] = None
    ) -> np.ndarray:
        examples = _examples(features, self._examples, self._where)
        size = self._max_batch or len(examples) or 1
        outputs = []
        for start in range(0, len(examples), size):
            batch = examples[start : start + size]
            results = list(self._handler.run_inference(batch, model, inference_args))
            if len(results) != len(batch):
                raise ValueError(f"{self._where}: the model gave {len(results)} results for {len(batch)} examples")
            # Beam's handlers give PredictionResults; others may give the inferences themselves.
            outputs += [shaped(getattr(r, "inference", r), self._model, self._kind, self._where) for r in results]
        return stacked(outputs, len(examples), self._model, self._kind, self._where)

# Beam's handlers that stack torch tensors: by default their examples are float32 tensors.
_TENSOR_HANDLERS = {
    ("apache_beam.ml.inference.pytorch_inference", "PytorchModelHandlerTensor"),
    ("apache_beam.ml.inference.huggingface_inference", "HuggingFaceModelHandlerTensor"),
}


def _default_examples(handler: ModelHandler) -> str:
    # By class name: telling needs no import of torch (or of transformers).
    classes = {(c.__module__, c.__name__) for c in type(handler).__mro__}
    return "torch" if classes & _TENSOR_HANDLERS else "numpy"


def _examples(features: np.ndarray, kind: str, where: str) -> list[Any]:
    """The rows of ``features`` as the examples a provided handler takes (``Model.of(examples=)``)."""
    if kind == "list":
        return features.tolist()
    if kind == "numpy":
        return list(features)
    import torch

    if kind == "torch":
        return list(torch.from_numpy(features.astype(np.float32)))
    # Whole numbers a float64 holds exactly; a row with another value fails alone (halving).
    whole = np.isfinite(features) & (features == np.round(features)) & (np.abs(features) <= 2**53)
    if not whole.all():
        raise ValueError(f"{where}.examples='torch_int64' takes whole numbers; got {float(features[~whole][0])!r}")
    return list(torch.from_numpy(features.astype(np.int64)))


class OutputKindError(ValueError):
    """The model gives another kind of result (a number, a vector) than its ``output`` says.
    It is the model's, not a row's: the rows of the call fail together, without halving."""

    isolate_rows = False


def shaped(value: Any, model: Model, kind: str, where: str) -> Any:
    """One example's result as a numpy scalar (``number``) or a flat 1-D array (``vector``)."""
    if hasattr(value, "detach"):  # a torch tensor, possibly on a GPU
        value = value.detach().cpu()
    if isinstance(value, Mapping):  # e.g. an endpoint's {"scores": [...]}, or named outputs
        raise ValueError(
            f"{where}: the model gave a mapping (keys {', '.join(sorted(map(str, value))[:8])}) for an example; "
            "allowed: a number or a list of numbers (a handler of your own, Model.of, can pick one output)"
        )
    array = np.asarray(value)
    if array.dtype.kind not in "biuf":
        raise ValueError(
            f"{where}: the model gave {bounds.shorten(value)} for an example; allowed: a number or a list of numbers"
        )
    output = f"{where}.output={model.output!r}"
    if kind == steps.NUMBER:
        if array.size != 1:
            raise OutputKindError(
                f"{output} gives one number per example, but the model gave {array.size} "
                f"values (shape {array.shape}); {_choose(model, steps.VECTOR)}"
            )
        return array.reshape(())[()]
    if array.ndim == 0:
        raise OutputKindError(
            f"{output} gives a vector per example, but the model gave one number; "
            f"{_choose(model, steps.NUMBER)}"
        )
    return array.reshape(-1)


def stacked(outputs: Any, count: int, model: Model, kind: str, where: str) -> np.ndarray:
    """The outputs for ``count`` examples as one array: shape ``(count,)`` for a number,
    ``(count, k)`` for a vector."""
    array = np.asarray(outputs)
    if array.ndim == 0 or len(array) != count:
        raise ValueError(
            f"{where}: the model gave {array.size if array.ndim == 0 else len(array)} "
            f"results for {count} examples"
        )
    output_name = f"{where}.output={model.output!r}"
    if kind == steps.NUMBER:
        if array.size != count:
            raise OutputKindError(
                f"{output_name} gives one number per example, but the model gave shape "
                f"{array.shape[1:]} per example; {_choose(model, steps.VECTOR)}"
            )
        return array.reshape(count)
    if array.ndim == 1:
        raise OutputKindError(
            f"{output_name} gives a vector per example, but the model gave one number; "
            f"{_choose(model, steps.NUMBER)}"
        )
    return array.reshape(count, -1)


def _choose(model: Model, kind: str) -> str:
    if model.beam_handler is not None:
        return f"give the handler as Model.of(handler, output={kind!r})"
    return f"choose an output that gives a {kind}"
