"""Client-level privacy accounting with Google's dp-accounting (`pip install
"fedstream[dp]"`): a ledger of every round released, and its epsilon at --dp-delta.

Each round is one Gaussian mechanism on the sum of the sampled clients' updates clipped to
C, with noise of standard deviation z * C. The ledger records what each round actually
used (sampling, population, z), so a run resumed with other settings composes what it
spent before with what it spends now: epsilon comes from the ledger, never from today's
flags. The neighbouring relation follows the sampling:
- every client every round, or Poisson sampling with rate q: add-or-remove-one; one client
  moves the sum by at most C, so the Gaussian's multiplier is z;
- fixed-size sampling (k of N without replacement): replace-one, since N and k are public;
  replacing one client moves the sum by up to 2C, so the Gaussian's multiplier is z / 2
  (`SampledWithoutReplacementDpEvent`, RDP only: dp-accounting's PLD accountant does not
  cover it).
A ledger cannot mix the two relations: resuming a Poisson run with fixed-size sampling, or
the reverse, is refused.

Under secure aggregation the parties add the noise on the ring's integers: Skellam noise
(`secagg.skellam_noise`) of variance mu = (z C 2^bits)^2 from the honest survivors, on the
sum of inputs rounded to the fixed point. One client moves its party's rounded input by at
most D2 = k C 2^bits + sqrt(d) in L2 (k = 1, or 2 under replace-one; rounding adds at most
1 a coordinate) and D1 = sqrt(d) D2 in L1. Agarwal et al. (NeurIPS 2021, Theorem 3.5) bound
the Skellam mechanism's Renyi divergence of order a by
    a D2^2 / (2 mu) + min(((2a - 1) D2^2 + 6 D1) / (4 mu^2), 3 D1 / (2 mu)),
so each of the min's two sides, linear in a, is a zCDP guarantee (rho, xi); the round is
accounted as dp-accounting's `ZCDpEvent` of the side that gives the smaller epsilon, with no
amplification by sampling (conservative), and holds exactly, rounding included.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass
from typing import Sequence

from fedstream.coordinator.config import Accountant, FederationConfig, Sampling, SamplingConfig
from fedstream.coordinator.units import fixed_sample_size

ALL, POISSON, FIXED = "all", "poisson", "fixed"
GAUSSIAN, SKELLAM = "gaussian", "skellam"


def _dp_accounting():
    try:
        import dp_accounting
    except ImportError as e:
        raise RuntimeError("client-level DP accounting needs dp-accounting: "
                           "pip install \"fedstream[dp]\"") from e
    return dp_accounting


@dataclass(frozen=True)
class RoundRelease:
    """One round as the accountant sees it: how the clients were sampled out of
    `population`, and the noise multiplier z (noise standard deviation / clip)."""
    sampling: str  # ALL, POISSON or FIXED
    noise_multiplier: float
    population: int
    rate: float = 1.0  # POISSON: q
    sampled: int = 0  # FIXED: k
    seeded: bool = False  # its randomness came from a research seed: not private
    mechanism: str = GAUSSIAN  # or SKELLAM: the parties' noise on the ring
    clip_steps: float = 0.0  # SKELLAM: the clip in fixed-point steps, C * 2^bits
    dims: int = 0  # SKELLAM: values in one party's input

    @classmethod
    def of(cls, config: SamplingConfig, population: int, noise_multiplier: float,
           seeded: bool, ring: tuple[float, int] | None = None) -> "RoundRelease":
        """`ring`: (clip in fixed-point steps, values) when the parties add Skellam noise."""
        skellam = {} if ring is None else {"mechanism": SKELLAM, "clip_steps": ring[0],
                                           "dims": ring[1]}
        if config.client_fraction >= 1:
            return cls(ALL, noise_multiplier, population, seeded=seeded, **skellam)
        if config.sampling is Sampling.POISSON:
            return cls(POISSON, noise_multiplier, population, rate=config.client_fraction,
                       seeded=seeded, **skellam)
        return cls(FIXED, noise_multiplier, population,
                   sampled=fixed_sample_size(config, population), seeded=seeded, **skellam)

    def dp_event(self, replace_one: bool):
        dp = _dp_accounting()
        z = self.noise_multiplier
        if self.mechanism == SKELLAM:
            return skellam_event(z, self.clip_steps, self.dims, replace_one)
        if self.sampling == POISSON:
            return dp.PoissonSampledDpEvent(self.rate, dp.GaussianDpEvent(z))
        if self.sampling == FIXED:
            return dp.SampledWithoutReplacementDpEvent(self.population, self.sampled,
                                                       dp.GaussianDpEvent(z / 2))
        return dp.GaussianDpEvent(z / 2 if replace_one else z)


def skellam_sides(mu: float, l1: float, l2: float) -> list[tuple[float, float]]:
    """Agarwal et al.'s bound on the Skellam mechanism (noise of variance `mu` per value,
    sensitivities `l1`, `l2`) as its two (rho, xi) sides, each bounding the Renyi divergence
    of every order a by rho * a + xi: a l2^2/(2mu) + ((2a-1) l2^2 + 6 l1)/(4mu^2) (xi
    rounded up to 0 where negative), and a l2^2/(2mu) + 3 l1/(2mu)."""
    return [(l2 ** 2 / (2 * mu) + l2 ** 2 / (2 * mu ** 2),
             max(0.0, (6 * l1 - l2 ** 2) / (4 * mu ** 2))),
            (l2 ** 2 / (2 * mu), 3 * l1 / (2 * mu))]


def skellam_rdp(order: float, mu: float, l1: float, l2: float) -> float:
    """The bound the ledger uses, at one order: the smaller side."""
    return min(rho * order + xi for rho, xi in skellam_sides(mu, l1, l2))


def skellam_event(noise_multiplier: float, clip_steps: float, dims: int, replace_one: bool):
    """One round of the parties' Skellam noise as a zCDP event (see the module's text)."""
    dp = _dp_accounting()
    l2 = (2 if replace_one else 1) * clip_steps + math.sqrt(dims)
    l1 = math.sqrt(dims) * l2
    mu = (noise_multiplier * clip_steps) ** 2
    rho, xi = min(skellam_sides(mu, l1, l2), key=lambda s: s[1] + 8 * s[0])  # both valid
    return dp.ZCDpEvent(rho, xi)


def epsilon(releases: Sequence[RoundRelease], delta: float,
            accountant: Accountant = Accountant.RDP) -> float:
    """Epsilon at `delta` of every release composed (inf if any had no noise)."""
    if not releases:
        return 0.0
    if any(r.noise_multiplier == 0 for r in releases):
        return float("inf")
    return _epsilon(tuple(releases), delta, accountant)


@functools.lru_cache(maxsize=64)
def _epsilon(releases: tuple[RoundRelease, ...], delta: float, accountant: Accountant) -> float:
    dp = _dp_accounting()
    kinds = {r.sampling for r in releases}
    if {POISSON, FIXED} <= kinds:
        raise ValueError("the ledger mixes Poisson and fixed-size sampling, whose neighbouring "
                         "relations differ: resume with the sampling the run began with")
    replace_one = FIXED in kinds
    if accountant is Accountant.PLD:
        if any(r.mechanism == SKELLAM for r in releases):
            raise ValueError("the parties' Skellam noise is accounted by RDP: use "
                             "--dp-accountant rdp with secure aggregation")
        if replace_one:
            raise ValueError("the PLD accountant does not cover fixed-size sampling without "
                             "replacement: use --sampling poisson or --dp-accountant rdp")
        acc = dp.pld.PLDAccountant()
    else:
        acc = dp.rdp.RdpAccountant(neighboring_relation=(
            dp.NeighboringRelation.REPLACE_ONE if replace_one
            else dp.NeighboringRelation.ADD_OR_REMOVE_ONE))
    run, count = None, 0
    for r in releases + (None,):  # equal consecutive rounds compose as one event
        same = r is not None and run is not None and dataclasses.replace(r, seeded=False) \
            == dataclasses.replace(run, seeded=False)
        if same:
            count += 1
            continue
        if run is not None:
            acc.compose(run.dp_event(replace_one), count)
        run, count = r, 1
    return float(acc.get_epsilon(delta))


@dataclass(frozen=True)
class PrivacyLedger:
    """Every round's release, in order; part of the checkpoint. Immutable: a stage's state."""
    delta: float
    accountant: Accountant
    releases: tuple[RoundRelease, ...] = ()

    def recorded(self, release: RoundRelease) -> PrivacyLedger:
        """This ledger with one more round released."""
        epsilon([*self.releases, release], self.delta, self.accountant)  # refuses a mix
        return dataclasses.replace(self, releases=(*self.releases, release))

    def spent(self) -> float:
        return epsilon(list(self.releases), self.delta, self.accountant)

    def spent_after(self, release: RoundRelease) -> float:
        """What one more such round would bring the total to."""
        return epsilon([*self.releases, release], self.delta, self.accountant)

    @property
    def seeded(self) -> bool:
        """Some round drew its noise or sample from a research seed: no guarantee."""
        return any(r.seeded for r in self.releases)

    def state(self) -> list[dict]:
        return [dataclasses.asdict(r) for r in self.releases]

    def restored(self, state: Sequence[dict]) -> PrivacyLedger:
        return dataclasses.replace(self, releases=tuple(RoundRelease(**r) for r in state))


def noise_for(target_epsilon: float, config: FederationConfig, population: int,
              rounds: int) -> float:
    """The smallest noise multiplier (to 0.1%) whose `rounds` rounds stay within
    `target_epsilon`, by bisection on the accountant's epsilon."""
    def spent(multiplier: float) -> float:
        release = RoundRelease.of(config, population, multiplier, seeded=False)
        return epsilon([release] * rounds, config.dp_delta, config.dp_accountant)

    lo, hi = 0.0, 1.0
    while spent(hi) > target_epsilon:
        lo, hi = hi, hi * 2
        if hi > 1e4:
            raise ValueError(f"no noise multiplier up to 1e4 keeps epsilon below "
                             f"{target_epsilon}")
    while hi - lo > 1e-3 * hi:
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if spent(mid) <= target_epsilon else (mid, hi)
    return hi
