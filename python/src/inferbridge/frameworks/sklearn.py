"""scikit-learn: Beam's ``SklearnModelHandlerNumpy`` calling the model's ``predict`` or
``predict_proba`` on the whole batch.

pickle and joblib files run code when loaded; skops files are loaded with ``skops.io`` and
refused if they hold types that skops does not trust by default.
"""

from __future__ import annotations

import pickle
from functools import partial
from typing import TYPE_CHECKING, Any, Optional, Sequence

import numpy as np

from inferbridge import steps
from inferbridge.bounds import shorten
from inferbridge.frameworks.base import Framework, check_options, import_library, matrix

if TYPE_CHECKING:
    from apache_beam.ml.inference.base import ModelHandler

    from inferbridge.model_files import ModelFile
    from inferbridge.policy import LoadPolicy
    from inferbridge.spec import Model

FORMATS = ("pickle", "joblib", "skops")


def _check(model: Model, where: str) -> None:
    check_options({}, model, where)


def _call(
    method: str, model: Any, batch: Sequence[np.ndarray] | np.ndarray, inference_args: Any = None
) -> Any:
    return getattr(model, method)(matrix(batch), **(inference_args or {}))


def _build(model: Model, uri: str, policy: LoadPolicy, where: str) -> ModelHandler:
    sklearn_inference = import_library(
        "apache_beam.ml.inference.sklearn_inference", "scikit-learn", f"{where}.framework='sklearn'"
    )
    if model.format == "skops":
        import_library("skops.io", "skops", f"{where}.format='skops'")
    file_types = sklearn_inference.ModelFileType
    file_type = file_types.JOBLIB if model.format == "joblib" else file_types.PICKLE
    return sklearn_inference.SklearnModelHandlerNumpy(
        uri, file_type, inference_fn=partial(_call, model.output)
    )


def _load(model: Model, file: ModelFile, policy: LoadPolicy, where: str) -> Any:
    if model.format == "skops":
        loaded = _load_skops(file.data(), model.uri, where)
    elif model.format == "joblib":
        import joblib

        loaded = joblib.load(file.file)
    else:
        loaded = pickle.load(file.file)
    if not callable(getattr(loaded, model.output, None)):
        kind = type(loaded)
        raise TypeError(
            f"the file holds a {kind.__module__}.{kind.__qualname__}, which has no {model.output}() method; "
            f"allowed: a scikit-learn model (or any object) with {model.output}()"
        )
    classes = getattr(loaded, "classes_", None)
    if model.output == "predict" and isinstance(classes, np.ndarray) and classes.dtype.kind not in "biuf":
        # predict() would give the labels, and InferBridge's 'predict' output is a number.
        names = [str(c) for c in classes.tolist()]
        listed = repr(names) if len(repr(names)) <= 1000 else shorten(names)
        raise TypeError(
            f"the classifier's classes are not numbers, and output='predict' gives a number; allowed: "
            f"output='predict_proba' with postprocess=[Step('argmax'), Step('labels', names={listed})], "
            "which gives the labels"
        )
    return loaded


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


def _predict(
    model: Model, loaded: Any, features: np.ndarray, inference_args: Optional[dict[str, Any]], where: str
) -> Any:
    return _call(model.output, loaded, features, inference_args)


FRAMEWORK = Framework(
    name="sklearn",
    formats=FORMATS,
    outputs={"predict": steps.NUMBER, "predict_proba": steps.VECTOR},
    check=_check,
    build=_build,
    load=_load,
    options={fmt: {} for fmt in FORMATS},
    safe_formats=("skops",),
    predict=_predict,
)
