"""Runs one Python system on one workload and prints one JSON line: rows, seconds, outputs.

    python benchmarks/python_systems.py --system inferbridge-python --workload digits \
        --rows 1000000 --models models.json

Systems: ``raw`` (the model called in a loop on 1000-row slices: the limit), ``stock-python``
(Beam's RunInference with its scikit-learn / PyTorch handlers, one numpy row per element) and
``inferbridge-python`` (InferBridge's BlockInference on 1000-row Arrow record batches) and
``inferbridge-python-rows`` (InferBridge's Inference, one Row per element: the element's key and
the numpy row stock-python gets, ``beam.Row(key=k, features=x[i])``). Rows are generated inside
the pipeline by cycling through the scaled digits; every system gets the same rows. The time is
the wall time of building and running the pipeline on Beam's FnApiRunner (what the DirectRunner
runs a batch pipeline on when it does not use Prism; named, as the DirectRunner of Beam 2.77 would
first download Prism from GitHub).
"""

from __future__ import annotations

import argparse
import json
import time
import typing

import numpy as np

import bench_models

BLOCK = 1000
WORKLOADS = ("digits", "torch", "keyed", "keyed-bounded")
MAX_MODELS = 2  # for keyed-bounded: fewer models resident than keys


def row_keys(start: int, count: int) -> list[str]:
    return [bench_models.KEYS[i % 4] for i in range(start, start + count)]


def slices(rows: int):
    """(start, count, features) of each 1000-row slice, cycling through the digits."""
    features = bench_models.digits_features()
    cycle = np.concatenate([features, features[:BLOCK]])
    for start in range(0, rows, BLOCK):
        count = min(BLOCK, rows - start)
        offset = start % len(features)
        yield start, count, cycle[offset : offset + count]


def run_raw(workload: str, rows: int, models: dict) -> int:
    import pickle

    outputs = 0
    if workload == "torch":
        import torch
        from bench_net import BenchNet

        net = BenchNet(**models["torch_params"])
        net.load_state_dict(torch.load(models["torch"], weights_only=True))
        net.eval()
        with torch.no_grad():
            for _, _, x in slices(rows):
                outputs += len(net(torch.from_numpy(x.astype(np.float32))).numpy())
        return outputs
    if workload == "digits":
        with open(models["digits"], "rb") as f:
            model = pickle.load(f)
        for _, _, x in slices(rows):
            outputs += len(model.predict(x))
        return outputs
    keyed = []
    for path in models["keyed"]:
        with open(path, "rb") as f:
            keyed.append(pickle.load(f))
    for start, count, x in slices(rows):
        which = (np.arange(start, start + count)) % 4
        for k, model in enumerate(keyed):
            outputs += len(model.predict(x[which == k]))
    return outputs


def stock_pipeline(p, workload: str, rows: int, models: dict):
    import apache_beam as beam
    from apache_beam.ml.inference.base import KeyedModelHandler, KeyModelMapping, RunInference

    def one_row_per_element(_):
        for start, count, x in slices(rows):
            if workload.startswith("keyed"):
                yield from zip(row_keys(start, count), x)
            else:
                yield from (x.astype(np.float32) if workload == "torch" else x)

    elements = p | beam.Impulse() | beam.FlatMap(one_row_per_element)
    if workload == "torch":
        from apache_beam.ml.inference.pytorch_inference import PytorchModelHandlerTensor
        from bench_net import BenchNet

        handler = PytorchModelHandlerTensor(
            state_dict_path=models["torch"], model_class=BenchNet, model_params=models["torch_params"]
        )
        import torch

        elements = elements | beam.Map(torch.from_numpy)
    else:
        from apache_beam.ml.inference.sklearn_inference import SklearnModelHandlerNumpy

        if workload == "digits":
            handler = SklearnModelHandlerNumpy(models["digits"])
        else:
            handler = KeyedModelHandler(
                [KeyModelMapping([key], SklearnModelHandlerNumpy(path)) for key, path in zip(bench_models.KEYS, models["keyed"])],
                max_models_per_worker_hint=MAX_MODELS if workload == "keyed-bounded" else None,
            )
    return elements | RunInference(handler) | beam.combiners.Count.Globally()


