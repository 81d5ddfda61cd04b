"""Helpers for testing an InferBridge expansion service deployment."""

from __future__ import annotations

import typing
from typing import Optional

from apache_beam.portability.api import beam_expansion_api_pb2, beam_runner_api_pb2, schema_pb2
from apache_beam.typehints import schemas


def expansion_request(
    urn: str,
    payload: bytes = b"",
    row_schema: Optional[schema_pb2.Schema] = None,
    name: str = "Transform",
    namespace: str = "test",
) -> beam_expansion_api_pb2.ExpansionRequest:
    """An ExpansionRequest as Beam's clients send it: Rows from a placeholder Impulse, with a Row
    coder and the global window. ``row_schema`` defaults to the digits rows {id, pixels}."""
    if row_schema is None:
        row_schema = schemas.named_fields_to_schema([("id", int), ("pixels", typing.Sequence[float])])
    components = beam_runner_api_pb2.Components()
    components.transforms["impulse_input"].CopyFrom(
        beam_runner_api_pb2.PTransform(
            unique_name="impulse_input",
            spec=beam_runner_api_pb2.FunctionSpec(urn="beam:transform:impulse:v1"),
            outputs={"out": "rows"},
        )
    )
    components.pcollections["rows"].CopyFrom(
        beam_runner_api_pb2.PCollection(
            unique_name="rows", coder_id="row_coder", windowing_strategy_id="global", is_bounded="BOUNDED"
        )
    )
    components.coders["row_coder"].spec.CopyFrom(
        beam_runner_api_pb2.FunctionSpec(urn="beam:coder:row:v1", payload=row_schema.SerializeToString())
    )
    components.coders["window_coder"].spec.urn = "beam:coder:global_window:v1"
    components.windowing_strategies["global"].CopyFrom(
        beam_runner_api_pb2.WindowingStrategy(
            window_fn=beam_runner_api_pb2.FunctionSpec(urn="beam:window_fn:global_windows:v1"),
            window_coder_id="window_coder",
            merge_status="NON_MERGING",
            trigger=beam_runner_api_pb2.Trigger(default=beam_runner_api_pb2.Trigger.Default()),
            accumulation_mode="DISCARDING",
            output_time="END_OF_WINDOW",
            closing_behavior="EMIT_ALWAYS",
            on_time_behavior="FIRE_ALWAYS",
        )
    )
    return beam_expansion_api_pb2.ExpansionRequest(
        components=components,
        transform=beam_runner_api_pb2.PTransform(
            unique_name=name,
            spec=beam_runner_api_pb2.FunctionSpec(urn=urn, payload=payload),
            inputs={"input": "rows"},
        ),
        namespace=namespace,
    )
