"""InferBridge: Apache Beam RunInference composites for Python and Java pipelines."""

from inferbridge.evaluate import Evaluate
from inferbridge.inference import Inference, InferenceResult
from inferbridge.policy import LoadPolicy
from inferbridge.spec import RUN_INFERENCE_URN, InferenceSpec, Model, Step

__all__ = ["Evaluate", "Inference", "InferenceResult", "InferenceSpec", "LoadPolicy", "Model", "Step", "RUN_INFERENCE_URN"]
