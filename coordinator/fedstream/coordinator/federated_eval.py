"""Federated evaluation: each site evaluates a version on its own held-out examples and
reports counts and metrics; the coordinator weights the sites by examples. No example leaves
its site, only a loss and an accuracy per site.

One `FederatedEvaluation` per evaluated version: the facade leases it, site by site, to one
worker of each site (another worker of the site takes over when the lease expires) and
records the reports; the reporter waits for it, at most `timeout_s`, before it writes the
round's row. A site that did not report by then is left out of that row and counted.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass
from typing import Sequence

from fedstream.common.errors import FailedPrecondition, InvalidArgument
from fedstream.common.protocol import EvaluationResult
from fedstream.coordinator.config import FederationConfig
from fedstream.coordinator.sites import Sites

log = logging.getLogger(__name__)


@dataclass
class _SiteLease:
    worker_id: str | None = None
    deadline: float = 0.0
    result: EvaluationResult | None = None


class FederatedEvaluation:
    def __init__(self, round_number: int, version: int, sites: Sequence[str], *,
                 lease_s: float, timeout_s: float):
        self.round = round_number
        self.version = version
        self._sites = {name: _SiteLease() for name in sites}
        self._lease_s = lease_s
        self._deadline = time.monotonic() + timeout_s
        self._complete = threading.Event()
        if not self._sites:
            self._complete.set()

    def expired(self) -> bool:
        return self._complete.is_set() or time.monotonic() >= self._deadline

    def lease(self, site: str, worker_id: str, now: float) -> bool:
        """Whether this worker should evaluate now for its site (then it holds the lease)."""
        entry = self._sites.get(site)
        if entry is None or entry.result is not None or self.expired():
            return False
        if entry.worker_id not in (None, worker_id) and entry.deadline >= now:
            return False
        entry.worker_id, entry.deadline = worker_id, now + self._lease_s
        return True

    def holds(self, site: str, worker_id: str) -> bool:
        entry = self._sites.get(site)
        return entry is not None and entry.result is None and entry.worker_id == worker_id

    def record(self, site: str, result: EvaluationResult) -> None:
        """A site's report; the evaluation completes with the last site's."""
        if result.version < self.version:
            raise FailedPrecondition(f"evaluation of version {result.version} but version "
                                     f"{self.version} was asked for: pull the weights again")
        self._sites[site].result = result
        if all(e.result is not None for e in self._sites.values()):
            self._complete.set()

    def wait(self) -> dict:
        """The row's test metrics once every site reported or the timeout passed: overall
        (sites weighted by examples) and per site."""
        self._complete.wait(max(0.0, self._deadline - time.monotonic()))
        results = {name: e.result for name, e in self._sites.items() if e.result is not None}
        missing = sorted(set(self._sites) - set(results))
        if missing:
            log.warning("round %d: sites %s did not report their evaluation of version %d in "
                        "time; the row leaves them out", self.round, missing, self.version)
        out: dict = {"eval_sites_missing": len(missing)}
        n = sum(r.num_examples for r in results.values())
        if n:
            out["test_loss"] = sum(r.loss * r.num_examples for r in results.values()) / n
            out["test_acc"] = sum(r.accuracy * r.num_examples for r in results.values()) / n
            out["test_examples"] = n
        out["sites"] = {name: {"test_loss": r.loss, "test_acc": r.accuracy,
                               "test_examples": r.num_examples}
                        for name, r in results.items()}
        return out


class SiteEvaluations:
    """The evaluations still open: which one a site's worker should run now, and where its
    report goes."""

    def __init__(self):
        self._open: list[FederatedEvaluation] = []

    def open(self, round_number: int, version: int, sites: Sites,
             config: FederationConfig) -> FederatedEvaluation | None:
        """Ask every site to evaluate `version` (None without sites: the coordinator's test
        set evaluates)."""
        if not sites.federated:
            return None
        evaluation = FederatedEvaluation(round_number, version, [s.name for s in sites],
                                         lease_s=config.lease_s,
                                         timeout_s=config.eval_timeout_s)
        self._open.append(evaluation)
        return evaluation

    def lease(self, site: str, worker_id: str, now: float) -> FederatedEvaluation | None:
        self._open = [e for e in self._open if not e.expired()]
        return next((e for e in self._open if e.lease(site, worker_id, now)), None)

    def record(self, site: str, result: EvaluationResult) -> None:
        """A site's report of the evaluation its worker holds."""
        check_result(result)
        evaluation = next((e for e in self._open if e.holds(site, result.worker_id)), None)
        if evaluation is None:
            raise FailedPrecondition(
                f"no evaluation is pending for worker {result.worker_id} of site {site!r} "
                "(it timed out, or another worker of the site took it over): drop it and "
                "ask GetAssignment for work")
        evaluation.record(site, result)
        log.info("site %r evaluated version %d: loss %.4f, accuracy %.4f on %d examples",
                 site, result.version, result.loss, result.accuracy, result.num_examples)


def check_result(result: EvaluationResult) -> None:
    if result.num_examples < 1:
        raise InvalidArgument("an evaluation needs num_examples >= 1: a site without held-out "
                              "examples cannot evaluate")
    if not (math.isfinite(result.loss) and 0.0 <= result.accuracy <= 1.0):
        raise InvalidArgument(f"evaluation metrics loss={result.loss} accuracy="
                              f"{result.accuracy}: loss must be finite and accuracy in [0, 1]")
