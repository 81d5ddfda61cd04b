"""The benchmark suite at its smoke size: every system runs every workload it supports and the
results are written. It checks that the suite works, not how fast anything is."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PYTHON_SYSTEMS = {"raw", "stock-python", "inferbridge-python", "inferbridge-python-rows"}
JAVA_SYSTEMS = {"inferbridge-java-blocks", "inferbridge-java-feature-blocks", "inferbridge-java-rows"}


def test_every_system_runs_and_the_results_are_written(tmp_path):
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks/run.py"), "--size", "smoke", "--results", str(tmp_path)],
        capture_output=True, text=True, timeout=1500, cwd=ROOT, env=dict(os.environ),
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads((tmp_path / "latest.json").read_text())
    ran = {(r["workload"], r["system"]) for r in results}
    expected = {(w, s) for w in ("digits", "torch", "keyed", "keyed-bounded") for s in PYTHON_SYSTEMS}
    expected |= {(w, s) for w in ("digits", "keyed", "keyed-bounded") for s in JAVA_SYSTEMS}
    expected |= {(w, "java-baseline") for w in ("digits", "keyed", "keyed-bounded")}
    expected.add(("digits", "stock-java"))
    assert ran == expected
    for r in results:
        assert "error" not in r, r
        assert r["rows_per_sec"] > 0 and r["peak_rss_mb"] > 0, r
        # Every system's model recorded its calls, so the latency columns are filled (the Java
        # baseline has no model); every ratio has its raw system (Python's raw loop, the Java baseline).
        if r["system"] != "java-baseline":
            assert r["batch_latency_p50_ms"] is not None and r["batch_latency_p95_ms"] >= r["batch_latency_p50_ms"], r
        assert r["ratio_to_raw"] is not None, r
    table = (tmp_path / "latest.md").read_text().splitlines()
    assert table[0].startswith("| workload | system | rows | rows/s |") and len(table) == 2 + len(results)
    assert (tmp_path / "latest.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
