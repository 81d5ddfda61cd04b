"""Runs one Java system on one workload, with the services it needs, and prints one JSON line.

    python benchmarks/java_systems.py --system inferbridge-java-blocks --workload digits \
        --rows 1000000 --models models.json

Systems: ``stock-java`` (Beam's Java RunInference wrapper, against Beam's stock Python
expansion service with its loopback worker pool), ``inferbridge-java-blocks`` (InferBridge's
Java ``Inference`` with ``withBlockSize(1000)``), ``inferbridge-java-feature-blocks`` (the same
rows made as ``FeatureBlock``s of 1000 for ``Inference.overBlocks``, the block-level Java API),
``inferbridge-java-rows`` (one Row per element) and ``java-baseline`` (the same Rows counted
without inference: the Java input and the runner alone), each a ``JavaThroughput`` pipeline on
Beam's local portable job service, in a JVM with a 512 MB heap (``JAVA_HEAP``: the same for
every system; a JVM left to size its heap keeps what it may, ~1 GB here, at the same speed).
The time is the pipeline's construction (with the cross-language expansion) plus its run until
the last result is written; the job service's fixed five-second teardown after that is left out.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from inferbridge.local_services import free_port

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
VENV_BIN = Path(sys.executable).parent
BLOCK_SIZE = 1000
JAVA_HEAP = "-Xmx512m"
MAX_MODELS = 2  # keyed-bounded, as in python_systems.py


def wait_for_port(port: int, process: subprocess.Popen, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with status {process.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise RuntimeError(f"{what} did not listen on port {port} within {timeout} s")


def java_args(system: str, workload: str, rows: int, models: dict, digits: str) -> list[str]:
    classpath = (ROOT / "benchmarks/build/runtime-classpath.txt").read_text().strip()
    args = ["java", JAVA_HEAP, "-cp", classpath, "dev.inferbridge.benchmarks.JavaThroughput",
            f"--system={system}", f"--rows={rows}", f"--digits={digits}", f"--block-size={BLOCK_SIZE}"]
    if workload == "digits":
        args.append(f"--model={models['digits']}")
    else:
        args += [f"--model={','.join(models['keyed'])}", f"--keys={len(models['keyed'])}"]
        if workload == "keyed-bounded":
            args.append(f"--max-models={MAX_MODELS}")
    return args


def run(system: str, workload: str, rows: int, models: dict) -> dict:
    digits = os.path.join(models["root"], "digits.csv")
    if not os.path.exists(digits):
        import bench_models  # only here: this process is counted in each system's peak RSS

        bench_models.write_digits_csv(digits)
    command = java_args(system, workload, rows, models, digits)
    services: list[subprocess.Popen] = []
    try:
        if system == "stock-java":
            job_port, expansion_port = free_port(), free_port()
            env = dict(os.environ, PATH=f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}")
            services.append(subprocess.Popen(
                [sys.executable, "-m", "apache_beam.runners.portability.local_job_service_main", "-p", str(job_port)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env))
            # Beam's own service: it runs the wrapper's Python code strings (hence the glob).
            services.append(subprocess.Popen(
                [sys.executable, "-m", "apache_beam.runners.portability.expansion_service_main", "--port",
                 str(expansion_port), "--fully_qualified_name_glob=*", "--serve_loopback_worker"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env))
            wait_for_port(job_port, services[0], "the job service")
            wait_for_port(expansion_port, services[1], "Beam's expansion service")
            command += [f"--expansion-service=localhost:{expansion_port}", f"--jobEndpoint=localhost:{job_port}"]
        else:
            command = [str(VENV_BIN / "inferbridge-local"), f"--trusted-model-root={models['root']}", "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=1800)
    finally:
        for service in services:
            service.terminate()
        for service in services:
            try:
                service.wait(timeout=10)
            except subprocess.TimeoutExpired:
                service.kill()
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        sys.stderr.write(done.stderr[-4000:])
        raise SystemExit(f"{system} failed with status {done.returncode}")
    measured = json.loads(lines[-1])
    return {
        "rows": rows,
        "seconds": measured["build_seconds"] + measured["result_seconds"],
        "outputs": measured["count"],
        "teardown_seconds": round(measured["seconds"] - measured["result_seconds"], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--system",
        required=True,
        choices=(
            "java-baseline", "stock-java", "inferbridge-java-blocks", "inferbridge-java-feature-blocks",
            "inferbridge-java-rows",
        ),
    )
    parser.add_argument("--workload", required=True, choices=("digits", "keyed", "keyed-bounded"))
    parser.add_argument("--rows", type=int, required=True)
    parser.add_argument("--models", required=True, help="the JSON file written by run.py")
    args = parser.parse_args()
    with open(args.models) as f:
        models = json.load(f)
    print(json.dumps(run(args.system, args.workload, args.rows, models)))


if __name__ == "__main__":
    main()
