"""Aggregation arithmetic on plain arrays."""

from __future__ import annotations

from typing import Sequence

import numpy as np


def weighted_mean_of_sums(partials: Sequence[tuple[Sequence[np.ndarray], float]]) -> list[np.ndarray]:
    """Each partial is (sum over its clients of weight * update, sum of those weights); the
    result is the weighted mean over all clients. Summed in the given order, so callers fix
    the order to get bit-identical results however the partials arrived."""
    if not partials:
        raise ValueError("nothing to aggregate")
    total_weight = sum(w for _, w in partials)
    if total_weight <= 0:
        raise ValueError(f"total weight {total_weight} must be positive")
    sums = [np.array(a, dtype=np.float32, copy=True) for a in partials[0][0]]
    for arrays, _ in partials[1:]:
        for acc, a in zip(sums, arrays):
            acc += a
    return [s / np.float32(total_weight) for s in sums]
