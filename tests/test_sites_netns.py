"""Data stays home, shown on real links: a coordinator and two sites (a data pool and a
worker each), every process on a host of its own (a network namespace), and a firewall on
each site's data pool host that drops and counts every packet to or from an address outside
its site. Adversary: someone watching (or the coordinator's operator probing) the links
between sites and the coordinator; the claim is that no packet of a site's data pool ever
leaves its site, because fedstream never tries to send one.

Training completes and accuracy rises with the drop counters at zero; a positive control
(the coordinator's host dialling a site's pool) is dropped and counted, so the firewall is
shown to work. Then one site's worker link is cut: the rounds close at their deadline with
the quorum of the other site, and no update is counted twice.

Needs root, `ip netns` and nftables; skipped, saying why, elsewhere.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
from hosts import Hosts, drop_outside, dropped, firewall_available, stop_all

pytestmark = pytest.mark.e2e
ROUNDS = 14
CUT_AFTER = 8  # rounds before site b's worker link is cut


@pytest.fixture
def hosts():
    reason = firewall_available()
    if reason:
        pytest.skip(reason)
    h = Hosts(["coord", "apool", "awork", "bpool", "bwork"])
    yield h
    h.remove()


def wait_for(path, proc, log, timeout_s=120):
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        assert time.monotonic() < deadline and proc.poll() is None, log.read_text()[-2000:]
        time.sleep(0.1)


def dial(hosts: Hosts, name: str, address: str) -> str:
    """A TCP connect from `name`'s namespace: what happened, in words."""
    host, port = address.rsplit(":", 1)
    probe = (f"import socket\ntry:\n socket.create_connection(({host!r}, {port}), timeout=3)\n"
             " print('connected')\nexcept OSError as e:\n print(type(e).__name__)")
    return subprocess.run(["ip", "netns", "exec", hosts.ns[name], sys.executable, "-c", probe],
                          capture_output=True, text=True, timeout=30).stdout.strip()


def test_site_data_never_leaves_its_site_and_a_cut_site_closes_rounds_by_quorum(hosts,
                                                                                 tmp_path):
    for site in ("a", "b"):
        drop_outside(hosts, f"{site}pool", [hosts.addr[f"{site}work"]])
    coord = f"{hosts.addr['coord']}:50051"
    pools = {site: f"{hosts.addr[f'{site}pool']}:50052" for site in ("a", "b")}
    metrics = tmp_path / "metrics.jsonl"
    split = subprocess.run([sys.executable, "-m", "fedstream.cli", "split", "--sites", "2",
                            "--out", str(tmp_path / "sites")], capture_output=True, text=True)
    assert split.returncode == 0, split.stderr
    procs = []
    try:
        for i, site in enumerate(("a", "b")):
            log = tmp_path / f"{site}pool.log"
            procs.append(hosts.run(f"{site}pool", [
                "datapool", "--listen", pools[site], "--site", site, "--port-file",
                str(tmp_path / f"{site}pool.addr"), "--data-format", "arrays", "--data",
                str(tmp_path / "sites" / f"site-{i}.npz"), "--num-classes", "10", "--clients",
                "20"], log))
            wait_for(tmp_path / f"{site}pool.addr", procs[-1], log)
        coordinator = hosts.run("coord", [
            "coordinator", "--listen", coord, "--sites", "a,b", "--min-workers", "2",
            "--rounds", str(ROUNDS), "--round-deadline-s", "2", "--quorum", "1",
            "--eval-every", "5", "--eval-timeout-s", "4", "--normalize", "--metrics",
            str(metrics)], tmp_path / "coord.log")
        procs.append(coordinator)
        for site in ("a", "b"):
            procs.append(hosts.run(f"{site}work", [
                "worker", "--coordinator", coord, "--datapool", pools[site], "--site", site,
                "--threads", "1", "--name", f"{site}-worker"], tmp_path / f"{site}work.log"))
        deadline = time.monotonic() + 240
        while not metrics.exists() or len(metrics.read_text().splitlines()) < CUT_AFTER:
            assert time.monotonic() < deadline, (tmp_path / "coord.log").read_text()[-3000:]
            assert all(p.poll() is None for p in procs), "a service died"
            time.sleep(0.05)
        hosts.cut("bwork")
        assert coordinator.wait(timeout=240) == 0, (tmp_path / "coord.log").read_text()[-3000:]
        # fedstream never sent a packet across a site's fence
        assert dropped(hosts, "apool") == {"dropped_in": 0, "dropped_out": 0}
        assert dropped(hosts, "bpool") == {"dropped_in": 0, "dropped_out": 0}
        # positive control: the coordinator's host dialling site a's pool is dropped, counted
        assert dial(hosts, "coord", pools["a"]) in ("TimeoutError", "timeout")
        assert dropped(hosts, "apool")["dropped_in"] > 0
        assert dial(hosts, "awork", pools["a"]) == "connected"  # the site's own worker may
    finally:
        stop_all(procs)
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [r["round"] for r in rows] == list(range(1, ROUNDS + 1))
    assert all(r["updates_accepted"] + r["stragglers"] == 2 for r in rows)  # none twice
    assert rows[-1]["stragglers"] == 1 and rows[-1]["sites"]["b"]["units"] == 0
    first, last = rows[4], rows[-1]  # evaluated before and after the cut
    assert first["eval_sites_missing"] == 0 and last["eval_sites_missing"] == 1
    assert last["sites"]["a"]["test_acc"] > first["sites"]["a"]["test_acc"]
    for site in ("a", "b"):  # each link's bytes are in the rows
        assert first["sites"][site]["fetch_bytes"] > 0 and first["sites"][site]["push_bytes"] > 0
    assert "reads no data pool" in (tmp_path / "coord.log").read_text()
