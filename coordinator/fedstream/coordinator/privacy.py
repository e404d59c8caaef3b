"""Client-level privacy accounting with Google's dp-accounting (`pip install
"fedstream[dp]"`): the epsilon, at --dp-delta, of every round released so far.

Each round is one Gaussian mechanism (noise multiplier sigma on the sum of updates clipped
to C) on a sample of the clients. The event matches the sampling the run used:
- every client every round (C = 1): the Gaussian mechanism itself;
- Poisson sampling: `PoissonSampledDpEvent(q)`, add-or-remove-one neighbours;
- fixed-size sampling without replacement: `SampledWithoutReplacementDpEvent(N, k)`,
  replace-one neighbours (RDP only: dp-accounting's PLD accountant does not support it).
Not covered: sites or clients joining mid-run (N is taken at each round), and what an
adversary learns from the number of clients in a round (Poisson) beyond the event.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import numpy as np

from fedstream.coordinator.config import Accountant, FederationConfig, Sampling
from fedstream.coordinator.units import fixed_sample_size


def _dp_accounting():
    try:
        import dp_accounting
    except ImportError as e:
        raise RuntimeError("client-level DP accounting needs dp-accounting: "
                           "pip install \"fedstream[dp]\"") from e
    return dp_accounting


def round_event(config: FederationConfig, n_clients: int):
    """One round's DP event under the run's sampling."""
    dp = _dp_accounting()
    gaussian = dp.GaussianDpEvent(config.dp_noise_multiplier)
    if config.client_fraction >= 1:
        return gaussian
    if config.sampling is Sampling.POISSON:
        return dp.PoissonSampledDpEvent(config.client_fraction, gaussian)
    return dp.SampledWithoutReplacementDpEvent(n_clients, fixed_sample_size(config, n_clients),
                                               gaussian)


def epsilon(config: FederationConfig, n_clients: int, rounds: int) -> float:
    """Epsilon at `config.dp_delta` after `rounds` rounds (inf without noise)."""
    if config.dp_noise_multiplier == 0:
        return float("inf")
    dp = _dp_accounting()
    event = round_event(config, n_clients)
    fixed_size = isinstance(event, dp.SampledWithoutReplacementDpEvent)
    if config.dp_accountant is Accountant.PLD:
        if fixed_size:
            raise ValueError("the PLD accountant does not cover fixed-size sampling without "
                             "replacement: use --sampling poisson or --dp-accountant rdp")
        accountant = dp.pld.PLDAccountant()
    else:
        accountant = dp.rdp.RdpAccountant(
            neighboring_relation=dp.NeighboringRelation.REPLACE_ONE if fixed_size
            else dp.NeighboringRelation.ADD_OR_REMOVE_ONE)
    accountant.compose(event, rounds)
    return float(accountant.get_epsilon(config.dp_delta))


class PrivacyLedger:
    """What the run has spent, and whether one more round fits --dp-target-epsilon."""

    def __init__(self, config: FederationConfig, n_clients: Callable[[], int]):
        self._config = config
        self._n_clients = n_clients
        self._epsilon = functools.lru_cache(maxsize=8)(
            lambda n, rounds: epsilon(config, n, rounds))

    def spent(self, rounds: int) -> float:
        return self._epsilon(self._n_clients(), rounds)

    def exhausted(self, rounds_done: int) -> bool:
        """One more round would take epsilon past the target."""
        target = self._config.dp_target_epsilon
        return target > 0 and self.spent(rounds_done + 1) > target


def noise_for(target_epsilon: float, config: FederationConfig, n_clients: int,
              rounds: int) -> float:
    """The smallest noise multiplier (to 0.1%) whose `rounds` rounds stay within
    `target_epsilon`, by bisection on the accountant's epsilon."""
    def spent(multiplier: float) -> float:
        return epsilon(dataclasses.replace(config, dp_noise_multiplier=multiplier), n_clients,
                       rounds)

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


class ClipSchedule:
    """The clip of each round and the noise on the updates' sum. Fixed: --dp-clip C and
    noise z * C. Adaptive (--dp-target-quantile gamma, Andrew et al., NeurIPS 2021): each
    round the workers count the clients whose update was within the clip; the coordinator
    adds Gaussian noise of standard deviation sigma_b to that count, and moves the clip
    geometrically toward the gamma quantile of the update norms:
    C <- C * exp(-eta * (noisy fraction - gamma)). The count is a second Gaussian mechanism
    (sensitivity 1/2 after centring), so the updates' noise multiplier is lowered to
    z_u = (z^-2 - (2 sigma_b)^-2)^-1/2 and the pair together is exactly as private as one
    mechanism of multiplier z, which is what the accountant counts."""

    def __init__(self, config: FederationConfig, expected_clients: Callable[[], float]):
        self._config = config
        self._expected = expected_clients
        self.value = config.dp_clip

    @property
    def adaptive(self) -> bool:
        return self._config.dp_target_quantile > 0

    def count_noise(self) -> float:
        return self._config.dp_quantile_noise or self._expected() / 20

    def update_multiplier(self) -> float:
        z = self._config.dp_noise_multiplier
        if not self.adaptive or z == 0:
            return z
        sigma_b = self.count_noise()
        if 2 * sigma_b <= z:
            raise ValueError(f"adaptive clipping needs 2 * dp_quantile_noise ({2 * sigma_b:g}) "
                             f"above the noise multiplier ({z:g}): raise --dp-quantile-noise")
        return (z ** -2 - (2 * sigma_b) ** -2) ** -0.5

    def noise_std(self) -> float:
        """The standard deviation of the noise on this round's sum of clipped updates."""
        return self.update_multiplier() * self.value

    def update(self, unclipped: int, rng) -> float:
        """After a round: the noisy fraction of clients within the clip; the clip moves."""
        fraction = (unclipped + rng.normal(0.0, self.count_noise())) / self._expected()
        self.value *= float(np.exp(-self._config.dp_clip_lr *
                                   (fraction - self._config.dp_target_quantile)))
        return fraction
