"""Faults with real processes on loopback: a worker killed mid-run, the data pool restarted.
Each run must end with the very model of an undisturbed run (the same units and threads)."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import (
    assert_same_weights,
    free_port,
    launch_service,
    rows,
    start_service,
    start_worker,
    stop,
    wait_for_round,
)

pytestmark = pytest.mark.e2e
ROUNDS = 30


@pytest.fixture(scope="module")
def undisturbed(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("reference") / "weights.npz"
    subprocess.run([sys.executable, "-m", "fedstream.cli", "--log-level", "WARNING", "simulate",
                    "--units", "2", "--threads", "1", "--rounds", str(ROUNDS),
                    "--save-weights", str(path)], check=True, capture_output=True, timeout=300)
    return path


def federation_args(tmp_path: Path, pool: str, *extra: str) -> list[str]:
    """Coordinator flags of every fault run: 2 units, ROUNDS rounds, metrics and weights."""
    return ["--datapool", pool, "--min-workers", "2", "--rounds", str(ROUNDS), "--metrics",
            str(tmp_path / "metrics.jsonl"), "--save-weights", str(tmp_path / "weights.npz"),
            *extra]


def assert_each_round_counted_once(metrics: Path) -> None:
    history = rows(metrics)
    assert [r["round"] for r in history] == list(range(1, ROUNDS + 1))
    assert all(r["updates_accepted"] == 2 for r in history)  # every unit counted exactly once


def test_a_killed_worker_costs_a_lease_and_changes_nothing(tmp_path, undisturbed):
    datapool, pool = start_service(tmp_path, "datapool")
    metrics, weights = tmp_path / "metrics.jsonl", tmp_path / "weights.npz"
    coordinator, address = launch_service(tmp_path, "coordinator",
                                          *federation_args(tmp_path, pool, "--lease-s", "2"))
    survivor = start_worker(tmp_path, address, pool, "survivor")
    victim = start_worker(tmp_path, address, pool, "victim")
    try:
        wait_for_round(metrics, 3, [datapool, coordinator, survivor])
        victim.send_signal(signal.SIGKILL)
        assert coordinator.wait(timeout=180) == 0
        assert survivor.wait(timeout=60) == 0
    finally:
        stop(victim, survivor, coordinator, datapool)
    assert_each_round_counted_once(metrics)
    done = re.search(r"stopped after (\d+) units", (tmp_path / "survivor.log").read_text())
    assert int(done.group(1)) > ROUNDS  # it took over the victim's unit
    assert_same_weights(weights, undisturbed)


def start_federation(tmp_path: Path, pool: str, args: list[str], **listen):
    """The coordinator (with `args`) and its two workers, started together."""
    coordinator, address = launch_service(tmp_path, "coordinator", *args, **listen)
    return coordinator, [start_worker(tmp_path, address, pool, f"worker-{i}") for i in range(2)]


def test_a_restarted_data_pool_is_retried_transparently(tmp_path, undisturbed):
    port = free_port()
    datapool, pool = start_service(tmp_path, "datapool", listen=f"127.0.0.1:{port}")
    metrics, weights = tmp_path / "metrics.jsonl", tmp_path / "weights.npz"
    coordinator, workers = start_federation(tmp_path, pool, federation_args(tmp_path, pool))
    restarted = None
    try:
        wait_for_round(metrics, 3, [datapool, coordinator, *workers])
        datapool.send_signal(signal.SIGKILL)
        datapool.wait()
        time.sleep(1.0)
        restarted, _ = start_service(tmp_path, "datapool", listen=f"127.0.0.1:{port}",
                                     log_name="datapool-restarted")
        assert coordinator.wait(timeout=180) == 0
        assert all(w.wait(timeout=60) == 0 for w in workers)
    finally:
        stop(*workers, coordinator, datapool, *([restarted] if restarted else []))
    assert_each_round_counted_once(metrics)
    assert_same_weights(weights, undisturbed)
    assert "retrying" in "".join((tmp_path / f"worker-{i}.log").read_text() for i in range(2))


def test_a_restarted_coordinator_resumes_from_its_checkpoint(tmp_path, undisturbed):
    datapool, pool = start_service(tmp_path, "datapool")
    port = free_port()
    metrics, weights = tmp_path / "metrics.jsonl", tmp_path / "weights.npz"
    args = federation_args(tmp_path, pool, "--checkpoint-dir", str(tmp_path / "ckpt"))
    coordinator, workers = start_federation(tmp_path, pool, args, listen=f"127.0.0.1:{port}")
    restarted = None
    try:
        wait_for_round(metrics, 5, [datapool, coordinator, *workers])
        coordinator.send_signal(signal.SIGKILL)
        coordinator.wait()
        restarted, _ = start_service(tmp_path, "coordinator", *args, listen=f"127.0.0.1:{port}",
                                     log_name="coordinator-restarted")
        assert restarted.wait(timeout=180) == 0
        assert all(w.wait(timeout=60) == 0 for w in workers)
    finally:
        stop(*workers, coordinator, datapool, *([restarted] if restarted else []))
    log = (tmp_path / "coordinator-restarted.log").read_text()
    resumed_after = int(re.search(r"resumed from .* after round (\d+)", log).group(1))
    assert 5 <= resumed_after < ROUNDS
    history = rows(metrics)
    assert [r["round"] for r in history][-1] == ROUNDS
    assert_same_weights(weights, undisturbed)
    assert "joined again" in "".join((tmp_path / f"worker-{i}.log").read_text() for i in range(2))
