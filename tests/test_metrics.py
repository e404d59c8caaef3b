"""Where per-round metrics go: JSONL, TensorBoard event files, Prometheus."""

import json
import urllib.request

import numpy as np
import pytest
import tensorflow as tf

from fedstream.common.errors import FailedPrecondition
from fedstream.common.protocol import UpdateMeta
from fedstream.coordinator.config import FederationConfig
from fedstream.coordinator.federation import Federation
from fedstream.coordinator.metrics import MetricsLog

from conftest import free_port, tiny_model

ROW = {"round": 3, "train_loss": 0.5, "test_acc": 0.75, "updates_rejected": 2,
       "sites": {"hospital-a": {"push_bytes": 1024, "test_acc": 0.5}}}


def test_jsonl_and_tensorboard_get_every_row(tmp_path):
    log = MetricsLog(str(tmp_path / "m.jsonl"), tensorboard=str(tmp_path / "tb"))
    log(ROW)
    log({**ROW, "round": 4, "train_loss": 0.25})
    log.close()
    rows = [json.loads(line) for line in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert rows[1]["train_loss"] == 0.25
    (event_file,) = (tmp_path / "tb").iterdir()
    seen = {}
    for event in tf.compat.v1.train.summary_iterator(str(event_file)):
        for value in event.summary.value:
            assert value.metadata.plugin_data.plugin_name == "scalars"
            seen[(value.tag, event.step)] = float(tf.make_ndarray(value.tensor))
    assert seen[("train_loss", 3)] == 0.5 and seen[("train_loss", 4)] == 0.25
    assert seen[("test_acc", 3)] == 0.75
    assert seen[("sites/hospital-a/push_bytes", 3)] == 1024  # per-site rows, flattened


def test_prometheus_serves_the_last_round():
    port = free_port()
    log = MetricsLog(None, prometheus_port=port)
    try:
        log(ROW)
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    finally:
        log.close()
    assert "fedstream_test_acc 0.75" in body
    assert "fedstream_updates_rejected 2.0" in body
    assert 'fedstream_site_test_acc{site="hospital-a"} 0.5' in body
    assert 'fedstream_site_push_bytes{site="hospital-a"} 1024.0' in body


def test_rounds_count_accepted_and_rejected_updates():
    rows = []
    fed = Federation(FederationConfig(rounds=2, units=1, server_optimizer="sgd"), tiny_model(),
                     [4, 4], on_metrics=rows.append)
    wid, task, _ = fed.join("w", "cpu")
    a = fed.assignment(wid, 0)
    zeros = [np.zeros(s.shape, np.float32) for s in task.update_specs]
    with pytest.raises(FailedPrecondition):
        fed.push(UpdateMeta(wid, 5, a.version, a.unit, a.client_ids, 2.0, 8), zeros)
    fed.push(UpdateMeta(wid, a.round, a.version, a.unit, a.client_ids, 2.0, 8), zeros)
    assert rows[0]["updates_accepted"] == 1 and rows[0]["updates_rejected"] == 1
    assert rows[0]["leases_expired"] == 0


def test_plot_writes_a_png_comparing_runs(tmp_path):
    from fedstream.cli.plot import plot
    for name, acc in (("a", 0.5), ("b", 0.7)):
        (tmp_path / name).mkdir()
        rows = [{"round": r, "elapsed_s": r * 0.1, "train_loss": 1.0 / r} for r in range(1, 6)]
        rows[-1]["test_acc"] = acc
        (tmp_path / name / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    out = plot([str(tmp_path / "a" / "metrics.jsonl"), str(tmp_path / "b" / "metrics.jsonl")],
               str(tmp_path / "runs.png"))
    data = (tmp_path / "runs.png").read_bytes()
    assert out.endswith("runs.png") and data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    zoomed = plot([str(tmp_path / "a" / "metrics.jsonl")], str(tmp_path / "zoomed.png"),
                  log_x=True, acc_from=0.4)
    assert (tmp_path / "zoomed.png").read_bytes() != data and zoomed.endswith("zoomed.png")
