"""InferBridge: Apache Beam RunInference composites for Python and Java pipelines."""

from inferbridge.inference import Inference
from inferbridge.spec import RUN_INFERENCE_URN, InferenceSpec, Model, Step

__all__ = ["Inference", "InferenceSpec", "Model", "Step", "RUN_INFERENCE_URN"]
