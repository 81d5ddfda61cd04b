"""Beam's RunInference module, imported without its model manager (and so without torch).

``apache_beam.ml.inference.base`` imports ``model_manager`` at its top, which imports torch and
scipy: about 2.5 s on every ``import inferbridge`` user, expansion process and worker, where
torch is installed, for a feature (``use_model_manager``) InferBridge never turns on. Beam
imports that module itself when a handler turns it on, so it is kept out of the first import
only; frameworks import their libraries when a model needs them.
"""

import resource
import sys

_BASE = "apache_beam.ml.inference.base"
_MODEL_MANAGER = "apache_beam.ml.inference.model_manager"

if _BASE not in sys.modules and _MODEL_MANAGER not in sys.modules:
    sys.modules[_MODEL_MANAGER] = None  # type: ignore[assignment]  # its import raises ImportError
    try:
        from apache_beam.ml.inference import base
    finally:
        del sys.modules[_MODEL_MANAGER]
    # Beam clears its memory probe along with the model manager on that ImportError.
    if base.resource is None:
        base.resource = resource

from apache_beam.ml.inference.base import (  # noqa: E402
    ModelHandler,
    ModelMetadata,
    PredictionResult,
    RunInference,
)

__all__ = ["ModelHandler", "ModelMetadata", "PredictionResult", "RunInference"]
