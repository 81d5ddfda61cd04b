"""InferBridge: Apache Beam RunInference composites for Python and Java pipelines."""

import importlib
from typing import Any

# Imported on first use, so that light entry points (inferbridge-healthcheck) do not load Beam.
_EXPORTS = {
    "BlockInference": "inferbridge.blocks",
    "Evaluate": "inferbridge.evaluate",
    "Inference": "inferbridge.inference",
    "InferenceResult": "inferbridge.inference",
    "LoadPolicy": "inferbridge.policy",
    "RUN_INFERENCE_URN": "inferbridge.spec",
    "InferenceSpec": "inferbridge.spec",
    "Model": "inferbridge.spec",
    "Step": "inferbridge.spec",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'inferbridge' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value
