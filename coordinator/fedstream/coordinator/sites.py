"""Which site owns which client: the federation's client table, filled by what each site
publishes when its first worker joins. The coordinator never sees a site's examples.

A site's clients are numbered 0..n-1 at the site; federation-wide, site k's client i is
`k * SITE_STRIDE + i`, so ids are unique across sites and do not depend on the order in
which sites join. The sites the first round waits for are declared (their order fixes k);
a site that was not declared may join later and takes part from the next round. A
coordinator that reads one data pool has one site, named "", whose ids are the pool's.
"""

from __future__ import annotations

import bisect
import logging
import re
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from fedstream.common.errors import AlreadyExists, FailedPrecondition, InvalidArgument, PermissionDenied
from fedstream.common.protocol import SiteData

log = logging.getLogger(__name__)

POOL_SITE = ""  # the coordinator's own data pool, served by workers that name no site
SITE_STRIDE = 1 << 20  # clients a site may have; ids are uint32, so 4,096 sites
SITE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")  # safe in metrics, labels, logs


@dataclass(frozen=True)
class DataSpec:
    """What every site's data must be to fit the task: one example's shape, its dtype (fixed
    by the first site, when the task does not fix it) and the number of classes."""
    example_shape: tuple[int, ...]
    num_classes: int
    example_dtype: np.dtype | None = None


@dataclass(frozen=True)
class Site:
    name: str
    index: int
    data: SiteData

    @property
    def base(self) -> int:
        return self.index * SITE_STRIDE

    @property
    def client_ids(self) -> np.ndarray:
        return self.base + np.arange(len(self.data.client_sizes))


