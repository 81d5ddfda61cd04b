"""PyTorch: Beam's ``PytorchModelHandlerTensor``; inputs become float32 tensors on the device.

A ``state_dict`` is loaded with ``torch.load(weights_only=True)`` into ``options.model_class``,
which the load policy must allow (importing it runs its module's code); TorchScript, loaded with
``torch.jit.load``, runs code when loaded.
"""

from __future__ import annotations

import importlib
import inspect
import itertools
import zipfile
from typing import TYPE_CHECKING, Any, Optional, Sequence

import numpy as np

from inferbridge.bounds import shorten
from inferbridge.frameworks.base import (
    DEVICE,
    VECTOR_OR_NUMBER,
    Framework,
    Option,
    check_options,
    import_library,
    matrix,
    results,
)

if TYPE_CHECKING:
    from apache_beam.ml.inference.base import ModelHandler, PredictionResult

    from inferbridge.model_files import ModelFile
    from inferbridge.policy import LoadPolicy
    from inferbridge.spec import Model

OPTIONS = {
    "state_dict": {
        "model_class": Option(str, required=True, help="the torch.nn.Module class, 'module:Class'"),
        "model_params": Option(dict, help="keyword arguments for model_class"),
        "device": DEVICE,
    },
    "torchscript": {"device": DEVICE},
}


def _check(model: Model, where: str) -> None:
    check_options(OPTIONS[model.format], model, where)
    if "model_class" in model.options:
        _split_class_path(model.options["model_class"], f"{where}.options.model_class")


def _split_class_path(path: Any, where: str) -> tuple[str, str]:
    """("module", "Class") from "module:Class" or "module.Class"."""
    if isinstance(path, str):
        module, sep, name = path.partition(":") if ":" in path else path.rpartition(".")
        parts = module.split(".") + name.split(".")
        if sep and all(part.isidentifier() for part in parts):
            return module, name
    raise ValueError(f"{where}={path!r} is not a class path; allowed: 'package.module:Class'")


def _build(model: Model, uri: str, policy: LoadPolicy, where: str) -> ModelHandler:
    pytorch_inference = import_library(
        "apache_beam.ml.inference.pytorch_inference", "torch", f"{where}.framework='pytorch'"
    )
    device = "GPU" if model.options.get("device") == "cuda" else "CPU"
    if model.format == "torchscript":
        return pytorch_inference.PytorchModelHandlerTensor(
            torch_script_model_path=uri, device=device, inference_fn=_inference
        )
    model_class = _import_model_class(model.options["model_class"], policy, f"{where}.options.model_class")
    model_params = dict(model.options.get("model_params") or {})
    _check_params(model_class, model_params, model.options["model_class"], f"{where}.options.model_params")
    return pytorch_inference.PytorchModelHandlerTensor(
        state_dict_path=uri,
        model_class=model_class,
        model_params=model_params,
        device=device,
        inference_fn=_inference,
        load_model_args={"weights_only": True},
    )


def archive_kind(file: Any) -> Optional[str]:
    """What a PyTorch file holds, from its zip entries, without torch: "torchscript" (a
    ``code/`` folder under the archive's top folder), "state_dict" (``torch.save``: a
    ``data.pkl`` and no code), or None (not a zip archive, or neither)."""
    try:
        with zipfile.ZipFile(file) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        return None
    parts = [name.split("/", 2) for name in names]
    if any(len(p) > 2 and p[1] == "code" for p in parts):
        return "torchscript"
    if any(len(p) == 2 and p[1] == "data.pkl" for p in parts):
        return "state_dict"
    return None


def check_file_kind(model: Model, kind: Optional[str], where: str) -> None:
    """Raises ValueError when the model's file (of ``archive_kind`` ``kind``) is a TorchScript
    archive but the model names a ``model_class`` (a state_dict), or a ``torch.save`` file but it
    names none (TorchScript). A file of neither kind is left to the load. Called when the
    pipeline is built (the ``Inference`` composite's expand), the file opened under the policy."""
    uri = model.uri
    if kind == "state_dict" and model.format == "torchscript":
        raise ValueError(
            f"{where}.uri={shorten(uri)} is a torch.save file (a state_dict), not TorchScript, and no "
            "model_class is given; allowed: a state_dict with model_class='package.module:Class' "
            "(Model.pytorch(uri, model_class=..., model_params=...)), or a TorchScript file "
            "saved with torch.jit.save(torch.jit.script(net), path) without model_class"
        )
    if kind == "torchscript" and model.format == "state_dict":
        raise ValueError(
            f"{where}.uri={shorten(uri)} is a TorchScript archive, not a state_dict, but "
            f"{where}.options.model_class={shorten(model.options.get('model_class'))} is given; "
            "allowed: a TorchScript file without model_class (Model.pytorch(uri)), or a state_dict "
            "saved with torch.save(net.state_dict(), path) with model_class"
        )


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
        raise ValueError(
            f"{where}={path!r} cannot be imported by the process that builds the pipeline ({e}); put its "
            "module's directory on the import path: inferbridge-local --python-path=DIR, "
            "inferbridge-expansion-service --python-path=DIR, or $PYTHONPATH"
        ) from e
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


def _check_params(model_class: type, params: dict, path: str, where: str) -> None:
    """Raises ValueError unless ``model_class(**params)`` binds: the class takes these names
    and every argument it requires."""
    try:
        signature = inspect.signature(model_class).replace(return_annotation=inspect.Signature.empty)
    except (TypeError, ValueError):  # no signature to read (a builtin): the load will tell
        return
    try:
        signature.bind(**params)
    except TypeError as e:
        raise ValueError(
            f"{where}={params!r} does not fit {path}{signature}: {e}; allowed: the keyword "
            "arguments of the class's __init__"
        ) from None


def _load(model: Model, file: ModelFile, policy: LoadPolicy, where: str) -> Any:
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


def _inference(
    batch: Sequence[np.ndarray],
    model: Any,
    device: Any,
    inference_args: Any = None,
    model_id: Any = None,
) -> list[PredictionResult]:
    # Beam's ``device`` is the one asked for; the model's own is where it was loaded.
    return results(batch, _outputs(batch, model, inference_args))


def _outputs(batch: Sequence[np.ndarray] | np.ndarray, model: Any, inference_args: Any = None) -> np.ndarray:
    import torch

    weights = next(itertools.chain(model.parameters(), model.buffers()), None)
    device = weights.device if weights is not None else torch.device("cpu")
    with torch.no_grad():
        inputs = torch.from_numpy(matrix(batch).astype(np.float32, copy=False)).to(device)
        outputs = model(inputs, **(inference_args or {}))
    return outputs.detach().cpu().numpy()


def _predict(
    model: Model, loaded: Any, features: np.ndarray, inference_args: Optional[dict[str, Any]], where: str
) -> Any:
    return _outputs(features, loaded, inference_args)


def _cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


FRAMEWORK = Framework(
    name="pytorch",
    formats=tuple(OPTIONS),
    outputs=VECTOR_OR_NUMBER,
    check=_check,
    build=_build,
    load=_load,
    options=OPTIONS,
    safe_formats=("state_dict",),
    class_option="model_class",
    predict=_predict,
    cuda_available=_cuda_available,
)
