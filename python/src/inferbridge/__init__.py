"""InferBridge: Apache Beam RunInference composites for Python and Java pipelines."""

import importlib
import logging
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


def _not_beams_bigquery_notice(record: logging.LogRecord) -> bool:
    """False for the warning Beam logs on the root logger whenever it is imported without its
    GCP extras ("apitools not found, and bigquery client libraries are not available ..."):
    InferBridge uses no BigQuery, and its programs (the service, its expansion processes,
    inferbridge-local) import Beam after this package, so each printed it once."""
    return not str(record.msg).startswith("apitools not found")


logging.getLogger().addFilter(_not_beams_bigquery_notice)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'inferbridge' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value
