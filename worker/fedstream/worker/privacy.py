"""Client-level differential privacy on the worker: every client's update is clipped to the
task's L2 norm before the unit's updates are summed, so no client moves the sum by more than
the clip, whatever its data. The computer is asked for per-client updates (vectorised where
it can) and the clipped sum is what is pushed: the bytes stay one model per unit."""

from __future__ import annotations

import numpy as np

from fedstream.worker.update_computer import UnitUpdate


def clip_factors(stacked: list[np.ndarray], clip: float) -> np.ndarray:
    """min(1, clip / ||u_c||) for every client c, the norm taken over all its tensors."""
    clients = stacked[0].shape[0]
    squares = sum(np.square(a.reshape(clients, -1).astype(np.float64)).sum(axis=1)
                  for a in stacked)
    norms = np.sqrt(squares)
    return np.minimum(1.0, clip / np.maximum(norms, 1e-30))


def clip_and_sum(update: UnitUpdate, clip: float) -> tuple[UnitUpdate, int]:
    """A per-client (stacked) update as the sum of its clients' clipped updates, weight 1
    each, and how many clients were within the clip (adaptive clipping counts them)."""
    factors = clip_factors(update.arrays, clip)
    summed = [np.tensordot(factors.astype(np.float32), a, axes=1).astype(np.float32)
              for a in update.arrays]
    return (UnitUpdate(summed, float(len(factors)), update.num_examples, update.loss),
            int(np.sum(factors >= 1.0)))
