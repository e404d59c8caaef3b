"""Round policies: when work exists, which update fits it, and when the model steps.

The `Federation` facade owns the lock and the phase, and calls its policy; a policy owns its
units and never calls back up. It reads and steps the `ServerModel` it was given, and writes
only to the counters it was given. One implementation per file: synchronous rounds
(`rounds`), the secure-aggregation round workflow (`secure_rounds`), FedBuff (`fedbuff`) and
FedAsync (`fedasync`); `federation.make_policy` picks one.
"""

from __future__ import annotations

import abc
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from fedstream.common.errors import FailedPrecondition
from fedstream.common.protocol import Action, Assignment, PartyMessage, UpdateMeta
from fedstream.common.tensors import TensorSpec
from fedstream.coordinator.aggregation import Output, RoundContext, rule_of
from fedstream.coordinator.config import FederationConfig
from fedstream.coordinator.server_model import ServerModel
from fedstream.coordinator.sites import Sites
from fedstream.coordinator.units import Contribution, Unit
from fedstream.coordinator.validation import (
    check_finite,
    check_specs,
    check_weight,
    expected_specs,
)


def _everything(row: dict) -> dict:
    return row


@dataclass(frozen=True)
class Step:
    """What one server step used: the units it applied and metrics of its own; whether
    training must end after it (a privacy budget spent), and what of its row may be
    published."""
    units: Sequence[Unit]
    metrics: dict = field(default_factory=dict)
    final: bool = False
    released: Callable[[dict], dict] = _everything


class RoundPolicy(abc.ABC):
    def __init__(self, config: FederationConfig, sites: Sites, model: ServerModel,
                 counts: Counter):
        self.config = config
        self.sites = sites  # read only: the facade registers sites
        self.model = model
        self.counts = counts  # leases_expired is counted here
        self.per_client = rule_of(config).per_client  # robust rules take clients' own updates
        self._update_specs = tuple(TensorSpec(v.path, np.dtype("<f4"), tuple(v.shape))
                                   for v in model.trainable)

    # the round moves through phases that any message or a timeout may close: the facade wakes
    # the waiting workers after each
    phased = False

    @abc.abstractmethod
    def open(self, round_number: int) -> None:
        """Round (or, asynchronously, server step) `round_number` starts collecting."""

    def assign(self, worker_id: str, site: str, now: float,
               round_number: int) -> Assignment | None:
        """The worker's next step of round `round_number`; None when there is none now."""
        unit = self.lease(worker_id, site, now)
        if unit is None:
            return None
        return Assignment(Action.TRAIN, round=round_number, version=self.model.version,
                          unit=unit.index, client_ids=unit.client_ids,
                          step=self.step_of(unit), dp_clip=self.clip,
                          local_epochs=unit.local_epochs)

    @abc.abstractmethod
    def lease(self, worker_id: str, site: str, now: float) -> Unit | None:
        """A unit of the worker's site, leased to it; None when there is nothing to do now."""

    @abc.abstractmethod
    def step_of(self, unit: Unit) -> int:
        """Which batch of its clients a unit computes."""

    @abc.abstractmethod
    def admit(self, meta: UpdateMeta) -> Unit:
        """The unit an update header is for; raises when it does not fit the moment
        (wrong round, too stale, not outstanding) or the unit (other clients, lease)."""

    def update_specs(self, meta: UpdateMeta) -> list[TensorSpec]:
        """The tensors an update must carry: one per trainable variable, stacked
        [clients, ...] for a rule over every client's own update."""
        return expected_specs(self._update_specs, len(meta.client_ids),
                              per_client=self.per_client)

    def check_header(self, meta: UpdateMeta, specs: Sequence[TensorSpec]) -> Unit:
        """Everything an update's header decides: the unit it is for, its weight, its
        tensors; raises on the first problem."""
        unit = self.admit(meta)
        check_weight(meta, per_client=self.per_client)
        check_specs(specs, self.update_specs(meta))
        return unit

    def contribution(self, meta: UpdateMeta, arrays: Sequence[np.ndarray]) -> Contribution:
        """An admitted update's content as the aggregation takes it; raises on a NaN or a
        claim its stages refuse."""
        check_finite(self._update_specs, arrays)
        self.check_update(meta, arrays)
        return Contribution.of(meta, [np.asarray(a) for a in arrays],
                               unclipped=meta.unclipped_clients)

    def check_update(self, meta: UpdateMeta, arrays: Sequence) -> None:  # noqa: B027
        """Checks of an admitted update's content that the policy's stages need."""

    def deliver(self, message: PartyMessage, now: float) -> None:
        """A secure-aggregation party's message: only a secure round workflow takes one."""
        raise FailedPrecondition("this federation does not aggregate securely: push "
                                 "updates in the clear")

    @property
    def site_evaluations(self) -> bool:
        """Whether sites may be asked to evaluate on their own data and the results be
        published (client-level DP withholds them unless the user releases them)."""
        return True

    @abc.abstractmethod
    def receive(self, unit: Unit, contribution: Contribution) -> bool:
        """Store an admitted unit's update; True when a server step is due."""

    @property
    def clip(self) -> float:
        """Client-level DP: the clip of the open round (0: off)."""
        return self.config.dp_clip

    def due(self, now: float, opened_at: float) -> bool:
        """A server step is due without a new update (a deadline passed)."""
        return False

    def aggregate(self, contributions: Sequence[Contribution], context: RoundContext) -> Output:
        """A step of the policy's aggregation stage (`self.aggregation`, set by a policy that
        aggregates through one); the stage's state moves on."""
        out = self.aggregation.next(self.aggregation_state, contributions, context)
        self.aggregation_state = out.state
        return out

    @abc.abstractmethod
    def step(self) -> Step:
        """Apply what is due to the model (a new version) and forget it."""

    @abc.abstractmethod
    def release(self, worker_id: str) -> None:
        """The worker left: its leases go back to the pool."""

    @abc.abstractmethod
    def close(self) -> None:
        """Training is over: nothing more is handed out."""

    @abc.abstractmethod
    def state(self) -> dict:
        """What the policy keeps in a checkpoint beyond the model: JSON-able."""

    @abc.abstractmethod
    def restore(self, state: dict) -> None:
        """The counterpart of `state`."""
