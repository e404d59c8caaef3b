"""Partitioners: which examples each client holds. Deterministic from (seed, n_clients)."""

from __future__ import annotations

import numpy as np

PARTITIONERS = ("reference", "iid")


def reference_partition(n_examples: int, n_clients: int, seed: int) -> list[np.ndarray]:
    """The reference program's split: a legacy-seeded shuffle, then contiguous equal shards.

    `np.random.seed(seed); np.random.shuffle(x)` applies the same swaps as shuffling
    `arange(n)`, so the permutation below reproduces it exactly; client c holds examples
    [c*n//N, (c+1)*n//N) of the shuffled order (the remainder of n/N goes unused).
    """
    _check(n_examples, n_clients)
    permutation = np.random.RandomState(seed).permutation(n_examples)
    size = n_examples // n_clients
    return [permutation[c * n_examples // n_clients:][:size] for c in range(n_clients)]


def iid_partition(n_examples: int, n_clients: int, seed: int) -> list[np.ndarray]:
    """A uniformly random split into N shards whose sizes differ by at most one."""
    _check(n_examples, n_clients)
    permutation = np.random.default_rng(seed).permutation(n_examples)
    return np.array_split(permutation, n_clients)


def partition(name: str, n_examples: int, n_clients: int, seed: int) -> list[np.ndarray]:
    if name == "reference":
        return reference_partition(n_examples, n_clients, seed)
    if name == "iid":
        return iid_partition(n_examples, n_clients, seed)
    raise ValueError(f"unknown partitioner {name!r}; choose one of {', '.join(PARTITIONERS)}")


def _check(n_examples: int, n_clients: int) -> None:
    if not 1 <= n_clients <= n_examples:
        raise ValueError(f"cannot split {n_examples} examples over {n_clients} clients: "
                         "need 1 <= clients <= examples")