def inferbridge_pipeline(p, workload: str, rows: int, models: dict, by_rows: bool = False):
    import apache_beam as beam
    import pyarrow as pa

    from inferbridge import BlockInference, Inference, Model
    from inferbridge.policy import LoadPolicy

    keyed = workload.startswith("keyed")

    def blocks(_):
        key_pattern = pa.array(row_keys(0, BLOCK))
        for start, count, x in slices(rows):
            keys = key_pattern.slice(0, count) if keyed else pa.array(np.arange(start, start + count))
            pixels = pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), x.shape[1])
            yield pa.RecordBatch.from_arrays([keys, pixels], names=["key", "features"])

    def one_row_per_element(_):
        for start, count, x in slices(rows):
            keys = row_keys(start, count) if keyed else range(start, start + count)
            yield from (beam.Row(key=k, features=v) for k, v in zip(keys, x))

    root = models["root"]
    if workload == "torch":
        model = Model.pytorch(models["torch"], model_class="bench_net:BenchNet", model_params=models["torch_params"])
        options = {}
    elif workload == "digits":
        model = Model.sklearn(models["digits"])
        options = {}
    else:
        model = [
            Model.sklearn(path, model_id=key, keys=[key]) for key, path in zip(bench_models.KEYS, models["keyed"])
        ]
        options = {"max_models_per_worker": MAX_MODELS} if workload == "keyed-bounded" else {}
    if by_rows:
        row_type = beam.typehints.row_type.RowTypeConstraint.from_fields(
            [("key", str if keyed else int), ("features", typing.Sequence[float])]
        )
        elements = p | beam.Impulse() | beam.FlatMap(one_row_per_element).with_output_types(row_type)
    else:
        elements = p | beam.Impulse() | beam.FlatMap(blocks)
    result = elements | (Inference if by_rows else BlockInference)(
        model,
        key_field="key",
        feature_fields="features",
        policy=LoadPolicy(model_roots=(root,), trusted_roots=(root,), allowed_model_classes=("bench_models", "bench_net")),
        **options,
    )
    if by_rows:
        return result.inferences | beam.combiners.Count.Globally()
    return result.inferences | beam.Map(lambda block: block.num_rows) | beam.CombineGlobally(sum)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--system", required=True, choices=("raw", "stock-python", "inferbridge-python", "inferbridge-python-rows"))
    parser.add_argument("--workload", required=True, choices=WORKLOADS)
    parser.add_argument("--rows", type=int, required=True)
    parser.add_argument("--models", required=True, help="the JSON file written by run.py")
    parser.add_argument("--count-file", required=True, help="where the pipeline writes its output count")
    args = parser.parse_args()
    with open(args.models) as f:
        models = json.load(f)

    _warm_up(args.workload)
    started = time.perf_counter()
    if args.system == "raw":
        outputs = run_raw(args.workload, args.rows, models)
    else:
        import apache_beam as beam

        with beam.Pipeline(runner="FnApiRunner") as p:
            if args.system == "stock-python":
                count = stock_pipeline(p, args.workload, args.rows, models)
            else:
                count = inferbridge_pipeline(p, args.workload, args.rows, models, by_rows=args.system.endswith("-rows"))
            count | beam.Map(_write_count, args.count_file)
        with open(args.count_file) as f:
            outputs = int(f.read())
    seconds = time.perf_counter() - started
    print(json.dumps({"rows": args.rows, "seconds": seconds, "outputs": outputs}))


def _warm_up(workload: str) -> None:
    """Imports and the digits file are loaded before the clock starts, for every system alike."""
    import apache_beam  # noqa: F401
    import apache_beam.ml.inference.sklearn_inference  # noqa: F401
    import pyarrow  # noqa: F401

    import inferbridge.blocks  # noqa: F401

    if workload == "torch":
        import apache_beam.ml.inference.pytorch_inference  # noqa: F401
    bench_models.digits_features()


def _write_count(count: int, path: str) -> None:
    with open(path, "w") as f:
        f.write(str(count))


if __name__ == "__main__":
    main()
