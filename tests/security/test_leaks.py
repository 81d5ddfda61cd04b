"""Expansions leave nothing behind: one past its deadline is stopped (its CPU use ends), and no
expansion leaves a temporary directory.

The service runs with --import/--allow-urn for the test transform of python/tests/slow_expansion.py
(``burn=SECS`` keeps a CPU busy in pure Python while the transform is rebuilt) and with TMPDIR set
to a directory of the test's own, so that everything it writes there can be counted.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest
from apache_beam.portability.api import beam_expansion_api_pb2_grpc
from attack_support import (
    START_TIMEOUT_SECS,
    Service,
    assert_healthy,
    channel_to,
    expand,
    expansion_request,
    launch,
    native_request,
    stop,
)

from inferbridge import Model, healthcheck
from inferbridge.local_services import wait_until_serving

TESTS_DIR = Path(__file__).resolve().parents[2] / "python" / "tests"
sys.path.insert(0, str(TESTS_DIR))  # the test transform, imported here as in the service
from slow_expansion import SLOW_URN  # noqa: E402

TIMEOUT_SECS = 10  # long enough for a first expansion in a fresh process on a busy machine
# Each health check, while an expansion burns a CPU and after, must answer within this (wall
# time, on a busy machine; the service answers in milliseconds when it is not frozen).
HEALTH_SECS = 5.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@pytest.fixture(scope="module")
def leak_service(layout, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("leaks_tmpdir")
    env = {"TMPDIR": str(tmp), "PYTHONPATH": os.pathsep.join([str(TESTS_DIR), os.environ.get("PYTHONPATH", "")])}
    args = [
        f"--trusted-model-root={layout.trusted}",
        "--import=slow_expansion",
        f"--allow-urn={SLOW_URN}",
        f"--expansion-timeout-secs={TIMEOUT_SECS}",
    ]
    process, port, log_path = launch("leaks", layout.base / "logs", args, env)
    service = Service("leaks", port, process, log_path)
    try:
        wait_until_serving(service.address, process, START_TIMEOUT_SECS)
        yield service, tmp
    finally:
        stop(process)


def _process_tree_cpu(root: int) -> dict[int, float]:
    """CPU seconds (user + system) of ``root`` and every process descended from it, by pid."""
    parents, cpu = {}, {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:  # it ended meanwhile
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        parents[int(entry)] = int(fields[1])
        cpu[int(entry)] = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    tree, frontier = {root}, [root]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, ppid in parents.items() if ppid == parent and pid not in tree]
        tree.update(children)
        frontier.extend(children)
    return {pid: cpu[pid] for pid in tree if pid in cpu}


def _healthy_within_bound(service: Service) -> None:
    started = time.monotonic()
    assert healthcheck.check(service.address, timeout_secs=HEALTH_SECS) == "SERVING"
    assert time.monotonic() - started < HEALTH_SECS


def _burn_request(secs: float):
    return expansion_request(SLOW_URN, f"burn={secs}".encode())


def test_an_expansion_past_its_deadline_is_stopped_and_its_cpu_use_ends(leak_service):
    service, _ = leak_service
    pid = service.process.pid
    before = _process_tree_cpu(pid)
    answer: dict = {}
    caller = threading.Thread(target=lambda: answer.update(response=expand(service, _burn_request(600))))
    caller.start()

    # While it burns: the process tree gains CPU time (one process of it burns) and health
    # checks answer.
    burner, deadline = None, time.monotonic() + 60
    while burner is None and caller.is_alive() and time.monotonic() < deadline:
        _healthy_within_bound(service)
        now = _process_tree_cpu(pid)
        burner = next((p for p in now if p != pid and now[p] - before.get(p, 0.0) >= 0.5), None)
    caller.join(timeout=120)
    assert not caller.is_alive()
    assert burner is not None, "no process of the service burned CPU for the expansion"
    response = answer["response"]
    assert f"did not finish within {TIMEOUT_SECS:.1f} s" in response.error and "it was stopped" in response.error

    # After the answer: the burning process is gone, and the service's processes, together,
    # stop gaining CPU time (a burning expansion would add a second per second).
    deadline = time.monotonic() + 30
    while burner in _process_tree_cpu(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert burner not in _process_tree_cpu(pid), "the expansion's process was not stopped"
    # Its replacement starts meanwhile (an interpreter importing Beam): wait for a quiet 3 s.
    gains, deadline = [], time.monotonic() + 120
    while not gains or (gains[-1] >= 1.0 and time.monotonic() < deadline):
        first, window_start = _process_tree_cpu(pid), time.monotonic()
        while time.monotonic() - window_start < 3:
            _healthy_within_bound(service)
            time.sleep(0.2)
        second = _process_tree_cpu(pid)
        gains.append(sum(second[p] - first.get(p, 0.0) for p in second))
    assert gains[-1] < 1.0, f"the service's processes kept using CPU: seconds per 3 s window: {gains}"
    assert_healthy(service)
    # And it still expands (a fresh process replaced the stopped one).
    quick = expand(service, expansion_request(SLOW_URN, b"sleep=0"))
    assert not quick.error, quick.error


def test_a_clients_short_deadline_does_not_cost_the_service_a_process(leak_service):
    """Past a client's own deadline (shorter than the service's) the expansion goes on, its
    answer unread, and its process serves the next one: a client that always gives a short
    deadline cannot make the service kill and restart processes (an interpreter importing Beam
    each)."""
    service, _ = leak_service
    pid = service.process.pid
    assert not expand(service, expansion_request(SLOW_URN, b"sleep=0")).error  # both processes ready
    processes = set(_process_tree_cpu(pid)) - {pid}
    with channel_to(service) as channel:
        stub = beam_expansion_api_pb2_grpc.ExpansionServiceStub(channel)
        for _ in range(6):
            try:  # the service answers at the client's deadline: the answer may come, or not
                answer = stub.Expand(expansion_request(SLOW_URN, b"sleep=1.5"), timeout=0.5).error
            except grpc.RpcError as e:
                answer = e.code()
            assert answer == grpc.StatusCode.DEADLINE_EXCEEDED or "did not finish within the client's deadline" in answer
    # Each expansion ends within the service's deadline, and its process takes the next.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        quick = expand(service, expansion_request(SLOW_URN, b"sleep=0"))
        assert not quick.error, quick.error
        if set(_process_tree_cpu(pid)) - {pid} == processes:
            break
        time.sleep(0.5)
    assert set(_process_tree_cpu(pid)) - {pid} == processes, "expansion processes were replaced"
    _healthy_within_bound(service)


def test_expansions_leave_no_temporary_directories(leak_service, good_model):
    service, tmp = leak_service
    request = native_request(Model.sklearn(good_model))
    for _ in range(10):
        response = expand(service, request)
        assert not response.error, response.error
    timed_out = expand(service, _burn_request(600))
    assert "did not finish within" in timed_out.error
    assert not expand(service, request).error

    left = sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*"))
    assert not [p for p in left if "beam-pipeline-temp" in p], left
    # What remains is inside the live expansion processes' own directories, one each at most (the
    # stopped process's directory went with it; a live one's goes with it): a process may hold
    # Beam's requirements cache and one staging directory, never one per expansion.
    processes = [p for p in left if "/" not in p]
    assert all(p.startswith("inferbridge-expansion-") for p in processes), left
    assert all(p.split("/")[0] in processes for p in left), left
    assert len(processes) <= 2, left
    assert len([p for p in left if p.count("/") == 1]) <= 2 * len(processes), left
    assert_healthy(service)
