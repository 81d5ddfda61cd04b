"""The benchmark's models and data: each model records how long every call on a batch takes.

The timing lives in the model so that every system — the raw loop, Beam's RunInference and
InferBridge, in Python or behind Java — is measured at the same place: the model call.
Workers import this module, so the benchmark puts its folder on PYTHONPATH. It does not import
torch (``bench_net`` does): a worker loading a scikit-learn model does not pay torch's import.
"""

from __future__ import annotations

import functools
import os
import time
from typing import Any

import numpy as np

KEYS = ("k0", "k1", "k2", "k3")


@functools.lru_cache(maxsize=1)
def digits_features() -> np.ndarray:
    """The 1797 digits of scikit-learn, scaled to [0, 1]: the rows every workload cycles through."""
    from sklearn.datasets import load_digits

    pixels, _ = load_digits(return_X_y=True)
    pixels = pixels / 16.0
    pixels.setflags(write=False)
    return pixels


def digits_labels() -> np.ndarray:
    from sklearn.datasets import load_digits

    return load_digits(return_X_y=True)[1]


def write_digits_csv(path: str) -> None:
    """The digits as JavaThroughput reads them: id,label,pixel_0..pixel_63 (raw 0..16 values)."""
    import csv

    from sklearn.datasets import load_digits

    pixels, labels = load_digits(return_X_y=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "label", *[f"pixel_{i}" for i in range(pixels.shape[1])]])
        for i, (row, label) in enumerate(zip(pixels, labels)):
            writer.writerow([i, int(label), *[repr(float(v)) for v in row]])


class CallLog:
    """Appends 'nanoseconds rows' per call to a file shared by every process and thread."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd = None

    def record(self, started_ns: int, rows: int) -> None:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.write(self._fd, f"{time.perf_counter_ns() - started_ns} {rows}\n".encode())

    def __getstate__(self) -> dict:
        return {"path": self.path}

    def __setstate__(self, state: dict) -> None:
        self.path, self._fd = state["path"], None


class TimedClassifier:
    """A scikit-learn classifier whose predict calls are timed into ``log_path``."""

    def __init__(self, model: Any, log_path: str) -> None:
        self.model = model
        self.log = CallLog(log_path)

    def predict(self, features: np.ndarray, **kwargs: Any) -> np.ndarray:
        started = time.perf_counter_ns()
        result = self.model.predict(features, **kwargs)
        self.log.record(started, len(features))
        return result


def train(models_dir: str, log_path: str) -> dict[str, Any]:
    """Trains every workload's models into ``models_dir``; returns their paths and parameters."""
    import pickle

    from sklearn.linear_model import LogisticRegression

    features, labels = digits_features(), digits_labels()
    paths: dict[str, Any] = {}

    def save(name: str, model: Any) -> str:
        path = os.path.join(models_dir, name)
        with open(path, "wb") as f:
            pickle.dump(TimedClassifier(model, log_path), f)
        return path

    paths["digits"] = save("digits.pkl", LogisticRegression(max_iter=3000).fit(features, labels))
    paths["keyed"] = [
        save(f"digits_{key}.pkl", LogisticRegression(max_iter=3000).fit(features[i::4], labels[i::4]))
        for i, key in enumerate(KEYS)
    ]
    import torch
    from bench_net import BenchNet

    torch.manual_seed(0)
    net = BenchNet()
    optimizer = torch.optim.Adam(net.parameters(), lr=0.01)
    x, y = torch.tensor(features, dtype=torch.float32), torch.tensor(labels)
    for _ in range(20):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        optimizer.step()
    paths["torch"] = os.path.join(models_dir, "net.pt")
    torch.save(net.state_dict(), paths["torch"])
    paths["torch_params"] = {"log_path": log_path}
    return paths
