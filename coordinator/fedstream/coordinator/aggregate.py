"""Aggregation arithmetic on plain arrays.

An update is a list of arrays (one per trainable variable). The weighted mean works on
per-unit sums and is what FedSGD/FedAvg use; the robust aggregators (coordinate-wise median,
trimmed mean, Krum / Multi-Krum) need every client's own update and weigh clients equally.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from fedstream.common.tensors import stack_updates

Update = Sequence[np.ndarray]


def weighted_mean_of_sums(partials: Sequence[tuple[Update, float]]) -> list[np.ndarray]:
    """Each partial is (sum over its clients of weight * update, sum of those weights); the
    result is the weighted mean over all clients. Summed in the given order, so callers fix
    the order to get bit-identical results however the partials arrived."""
    if not partials:
        raise ValueError("nothing to aggregate")
    total_weight = sum(w for _, w in partials)
    if total_weight <= 0:
        raise ValueError(f"total weight {total_weight} must be positive")
    return [s / np.float32(total_weight) for s in sum_in_order([a for a, _ in partials])]


def sum_in_order(updates: Sequence[Update]) -> list[np.ndarray]:
    """The float32 sum of updates, added in the given order."""
    sums = [np.array(a, dtype=np.float32, copy=True) for a in updates[0]]
    for arrays in updates[1:]:
        for acc, a in zip(sums, arrays):
            acc += a
    return sums


def coordinate_median(updates: Sequence[Update]) -> list[np.ndarray]:
    """Every coordinate's median over the clients."""
    return [np.median(s, axis=0).astype(np.float32) for s in stack_updates(updates)]


def trimmed_mean(updates: Sequence[Update], fraction: float) -> list[np.ndarray]:
    """Every coordinate's mean after dropping its `fraction` largest and smallest values."""
    n = len(updates)
    k = int(fraction * n)
    if not 0 <= fraction < 0.5 or n - 2 * k < 1:
        raise ValueError(f"cannot trim {fraction:.0%} from each end of {n} updates")
    return [np.sort(s, axis=0)[k:n - k].mean(axis=0).astype(np.float32)
            for s in stack_updates(updates)]


def krum_select(updates: Sequence[Update], byzantine: int, select: int = 1) -> list[int]:
    """Indices of the `select` updates with the lowest Krum scores: the sum of squared
    distances to their n - f - 2 nearest neighbours (Blanchard et al., 2017)."""
    n = len(updates)
    if n < 2 * byzantine + 3:
        raise ValueError(f"Krum with f={byzantine} needs at least {2 * byzantine + 3} updates, "
                         f"got {n}")
    if not 1 <= select <= n:
        raise ValueError(f"cannot select {select} of {n} updates")
    flat = np.stack([np.concatenate([np.ravel(a) for a in u]).astype(np.float64)
                     for u in updates])
    squared = np.sum(flat ** 2, axis=1)
    distances = np.maximum(squared[:, None] + squared[None, :] - 2 * flat @ flat.T, 0.0)
    neighbours = n - byzantine - 2
    scores = [np.sort(np.delete(distances[i], i))[:neighbours].sum() for i in range(n)]
    return [int(i) for i in np.argsort(scores, kind="stable")[:select]]


def krum(updates: Sequence[Update], byzantine: int, select: int = 1) -> list[np.ndarray]:
    """Krum (select=1) or Multi-Krum: the mean of the selected updates."""
    chosen = krum_select(updates, byzantine, select)
    return [np.mean(s[chosen], axis=0).astype(np.float32) for s in stack_updates(updates)]
