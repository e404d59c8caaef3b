"""A worker's updates in the task's encoding: the payload it sends, the arrays the coordinator
will decode from it (the same arrays in both run modes, so `simulate` stays exact), and
top-k's error feedback.

Error feedback keeps, per unit of clients, what top-k left out and adds it to that unit's
next update, so every coordinate is sent eventually. The residual lives with the worker that
computed the unit: it is used while the worker's units repeat their clients (the sticky units
of FedSGD and full participation), kept for one round after a unit was last seen, and lost
when a unit moves to another worker or its clients are sampled anew. Per-client residuals
would need per-client updates; units push sums. Which encodings take it is the codec's
(`Codec.error_feedback`): top-k.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from fedstream.common.codecs import CODECS, F32, Encoded, Encoding, transmit
from fedstream.common.protocol import Task


class UpdateEncoder:
    def __init__(self, task: Task):
        self.encoding = task.update_encoding
        self.fraction = task.topk_fraction
        self._feedback = (self.encoding is not Encoding.RAW
                          and CODECS[self.encoding].error_feedback)
        self._residuals: dict[tuple[int, ...], tuple[int, list[np.ndarray]]] = {}

    def encode(self, arrays: Sequence[np.ndarray], client_ids: tuple[int, ...],
               round_number: int) -> tuple[list[np.ndarray], Encoded | None]:
        """(what the coordinator decodes, the encoded payload; None when sent raw)."""
        if self.encoding is Encoding.RAW:
            return list(arrays), None
        arrays = [np.asarray(a, F32) for a in arrays]
        if self._feedback:
            self._residuals = {k: v for k, v in self._residuals.items()
                               if v[0] >= round_number - 1}
            if client_ids in self._residuals:
                arrays = [a + r for a, r in zip(arrays, self._residuals[client_ids][1])]
        # int8's stochastic rounding: seeded by the unit, so both run modes draw alike
        rng = np.random.default_rng([round_number, len(client_ids), *client_ids[:1]])
        encoded, decoded = transmit(self.encoding, arrays, rng=rng, topk_fraction=self.fraction)
        if self._feedback:
            self._residuals[client_ids] = (round_number,
                                           [a - d for a, d in zip(arrays, decoded)])
        return decoded, encoded
