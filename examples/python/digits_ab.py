"""A Python pipeline with InferBridge: two digit classifiers side by side, evaluated in-pipeline.

Rows with an even id go to model "a" (a pickle), odd ids to model "b" (the same model saved with
joblib); every row is scored against its label by ``Evaluate``, per model. Failures (here: one
row with too few pixels, added on purpose) are written to a file instead of failing the run.

    python examples/digits/train_model.py /tmp/digits
    python examples/python/digits_ab.py /tmp/digits /tmp/digits-out [BEAM PIPELINE OPTIONS...]

Beam's pipeline options choose where it runs (default: Beam's FnApiRunner, in this process;
Beam 2.77's DirectRunner would first download its Prism runner from GitHub), e.g.
``--runner=PortableRunner --job_endpoint=localhost:8099 --environment_type=EXTERNAL
--environment_config=localhost:50000`` for a job service whose Python workers come from a worker
pool (such as the InferBridge image's ``worker-pool`` role).

Prints one ``model=<id> accuracy=<a> rows=<n>`` line per model, then ``failures=<n>``.
"""

import argparse
import csv
import json
from pathlib import Path

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from inferbridge import Evaluate, Inference, LoadPolicy, Model, Step


def read_rows(model_dir: Path) -> list[beam.Row]:
    with open(model_dir / "test_rows.csv") as f:
        records = list(csv.DictReader(f))
    rows = [
        beam.Row(
            id=int(r["id"]),
            variant="a" if int(r["id"]) % 2 == 0 else "b",
            label=int(r["label"]),
            pixels=[float(r[f"pixel_{i}"]) for i in range(64)],
        )
        for r in records
    ]
    # A malformed row: it must reach the failures output, not stop the pipeline.
    rows.append(beam.Row(id=-1, variant="a", label=0, pixels=[0.0] * 10))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir", type=Path, help="the output folder of examples/digits/train_model.py")
    parser.add_argument("output_dir", type=Path)
    args, pipeline_args = parser.parse_known_args()
    args.output_dir.mkdir(parents=True, exist_ok=True)

    options = PipelineOptions(pipeline_args)
    if options.view_as(StandardOptions).runner is None:
        options.view_as(StandardOptions).runner = "FnApiRunner"
    with beam.Pipeline(options=options) as p:
        result = p | beam.Create(read_rows(args.model_dir)) | Inference(
            [
                Model.sklearn(str(args.model_dir / "digits.pkl"), output="predict_proba", model_id="a", keys=["a"]),
                Model.sklearn(str(args.model_dir / "digits.joblib"), format="joblib", output="predict_proba", model_id="b", keys=["b"]),
            ],
            key_field="variant",
            feature_fields="pixels",
            passthrough_fields=["id", "label"],
            preprocess=[Step("scale", factor=1 / 16)],
            postprocess=[Step("argmax")],
            # Pickles run code when loaded: trust this folder explicitly.
            policy=LoadPolicy(trusted_roots=(str(args.model_dir),)),
        )
        (
            result.inferences
            | Evaluate("label")
            | "Report" >> beam.Map(lambda e: f"model={e.model_id} accuracy={e.accuracy!r} rows={e.count}")
            | "WriteReport" >> beam.io.WriteToText(str(args.output_dir / "evaluation"), shard_name_template="")
        )
        (
            result.failures
            | "FailureJson" >> beam.Map(lambda f: json.dumps(f._asdict(), sort_keys=True))
            | "WriteFailures" >> beam.io.WriteToText(str(args.output_dir / "failures"), shard_name_template="")
        )

    print((args.output_dir / "evaluation").read_text().strip())
    failures = (args.output_dir / "failures").read_text().splitlines()
    print(f"failures={len(failures)}")


if __name__ == "__main__":
    main()
