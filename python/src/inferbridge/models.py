"""Model loading: one Beam ModelHandler per configured model.

Framework modules are imported here, lazily, so that ``import inferbridge`` stays light.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from apache_beam.ml.inference.base import ModelHandler

from inferbridge.spec import SKLEARN, Model


def _predict_proba(model: Any, batch: Sequence[np.ndarray], inference_args: Any = None) -> Any:
    return model.predict_proba(np.stack(batch, axis=0), **(inference_args or {}))


def handler_for(model: Model) -> ModelHandler:
    """The Beam ModelHandler that loads ``model`` and calls the configured output method."""
    if model.framework == SKLEARN:
        from apache_beam.ml.inference import sklearn_inference

        file_type = {
            "pickle": sklearn_inference.ModelFileType.PICKLE,
            "joblib": sklearn_inference.ModelFileType.JOBLIB,
        }[model.format]
        kwargs = {"inference_fn": _predict_proba} if model.output == "predict_proba" else {}
        return sklearn_inference.SklearnModelHandlerNumpy(model.uri, file_type, **kwargs)
    raise ValueError(f"model_framework={model.framework!r} is not supported; allowed: {SKLEARN}")
