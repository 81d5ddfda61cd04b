"""InferBridge's benchmark suite: every system side by side, same machine, same models, same rows.

    ./scripts/benchmark                 # full size (a million rows and more; ~15 minutes)
    ./scripts/benchmark --size smoke    # a few thousand rows: checks that every system runs

For each workload (digits: scikit-learn logistic regression, overhead-bound; torch: a small
multilayer perceptron, compute-bound; keyed: four keyed models; keyed-bounded: four keys, at
most two models resident per worker) and each system (raw model loop, Beam's Python
RunInference, InferBridge's Python BlockInference and its row-per-element Inference, Beam's Java
RunInference wrapper, InferBridge's Java Inference with packed blocks, on FeatureBlocks, and by
rows) it runs the system in a fresh process tree and records rows/s, the sum of the peak RSS of
the tree's processes, and the p50/p95 time of one model call on one batch (recorded by the
models themselves). At full size the Java block systems and their baseline run again at 10M
rows (workload ``digits-10M``). Results go to
``benchmarks/results/latest.json`` (a list of objects), ``latest.md`` (the table, with ratios to
the raw loop and to the stock system of the same language) and ``latest.png`` (a chart).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"

# rows per (workload, system kind) at each size; stock systems run fewer rows where they are slow
# (throughput is a rate; they still see hundreds of thousands of rows at full size).
SIZES = {
    "smoke": {"digits": 5000, "torch": 2000, "keyed": 4000, "keyed-bounded": 4000, "slow": 2000, "java": 4000},
    "full": {
        "digits": 2_000_000, "torch": 1_000_000, "keyed": 2_000_000, "keyed-bounded": 2_000_000,
        "slow": 200_000, "java": 1_000_000,
    },
}
PYTHON_SYSTEMS = ("raw", "stock-python", "inferbridge-python", "inferbridge-python-rows")
# java-baseline: the Java systems' input without inference; their "x raw" is against it.
JAVA_SYSTEMS = (
    "java-baseline", "stock-java", "inferbridge-java-blocks", "inferbridge-java-feature-blocks", "inferbridge-java-rows"
)
RAW_OF = {"python": "raw", "java": "java-baseline"}
# At full size the Java block systems run again at 10M rows (the workload "digits-10M"), where
# their fixed costs (JVM start, expansion, job submission: ~3 s) weigh little, with their baseline.
LARGE_JAVA = ("java-baseline", "inferbridge-java-blocks", "inferbridge-java-feature-blocks")
LARGE_ROWS = 10_000_000
LARGE_WORKLOAD = "digits-10M"
# (InferBridge's Python rows run as many rows as stock-python: its ratio to stock compares rates at
# one size, where fixed costs weigh the same.)
SLOW = {"stock-java", "inferbridge-java-rows"}
# Beam's torch handler runs one tensor per element: a million of them would take minutes.
SLOW_ON = {("stock-python", "torch")}
STOCK_OF = {"python": "stock-python", "java": "stock-java"}


def language(system: str) -> str:
    return "java" if system.endswith("java") or "-java-" in system or system.startswith("java-") else "python"


class TreeMemory:
    """Samples the process tree under ``pid`` and keeps each process's peak RSS (VmHWM)."""

    def __init__(self, pid: int) -> None:
        self._root = pid
        self._peaks: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _children(self) -> dict[int, int]:
        parents = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/stat") as f:
                        parents[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
                except (OSError, IndexError, ValueError):
                    pass
        return parents

    def _sample(self) -> None:
        while not self._stop.wait(0.2):
            parents = self._children()
            tree, frontier = {self._root}, [self._root]
            while frontier:
                parent = frontier.pop()
                for pid, ppid in parents.items():
                    if ppid == parent and pid not in tree:
                        tree.add(pid)
                        frontier.append(pid)
            for pid in tree:
                try:
                    with open(f"/proc/{pid}/status") as f:
                        for line in f:
                            if line.startswith("VmHWM:"):
                                self._peaks[pid] = max(self._peaks.get(pid, 0), int(line.split()[1]))
                except OSError:
                    pass

    def peak_mb(self) -> float:
        self._stop.set()
        self._thread.join()
        return sum(self._peaks.values()) / 1024


def latencies(log: Path) -> tuple[float | None, float | None, int]:
    """p50 and p95 of the model calls in ``log`` (milliseconds), and the mean rows per call."""
    if not log.exists():
        return None, None, 0
    calls = [line.split() for line in log.read_text().splitlines() if line.strip()]
    if not calls:
        return None, None, 0
    times = sorted(int(ns) / 1e6 for ns, _ in calls)
    rows = sum(int(r) for _, r in calls) / len(calls)
    return times[len(times) // 2], times[min(len(times) - 1, int(len(times) * 0.95))], round(rows)


def rows_for(system: str, workload: str, sizes: dict) -> int:
    if system in SLOW or (system, workload) in SLOW_ON:
        return sizes["slow"]
    return sizes["java"] if language(system) == "java" else sizes[workload]


def run_system(system: str, workload: str, rows: int, work: Path) -> dict:
    log = work / "calls.log"
    log.unlink(missing_ok=True)
    count_file = work / "count.txt"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]))
    command = [
        sys.executable, str(HERE / f"{language(system)}_systems.py"), "--system", system, "--workload", workload,
        "--rows", str(rows), "--models", str(work / "models.json"),
    ]
    if language(system) == "python":
        command += ["--count-file", str(count_file)]
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT, start_new_session=True)
    memory = TreeMemory(process.pid)
    out, err = process.communicate()
    peak = memory.peak_mb()
    result = {"workload": workload, "system": system, "language": language(system), "rows": rows}
    lines = [line for line in out.splitlines() if line.startswith("{")]
    if process.returncode != 0 or not lines:
        result["error"] = (err.strip().splitlines() or ["no output"])[-1][:300]
        print(f"  {system:32} {workload:14} FAILED: {result['error']}", flush=True)
        print(err[-3000:], file=sys.stderr)
        return result
    measured = json.loads(lines[-1])
    if measured.get("outputs") != rows:
        result["error"] = f"{measured.get('outputs')} outputs for {rows} rows"
    p50, p95, batch = latencies(log)
    result.update(
        seconds=round(measured["seconds"], 3),
        rows_per_sec=round(rows / measured["seconds"]),
        peak_rss_mb=round(peak, 1),
        batch_latency_p50_ms=None if p50 is None else round(p50, 3),
        batch_latency_p95_ms=None if p95 is None else round(p95, 3),
        mean_batch_rows=batch,
        wall_seconds=round(time.perf_counter() - started, 2),
    )
    print(
        f"  {system:32} {workload:14} {result['rows_per_sec']:>12,} rows/s  {result['peak_rss_mb']:>8.0f} MB  "
        f"p50 {result['batch_latency_p50_ms']} ms  p95 {result['batch_latency_p95_ms']} ms",
        flush=True,
    )
    return result


