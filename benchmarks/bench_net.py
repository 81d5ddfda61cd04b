"""The torch workload's model: a perceptron whose forward calls are timed like every model here."""

from __future__ import annotations

import time

import torch

from bench_models import CallLog


class BenchNet(torch.nn.Module):
    """A small multilayer perceptron whose cost is its arithmetic: the compute-bound workload."""

    def __init__(self, n_features: int = 64, n_hidden: int = 512, n_outputs: int = 10, log_path: str = "") -> None:
        super().__init__()
        self.layers = torch.nn.Sequential(
            torch.nn.Linear(n_features, n_hidden),
            torch.nn.ReLU(),
            torch.nn.Linear(n_hidden, n_hidden),
            torch.nn.ReLU(),
            torch.nn.Linear(n_hidden, n_outputs),
        )
        self.log = CallLog(log_path) if log_path else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        started = time.perf_counter_ns()
        result = self.layers(x)
        if self.log is not None:
            self.log.record(started, len(x))
        return result
