"""Partitioners: which examples each client holds. Deterministic from (seed, n_clients) and,
for the label-skewed ones, their parameters."""

from __future__ import annotations

import enum

import numpy as np


class Partitioner(str, enum.Enum):
    REFERENCE = "reference"
    IID = "iid"
    SHARDS = "shards"
    DIRICHLET = "dirichlet"
    NATURAL = "natural"  # one client per distinct id of a client column the data carries


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


def shards_partition(labels: np.ndarray, n_clients: int, seed: int) -> list[np.ndarray]:
    """The FedAvg paper's pathological non-IID split: sort by label, cut into 2N equal shards,
    give every client two shards at random (most clients see two digits)."""
    _check(len(labels), 2 * n_clients)
    by_label = np.argsort(labels, kind="stable")
    size = len(labels) // (2 * n_clients)
    shards = [by_label[i * size:(i + 1) * size] for i in range(2 * n_clients)]
    order = np.random.default_rng(seed).permutation(2 * n_clients)
    return [np.concatenate([shards[order[2 * c]], shards[order[2 * c + 1]]])
            for c in range(n_clients)]


def dirichlet_partition(labels: np.ndarray, n_clients: int, seed: int, *, alpha: float,
                        min_size: int, max_tries: int = 1000) -> list[np.ndarray]:
    """Label skew: each class is spread over the clients in proportions drawn from
    Dirichlet(alpha); redrawn until every client holds at least `min_size` examples."""
    _check(len(labels), n_clients)
    if alpha <= 0:
        raise ValueError(f"dirichlet alpha must be > 0, got {alpha}")
    if min_size * n_clients > len(labels):
        raise ValueError(f"{n_clients} clients of at least {min_size} examples need more than "
                         f"{len(labels)} examples")
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    for _ in range(max_tries):
        parts = [[] for _ in range(n_clients)]
        for k in classes:
            members = rng.permutation(np.flatnonzero(labels == k))
            cuts = (np.cumsum(rng.dirichlet(np.full(n_clients, alpha)))[:-1]
                    * len(members)).astype(int)
            for client, piece in enumerate(np.split(members, cuts)):
                parts[client].append(piece)
        clients = [np.sort(np.concatenate(p)) for p in parts]
        if min(len(c) for c in clients) >= min_size:
            return clients
    raise ValueError(f"no Dirichlet({alpha}) draw in {max_tries} gave every client "
                     f"{min_size} examples: raise alpha or lower --min-client-size")


def natural_partition(client_ids: np.ndarray) -> list[np.ndarray]:
    """One client per distinct id, in sorted id order: the partition the data carries (a
    writer, a patient, a device)."""
    return [np.flatnonzero(client_ids == c) for c in np.unique(client_ids)]


def partition(name: str, labels: np.ndarray, n_clients: int, seed: int, *,
              alpha: float = 0.5, min_size: int = 10,
              client_ids: np.ndarray | None = None) -> list[np.ndarray]:
    """`n_clients` index arrays (the natural partition: one per distinct client id)."""
    if name == "reference":
        return reference_partition(len(labels), n_clients, seed)
    if name == "iid":
        return iid_partition(len(labels), n_clients, seed)
    if name == "shards":
        return shards_partition(labels, n_clients, seed)
    if name == "dirichlet":
        return dirichlet_partition(labels, n_clients, seed, alpha=alpha, min_size=min_size)
    if name == "natural":
        if client_ids is None:
            raise ValueError("the natural partition needs --client-column: the data's own "
                             "client id of every example")
        return natural_partition(client_ids)
    raise ValueError(f"unknown partitioner {name!r}; choose one of "
                     f"{', '.join(p.value for p in Partitioner)}")


def label_histograms(labels: np.ndarray, shards: list[np.ndarray], num_classes: int) -> np.ndarray:
    """[clients, classes] example counts, in one pass over the examples (a loop over clients
    took seconds at 10^6 clients)."""
    sizes = np.array([len(s) for s in shards], dtype=np.int64)
    owner = np.repeat(np.arange(len(shards)), sizes)
    cells = owner * num_classes + labels[np.concatenate(shards)].astype(np.int64)
    return np.bincount(cells, minlength=len(shards) * num_classes).reshape(len(shards),
                                                                          num_classes)


def _check(n_examples: int, n_parts: int) -> None:
    if not 1 <= n_parts <= n_examples:
        raise ValueError(f"cannot split {n_examples} examples into {n_parts} parts: "
                         "need 1 <= parts <= examples")
