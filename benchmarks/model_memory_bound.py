"""How many models does ``max_models_per_worker`` really keep loaded?

The bound holds per worker process (one resident set, shared by the process's threads); threads
serving different keys at once evict each other's models. This script runs the composite with three
per-key models on Beam's FnApiRunner and prints the number of model loads for several bounds
and worker counts (a load beyond the number of models means an eviction and a reload).

    .venv/bin/python benchmarks/model_memory_bound.py
"""

import pickle
import sys
import tempfile
import time
from pathlib import Path

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression

from inferbridge import Inference, Model, Step
from inferbridge.policy import LoadPolicy

NAMESPACE = "bound"


def model_files(root: Path) -> list[str]:
    pixels, labels = load_digits(return_X_y=True)
    paths = []
    for i in range(3):
        model = LogisticRegression(max_iter=2000).fit(pixels[i * 300 : (i + 1) * 300] / 16, labels[i * 300 : (i + 1) * 300])
        path = root / f"m{i}.pkl"
        path.write_bytes(pickle.dumps(model))
        paths.append(str(path))
    return paths


def run(paths: list[str], bound: int, workers: int, rows: int = 6000) -> tuple[int, float]:
    pixels, _ = load_digits(return_X_y=True)
    keys = ["a", "b", "c", "d", "e", "f"]
    data = [beam.Row(id=i, region=keys[i % 6], pixels=[float(v) for v in pixels[i % len(pixels)]]) for i in range(rows)]
    options = PipelineOptions(direct_num_workers=workers, direct_running_mode="multi_threading" if workers > 1 else "in_memory")
    p = beam.Pipeline(runner="FnApiRunner", options=options)
    _ = p | beam.Create(data) | Inference(
        [Model.sklearn(path, model_id=f"m{i}", keys=keys[2 * i : 2 * i + 2]) for i, path in enumerate(paths)],
        key_field="region",
        feature_fields="pixels",
        preprocess=[Step("scale", factor=1 / 16)],
        max_models_per_worker=bound,
        max_batch_size=100,
        metrics_namespace=NAMESPACE,
        policy=LoadPolicy(trusted_roots=(str(Path(paths[0]).parent),)),
    )
    start = time.perf_counter()
    result = p.run()
    result.wait_until_finish()
    elapsed = time.perf_counter() - start
    loads = sum(
        c.committed
        for c in result.metrics().query()["counters"]
        if c.key.metric.namespace == NAMESPACE and c.key.metric.name == "model_loads"
    )
    return loads, rows / elapsed


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        paths = model_files(Path(tmp))
        print("bound workers model_loads rows_per_sec")
        for bound in (1, 3):
            for workers in (1, 4):
                loads, rate = run(paths, bound, workers)
                print(f"{bound:5d} {workers:7d} {loads:11d} {rate:12.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