class Sites:
    def __init__(self, declared: Sequence[str], spec: DataSpec):
        if len(set(declared)) != len(declared):
            raise ValueError(f"site names must be unique, got {list(declared)}")
        bad = [name for name in declared if not SITE_NAME.fullmatch(name)]
        if bad:
            raise ValueError(f"site names {bad} are not letters, digits, '.', '_' or '-' "
                             "(at most 64, starting with a letter or digit)")
        self.declared = tuple(declared)
        self.spec = spec
        self._sites: dict[str, Site] = {}
        self._table: tuple[np.ndarray, np.ndarray] | None = None  # (ids, sizes), cached

    @classmethod
    def single_pool(cls, data: SiteData) -> Sites:
        """One data pool that the coordinator reads: every worker serves it."""
        sites = cls((), DataSpec(data.example_shape, data.num_classes, data.example_dtype))
        sites._sites[POOL_SITE] = Site(POOL_SITE, 0, data)
        return sites

    @property
    def federated(self) -> bool:
        """Sites publish their own clients (no data pool the coordinator reads)."""
        return POOL_SITE not in self._sites

    def __iter__(self):
        return iter(sorted(self._sites.values(), key=lambda s: s.index))

    def __len__(self) -> int:
        return len(self._sites)

    def ready(self) -> bool:
        """Every declared site has published its clients."""
        return all(name in self._sites for name in self.declared)

    def missing(self) -> list[str]:
        return [name for name in self.declared if name not in self._sites]

    def register(self, name: str, data: SiteData | None) -> Site:
        """A worker of site `name` joined with what its site publishes: the site, registered
        on its first worker; the same data again on later ones."""
        if not self.federated:
            if name != POOL_SITE:
                raise FailedPrecondition(
                    f"this coordinator reads one data pool and has no sites: start the worker "
                    f"without --site {name!r}, or the coordinator with --sites")
            return self._sites[POOL_SITE]
        if name == POOL_SITE:
            raise FailedPrecondition(
                "this coordinator federates data sites and reads no data pool: start the worker "
                f"with --site NAME (declared: {', '.join(self.declared) or 'none'})")
        if not SITE_NAME.fullmatch(name):
            raise InvalidArgument(f"site name {name[:80]!r} is not 1 to 64 letters, digits, "
                                  "'.', '_' or '-' starting with a letter or digit: rename it")
        if data is None:
            raise InvalidArgument(f"a worker of site {name!r} must publish its site's data "
                                  "(client sizes, example spec, classes) when it joins")
        self._check(name, data)
        site = self._sites.get(name)
        if site is not None:
            if site.data != data:
                raise AlreadyExists(
                    f"site {name!r} joined with {len(site.data.client_sizes)} clients of other "
                    f"sizes or data than this worker publishes ({len(data.client_sizes)} "
                    "clients): point the worker at its own site's data pool, or give the site "
                    "a name of its own")
            return site
        index = (self.declared.index(name) if name in self.declared else
                 max([len(self.declared) - 1, *(s.index for s in self._sites.values())]) + 1)
        if (index + 1) * SITE_STRIDE > 2 ** 32:
            raise FailedPrecondition(f"a federation holds at most {2 ** 32 // SITE_STRIDE} sites")
        site = Site(name, index, data)
        self._sites[name] = site
        self._table = None
        if self.spec.example_dtype is None:
            self.spec = DataSpec(self.spec.example_shape, self.spec.num_classes, data.example_dtype)
        log.info("site %r joined: %d clients (ids %d..%d), %d held-out examples%s", name,
                 len(data.client_sizes), site.base, site.base + len(data.client_sizes) - 1,
                 data.num_test, "" if name in self.declared else " (not declared: it takes "
                 "part from the next round)")
        return site

    def _check(self, name: str, data: SiteData) -> None:
        spec = self.spec
        problems = []
        if not data.client_sizes:
            problems.append("it has no clients")
        elif min(data.client_sizes) < 1:
            problems.append("a client has no examples")
        if len(data.client_sizes) > SITE_STRIDE:
            problems.append(f"{len(data.client_sizes)} clients, more than the {SITE_STRIDE} a "
                            "site may have")
        if tuple(data.example_shape) != tuple(spec.example_shape):
            problems.append(f"examples of shape {list(data.example_shape)}, the model takes "
                            f"{list(spec.example_shape)}")
        if spec.example_dtype is not None and np.dtype(data.example_dtype) != spec.example_dtype:
            problems.append(f"examples of dtype {np.dtype(data.example_dtype).name}, the other "
                            f"sites' are {np.dtype(spec.example_dtype).name}")
        if data.num_classes != spec.num_classes:
            problems.append(f"{data.num_classes} classes, the task has {spec.num_classes}")
        if data.label_histograms and len(data.label_histograms) != len(data.client_sizes):
            problems.append("label histograms for another number of clients")
        if problems:
            raise InvalidArgument(f"site {name!r} does not fit the task: " + "; ".join(problems)
                                  + ". Give the site data of the task's shape, dtype and classes")

    def get(self, name: str) -> Site:
        return self._sites[name]

    def table(self) -> tuple[np.ndarray, np.ndarray]:
        """Every registered client's federation-wide id and size, in site order."""
        if self._table is None:
            sites = list(self)
            self._table = (np.concatenate([s.client_ids for s in sites]),
                           np.concatenate([np.asarray(s.data.client_sizes, np.int64)
                                           for s in sites]))
        return self._table

    def check_owned(self, site_name: str, client_ids: Sequence[int]) -> None:
        """A worker of `site_name` may compute only its own site's clients."""
        site = self._sites.get(site_name)
        foreign = [c for c in client_ids if site is None or not
                   0 <= c - site.base < len(site.data.client_sizes)]
        if foreign:
            raise PermissionDenied(f"clients {foreign[:5]} are not of site {site_name!r}: a "
                                   "worker computes only its own site's clients")

    def by_site(self, client_ids: np.ndarray) -> list[tuple[Site, np.ndarray]]:
        """Sorted federation-wide ids split by site, in site order."""
        out = []
        for site in self:
            lo = bisect.bisect_left(client_ids, site.base)
            hi = bisect.bisect_left(client_ids, site.base + len(site.data.client_sizes))
            if hi > lo:
                out.append((site, client_ids[lo:hi]))
        return out