def add_ratios(results: list[dict]) -> None:
    by = {(r["workload"], r["system"]): r for r in results if "rows_per_sec" in r}
    for r in results:
        if "rows_per_sec" not in r:
            continue
        raw = by.get((r["workload"], RAW_OF[r["language"]]))
        stock = by.get((r["workload"], STOCK_OF[r["language"]]))
        r["ratio_to_raw"] = round(r["rows_per_sec"] / raw["rows_per_sec"], 3) if raw else None
        r["ratio_to_stock"] = round(r["rows_per_sec"] / stock["rows_per_sec"], 3) if stock else None
        python = by.get(("digits" if r["workload"] == LARGE_WORKLOAD else r["workload"], "inferbridge-python"))
        if r["language"] == "java" and python:
            r["ratio_to_inferbridge_python"] = round(r["rows_per_sec"] / python["rows_per_sec"], 3)
        single = by.get(("digits", r["system"]))
        if r["workload"].startswith("keyed") and single:
            r["ratio_to_single_model"] = round(r["rows_per_sec"] / single["rows_per_sec"], 3)


def table(results: list[dict]) -> str:
    lines = [
        "| workload | system | rows | rows/s | x raw | x stock | peak RSS MB | batch p50 ms | batch p95 ms |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['workload']} | {r['system']} | {r['rows']:,} | failed: {r['error']} | | | | | |")
            continue
        cells = [
            r["workload"], r["system"], f"{r['rows']:,}", f"{r['rows_per_sec']:,}",
            _ratio(r.get("ratio_to_raw")), _ratio(r.get("ratio_to_stock")), f"{r['peak_rss_mb']:.0f}",
            _num(r["batch_latency_p50_ms"]), _num(r["batch_latency_p95_ms"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _ratio(value) -> str:
    return "" if value is None else f"{value:.2f}"


def _num(value) -> str:
    return "" if value is None else f"{value:.2f}"


def chart(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    workloads = list(dict.fromkeys(r["workload"] for r in results))
    systems = list(dict.fromkeys(r["system"] for r in results))
    fig, axes = plt.subplots(1, len(workloads), figsize=(4.2 * len(workloads), 4.8), squeeze=False)
    for ax, workload in zip(axes[0], workloads):
        shown = [r for r in results if r["workload"] == workload and "rows_per_sec" in r]
        ax.barh([r["system"] for r in shown], [r["rows_per_sec"] for r in shown], color=[f"C{systems.index(r['system'])}" for r in shown])
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_title(workload)
        ax.set_xlabel("rows/s (log scale)")
        ax.invert_yaxis()
    fig.suptitle("InferBridge benchmark: throughput by system")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="full")
    parser.add_argument("--workloads", nargs="*", default=["digits", "torch", "keyed", "keyed-bounded"])
    parser.add_argument("--systems", nargs="*", default=[*PYTHON_SYSTEMS, *JAVA_SYSTEMS])
    parser.add_argument("--results", default=str(RESULTS), help="folder for latest.json/.md/.png")
    args = parser.parse_args()
    sizes = SIZES[args.size]

    work = Path(tempfile.mkdtemp(prefix="inferbridge-bench-"))
    results: list[dict] = []
    try:
        import bench_models

        models = bench_models.train(str(work), str(work / "calls.log"))
        models["root"] = str(work)
        (work / "models.json").write_text(json.dumps(models))
        for workload in args.workloads:
            print(f"{workload}:", flush=True)
            for system in args.systems:
                if language(system) == "java" and (workload == "torch" or (system == "stock-java" and workload != "digits")):
                    continue  # the Java benchmark runs scikit-learn models; Beam's wrapper maps no keys
                results.append(run_system(system, workload, rows_for(system, workload, sizes), work))
        if args.size == "full" and "digits" in args.workloads:
            print(f"{LARGE_WORKLOAD}:", flush=True)
            for system in (s for s in LARGE_JAVA if s in args.systems):
                results.append({**run_system(system, "digits", LARGE_ROWS, work), "workload": LARGE_WORKLOAD})
    finally:
        shutil.rmtree(work, ignore_errors=True)
    add_ratios(results)
    out = Path(args.results)
    out.mkdir(parents=True, exist_ok=True)
    (out / "latest.json").write_text(json.dumps(results, indent=1) + "\n")
    (out / "latest.md").write_text(table(results))
    chart(results, out / "latest.png")
    print(table(results))
    print(f"wrote {out / 'latest.json'}, latest.md and latest.png")
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
