"""What follows a server step that the next round need not wait for: test-set evaluation,
the checkpoint and the metrics sinks. Each step's report holds that step's pinned weights
(and optimizer state, when checkpointing), so the work reads nothing that moves; reports are
handled one at a time in step order, on a background thread or, where a caller wants every
effect visible when `push` returns (domain tests, a library user), inline.
"""

from __future__ import annotations

import logging
import queue
import threading
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import keras
import numpy as np

from fedstream.common.learning import model_from_json
from fedstream.coordinator import checkpoint
from fedstream.coordinator.federated_eval import FederatedEvaluation
from fedstream.coordinator.policy import Step

log = logging.getLogger(__name__)

Evaluator = Callable[[keras.Model], dict]
COUNTERS = ("updates_accepted", "updates_duplicate", "updates_rejected", "leases_expired")


def unit_metrics(reports: Sequence[dict[str, float]]) -> dict[str, float]:
    """One step's worker reports combined: the training loss weighted like the updates,
    byte counts summed, timings (`*_s`) averaged over units."""
    total_weight = sum(r["weight"] for r in reports)
    if not reports:  # an empty round
        return {"train_loss": float("nan")}
    out = {"train_loss": sum(r.get("loss", 0.0) * r["weight"] for r in reports) / total_weight}
    for key in sorted({k for r in reports for k in r}):
        values = [float(r[key]) for r in reports if key in r]
        if key.endswith("_bytes"):
            out[key] = sum(values)
        elif key.endswith("_s"):
            out[key] = sum(values) / len(values)
    return out


def site_metrics(step: Step, workers: Mapping[str, int]) -> dict[str, dict]:
    """Per site, in one step: workers connected, clients and examples computed, their
    training loss, and the bytes over each link: pull (coordinator to the site's workers) and
    push (back) cross the site's boundary; fetch (the site's data pool to its workers) stays
    inside it."""
    out = {}
    for site in sorted(workers):
        units = [u for u in step.units if u.site == site]
        row = {"workers": workers[site], "units": len(units),
               "clients": sum(len(u.client_ids) for u in units),
               "examples": sum(int(u.update.metrics.get("examples", 0)) for u in units)}
        if units:
            combined = unit_metrics([u.update.metrics for u in units])
            row.update({k: v for k, v in combined.items()
                        if k == "train_loss" or k.endswith("_bytes")})
        out[site] = row
    return out


def step_metrics(step: Step, counts: Mapping[str, int], *, round_number: int, version: int,
                 opened_at: float, started: float, now: float,
                 site_workers: Mapping[str, int] | None = None) -> dict:
    """The row a server step writes (before evaluation adds test metrics); with sites, a
    `sites` table of per-site metrics; what the step releases of it."""
    round_s = now - opened_at
    sites = {} if site_workers is None else {"sites": site_metrics(step, site_workers)}
    return step.released({
        "round": round_number, "version": version, "round_s": round_s,
        "rounds_per_s": 1.0 / round_s if round_s > 0 else float("inf"),
        "elapsed_s": now - started,
        "clients": sum(len(u.client_ids) for u in step.units),
        **unit_metrics([u.update.metrics for u in step.units]), **step.metrics,
        **{k: counts[k] for k in COUNTERS}, **sites,
    })


@dataclass(frozen=True)
class Report:
    metrics: dict | None  # the step's own metrics; None for a checkpoint alone
    evaluate: Sequence[np.ndarray] | None = None  # weights to evaluate, when due
    checkpoint: checkpoint.Checkpoint | None = None
    federated: FederatedEvaluation | None = None  # the sites' evaluation, when due


class Reporter:
    def __init__(self, *, model_json: str, evaluator: Evaluator | None,
                 on_metrics: Callable[[dict], None], checkpoint_dir: str | None,
                 background: bool):
        self._model_json = model_json
        self._evaluator = evaluator
        self._on_metrics = on_metrics
        self._checkpoint_dir = checkpoint_dir
        self.last_metrics: dict = {}
        self._eval_model: keras.Model | None = None
        self._eval_lock = threading.Lock()
        self._error: BaseException | None = None
        self._queue: queue.Queue | None = None
        if background:
            self._queue = queue.Queue()
            threading.Thread(target=self._work, name="reports", daemon=True).start()

    @property
    def evaluates(self) -> bool:
        return self._evaluator is not None

    def submit(self, report: Report) -> None:
        if self._queue is None:
            self._handle(report)
        else:
            self._queue.put(report)

    def flush(self) -> None:
        """Wait until every submitted report is handled; raise the first failure."""
        if self._queue is not None:
            self._queue.join()
        if self._error is not None:
            raise RuntimeError(f"reporting a round failed: {self._error}") from self._error

    def evaluate(self, weights: Sequence[np.ndarray]) -> dict[str, float]:
        """Test metrics of `weights`, on a model of their own (the live one moves on)."""
        with self._eval_lock:
            if self._eval_model is None:
                self._eval_model = model_from_json(self._model_json)
            self._eval_model.set_weights(list(weights))
            return self._evaluator(self._eval_model)

    def _work(self) -> None:
        while True:
            report = self._queue.get()
            try:
                if self._error is None:
                    self._handle(report)
            except Exception as e:  # kept for flush(), which the coordinator's main loop calls
                log.exception("reporting failed")
                self._error = e
            finally:
                self._queue.task_done()

    def _handle(self, report: Report) -> None:
        metrics = None if report.metrics is None else dict(report.metrics)
        if report.evaluate is not None and metrics is not None:
            metrics.update(self.evaluate(report.evaluate))
        if report.federated is not None and metrics is not None:
            evaluation = report.federated.wait()
            per_site = evaluation.pop("sites")
            metrics.update(evaluation)
            sites = metrics.setdefault("sites", {})
            for name, values in per_site.items():
                sites[name] = {**sites.get(name, {}), **values}
        if report.checkpoint is not None and self._checkpoint_dir is not None:
            checkpoint.save(self._checkpoint_dir, report.checkpoint)
        if metrics is not None:
            self.last_metrics = metrics
            self._on_metrics(metrics)
