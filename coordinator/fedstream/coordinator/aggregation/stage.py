"""The shape every aggregation stage has, after TensorFlow Federated's aggregation processes
(`initialize`/`next` returning state, result and measurements) and optax's transformations
(`init`/`update` with explicit state): a stage holds no mutable state of its own. The round
policy keeps each stage's state, passes it in, keeps what comes back, and checkpoints it
through `save`/`load`, the one path a stage's state takes into a checkpoint."""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from fedstream.coordinator.units import Contribution


@dataclass(frozen=True)
class RoundContext:
    """What a stage may know of the step besides the contributions: the version they
    step from, and under secure aggregation the ring the parties' noise was added on (the
    clip in fixed-point steps, the values per input)."""
    version: int
    ring: tuple[float, int] | None = None


@dataclass(frozen=True)
class Output:
    result: list[np.ndarray]  # the step the server optimizer applies
    state: Any  # the stage's next state
    measurements: dict = field(default_factory=dict)  # published with the round's row
    stop: bool = False  # training must end after this step (a privacy budget spent)


class Stage(abc.ABC):
    def init(self) -> Any:
        """The state before the first step (None: the stage keeps none)."""
        return None

    @abc.abstractmethod
    def next(self, state: Any, contributions: Sequence[Contribution],
             context: RoundContext) -> Output:
        """One server step's aggregate from the contributions, in the canonical order they
        arrive in (unit order for rounds): the result depends on nothing else."""

    def save(self, state: Any) -> dict:
        """`state` as JSON for a checkpoint."""
        return {}

    def load(self, saved: dict) -> Any:
        """The counterpart of `save`; a checkpoint without this stage's keys gives `init`."""
        return self.init()
