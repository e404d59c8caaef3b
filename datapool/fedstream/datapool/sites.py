"""Data sites made from one data set, for experiments: the training and held-out examples
split over N sites by a partitioner (iid, shards or dirichlet label skew, the reference
split) or by a group column the data carries (a writer, a hospital), one `.npz` per site
that a site's data pool loads with `--data-format arrays`.

`simulate --sites N` and `run --sites N` split the same way, so the two see the same sites.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from fedstream.common.options import coerce_choices, option
from fedstream.datapool.arrays import LabelledData
from fedstream.datapool.partition import Partitioner, partition


@dataclass(frozen=True)
class SiteSplitConfig:
    sites: int = option(0, "data sites, each with its own data pool and workers (0: one pool "
                           "for every client); clients counts per site")
    site_partitioner: Partitioner = option(Partitioner.IID, "how examples go to sites: iid, "
                                           "shards, dirichlet or reference")
    site_seed: int = option(1, "seeds the split into sites")
    site_alpha: float = option(0.5, "dirichlet site split: label concentration")

    def __post_init__(self):
        problems = coerce_choices(self)
        if self.sites < 0:
            problems.append(f"sites={self.sites} must be >= 0")
        if self.site_partitioner is Partitioner.NATURAL:
            problems.append("sites by a group the data carries: `fedstream split --by GROUP`")
        if problems:
            raise ValueError("invalid site split: " + "; ".join(problems))

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f"site-{i}" for i in range(self.sites))


def split_sites(data: LabelledData, config: SiteSplitConfig) -> list[LabelledData]:
    """One data set per site: its share of the training and of the held-out examples, both
    split by the same partitioner (so a site's test data resembles its training data)."""
    def split(labels):
        return partition(config.site_partitioner.value, labels, config.sites, config.site_seed,
                         alpha=config.site_alpha, min_size=1)
    train, test = split(data.y_train), split(data.y_test)
    return [LabelledData(name, data.x_train[np.sort(a)], data.y_train[np.sort(a)],
                         data.x_test[np.sort(b)], data.y_test[np.sort(b)], data.num_classes)
            for name, a, b in zip(config.names, train, test)]


def split_by_group(data: LabelledData, groups: np.ndarray,
                   groups_test: np.ndarray) -> list[LabelledData]:
    """One site per distinct group value (sorted), e.g. a writer or a hospital id."""
    out = []
    for g in np.unique(groups):
        a, b = groups == g, groups_test == g
        out.append(LabelledData(f"site-{g}", data.x_train[a], data.y_train[a], data.x_test[b],
                                data.y_test[b], data.num_classes))
    return out


def write_sites(sites: list[LabelledData], out: str) -> list[str]:
    """Each site's `.npz` (x_train, y_train, x_test, y_test) in `out`; their paths."""
    os.makedirs(out, exist_ok=True)
    paths = []
    for site in sites:
        path = os.path.join(out, f"{site.name}.npz")
        np.savez(path, x_train=site.x_train, y_train=site.y_train, x_test=site.x_test,
                 y_test=site.y_test)
        paths.append(path)
    return paths
