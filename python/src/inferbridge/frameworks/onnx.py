"""ONNX: Beam's ``OnnxModelHandlerNumpy`` on onnxruntime's CPU provider (CUDA first for device
cuda). Loading an ONNX file runs no code."""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Any, Optional, Sequence

import numpy as np

from inferbridge import steps
from inferbridge.frameworks.base import (
    DEVICE,
    VECTOR_OR_NUMBER,
    Framework,
    Option,
    check_options,
    import_library,
    matrix,
)

if TYPE_CHECKING:
    from apache_beam.ml.inference.base import ModelHandler

    from inferbridge.model_files import ModelFile
    from inferbridge.policy import LoadPolicy
    from inferbridge.spec import Model

OPTIONS = {
    "onnx": {
        "device": DEVICE,
        "output_name": Option(str, help="which model output is the result"),
    },
}


def _check(model: Model, where: str) -> None:
    check_options(OPTIONS[model.format], model, where)


def _providers(model: Model) -> list[str]:
    if model.options.get("device") == "cuda":
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def _build(model: Model, uri: str, policy: LoadPolicy, where: str) -> ModelHandler:
    onnx_inference = import_library(
        "apache_beam.ml.inference.onnx_inference", "onnxruntime onnx", f"{where}.framework='onnx'"
    )
    return onnx_inference.OnnxModelHandlerNumpy(
        uri,
        providers=_providers(model),
        inference_fn=partial(
            _inference, model.options.get("output_name"), VECTOR_OR_NUMBER[model.output]
        ),
    )


def _load(model: Model, file: ModelFile, policy: LoadPolicy, where: str) -> Any:
    import onnxruntime

    session = onnxruntime.InferenceSession(file.data(), providers=_providers(model))
    output_name = model.options.get("output_name")
    names = [output.name for output in session.get_outputs()]
    if output_name is not None and output_name not in names:
        # At load, not per batch: the model's rows fail once with this, not call by call.
        raise ValueError(
            f"{where}.options.output_name={output_name!r} is not an output of the model; "
            f"allowed: {', '.join(names)}"
        )
    return session


def _inference(
    output_name: Optional[str],
    kind: str,
    session: Any,
    batch: Sequence[np.ndarray] | np.ndarray,
    inference_args: Any = None,
) -> Any:
    """Runs the first input on the batch (float32, or float64 for a double input).

    The result is ``output_name`` if given, else the last output for a vector (a classifier's
    probabilities, as skl2onnx exports them after the labels) and the first for a number.
    """
    first = session.get_inputs()[0]
    dtype = np.float64 if first.type == "tensor(double)" else np.float32
    if output_name is None:
        names = [output.name for output in session.get_outputs()]
        output_name = names[-1] if kind == steps.VECTOR else names[0]
    feeds = {first.name: matrix(batch).astype(dtype, copy=False), **(inference_args or {})}
    result = session.run([output_name], feeds)[0]
    if isinstance(result, list) and result and isinstance(result[0], dict):
        # skl2onnx's ZipMap: one {class: probability} map per example; classes in sorted order,
        # as scikit-learn's predict_proba orders them.
        result = np.array([[row[label] for label in sorted(row)] for row in result])
    return result


def _predict(
    model: Model, loaded: Any, features: np.ndarray, inference_args: Optional[dict[str, Any]], where: str
) -> Any:
    return _inference(
        model.options.get("output_name"), VECTOR_OR_NUMBER[model.output], loaded, features, inference_args
    )


def _declared_shape(model: Model, file: ModelFile) -> Optional[tuple[int, ...]]:
    """The static shape of the first graph input past its batch axis, e.g. (64,); None if any
    dimension is symbolic."""
    import onnx

    graph = onnx.load_model_from_string(file.data()).graph
    weights = {tensor.name for tensor in graph.initializer}
    inputs = [i for i in graph.input if i.name not in weights]
    if not inputs:
        return None
    dims = inputs[0].type.tensor_type.shape.dim[1:]
    shape = tuple(d.dim_value if d.HasField("dim_value") else 0 for d in dims)
    return shape if shape and all(v > 0 for v in shape) else None


def _cuda_available() -> bool:
    import onnxruntime

    return "CUDAExecutionProvider" in onnxruntime.get_available_providers()


FRAMEWORK = Framework(
    name="onnx",
    formats=tuple(OPTIONS),
    outputs=VECTOR_OR_NUMBER,
    check=_check,
    build=_build,
    load=_load,
    options=OPTIONS,
    safe_formats=("onnx",),
    predict=_predict,
    cuda_available=_cuda_available,
    cuda_hint="onnxruntime-gpu provides CUDA for ONNX",
    declared_shape=_declared_shape,
)
