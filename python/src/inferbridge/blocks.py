"""``BlockInference``: the ``Inference`` composite on columnar blocks of rows — the fast path.

Each element is a block of many rows: a ``pyarrow.RecordBatch`` (or ``Table``) in Python
pipelines, or a packed block Row from the Java wrapper (``Inference.withBlockSize``; the wire
layout is in ``layouts.py``). The same engine serves rows and blocks; blocks spare the
per-row work of reading Rows and writing one output Row each.
"""

from __future__ import annotations

from typing import Any

import apache_beam as beam
from apache_beam.portability.api import external_transforms_pb2

from inferbridge.inference import Inference
from inferbridge.layouts import WIRE_FIELDS, layout_for
from inferbridge.spec import RUN_INFERENCE_BLOCKS_URN


@beam.PTransform.register_urn(RUN_INFERENCE_BLOCKS_URN, external_transforms_pb2.ExternalConfigurationPayload)
class BlockInference(Inference):
    """``Inference`` on blocks of rows: same arguments, same models, steps and failures.

    ::

        result = record_batches | BlockInference(
            Model.sklearn("/models/digits.pkl", output="predict_proba"),
            key_field="id", feature_fields="pixels",
            preprocess=[Step("scale", factor=1 / 16)],
            postprocess=[Step("argmax")])
        result.inferences  # pyarrow.RecordBatch(key, inference, model_id, *passthrough_fields)
        result.failures    # Row(stage, step, error_type, message, element, key, model_id)

    Input elements are ``pyarrow.RecordBatch`` or ``pyarrow.Table`` with the key column, the
    features (one list-of-numbers column, or numeric columns) and the passthrough columns. Each
    output block holds the rows of one input block that one model served; ``inference`` is a
    fixed-size list of float64 (vector), float64, int64, string or map<string, float64>. Output
    blocks carry no ``example`` column: the model input stays on the worker. Batching sizes
    count rows.
    """

    urn = RUN_INFERENCE_BLOCKS_URN

    def _layout(self, element_type: Any) -> tuple[Any, Any]:
        layout = layout_for(self._spec, element_type)
        return layout, layout.output_type

    @staticmethod
    def from_runner_api_parameter(unused_ptransform: Any, payload: Any, unused_context: Any) -> "BlockInference":
        return BlockInference.from_payload(payload)


__all__ = ["BlockInference", "WIRE_FIELDS"]
