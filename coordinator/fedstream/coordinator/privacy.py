"""Client-level differential privacy as one aggregation stage (DP-FedAvg, McMahan et al.
2018; adaptive clipping, Andrew et al. 2021): everything the guarantee rests on lives here.
Its state (`PrivacyState`): the clip, which adaptive clipping moves, and the privacy ledger.

Per round, the stage
- draws the client sample's randomness (`sampling_generator`),
- checks what a worker pushes: a unit's sum of clipped updates is at most clients * clip
  long, and the count of clients within the clip it claims is at most its clients,
- adds Gaussian noise to the sum of clipped updates and divides by the expected number of
  clients per round (a constant, so the step hides whether one client took part); a round
  whose sample is empty releases noise alone, so the step does not reveal that either,
- moves an adaptive clip from a noised, centred count,
- records the round in the privacy ledger and measures epsilon,
- says which outputs leave the guarantee (`released`).
Its randomness comes from the OS's CSPRNG unless a research seed is set (`randomness`).

Workers clip every client's update before summing, so the coordinator cannot check one
client inside a unit: a worker that skips clipping weakens the guarantee of its own clients
only (it holds their data anyway). The per-unit norm bound catches a unit over its total.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from fedstream.common.errors import InvalidArgument
from fedstream.common.protocol import UpdateMeta
from fedstream.common.randomness import SEEDED, private_generator
from fedstream.coordinator import aggregate
from fedstream.coordinator.accounting import PrivacyLedger, RoundRelease
from fedstream.coordinator.aggregation.stage import Output, RoundContext, Stage
from fedstream.coordinator.config import PrivacyConfig, SamplingConfig
from fedstream.coordinator.units import Contribution

log = logging.getLogger(__name__)

# what a private round publishes: schedule, timing of the round as a whole, the
# coordinator's own counters and the DP measurements (noised or derived from noised values);
# everything else in a step's row is computed from the clients' data without noise
RELEASED = frozenset({
    "round", "version", "round_s", "rounds_per_s", "elapsed_s", "stragglers", "aggregate_s",
    "apply_s", "updates_accepted", "updates_duplicate", "updates_rejected", "leases_expired",
    "secagg_parties", "secagg_threshold", "secagg_abandoned", "secagg_dropped",
    "secagg_precision"})

_NOISE, _COUNT_NOISE = 0, 1  # streams of a research seed, with the version


@dataclass(frozen=True)
class PrivacyState:
    clip: float
    ledger: PrivacyLedger


class ClientLevelPrivacy(Stage):
    per_client = False

    def __init__(self, privacy: PrivacyConfig, sampling: SamplingConfig, *,
                 shapes: Sequence[tuple[int, ...]], expected_clients: Callable[[], float],
                 population: Callable[[], int], central_noise: bool = True):
        """`sampling`: how rounds sample clients, which the accountant's event follows.
        `central_noise` False: the parties add the noise themselves (distributed DP under
        secure aggregation), and the stage only divides, accounts and reports."""
        self._privacy = privacy
        self._sampling = sampling
        self._shapes = list(shapes)
        self._expected = expected_clients
        self._population = population
        self._central_noise = central_noise
        self._seed = privacy.privacy_research_seed

    def init(self) -> PrivacyState:
        return PrivacyState(self._privacy.dp_clip,
                            PrivacyLedger(self._privacy.dp_delta, self._privacy.dp_accountant))

    @property
    def adaptive(self) -> bool:
        return self._privacy.dp_target_quantile > 0

    @property
    def seeded(self) -> bool:
        return self._seed is not None

    def sampling_generator(self, round_number: int) -> np.random.Generator:
        """The client sample's randomness: amplification by sampling holds only against
        someone who cannot redraw it."""
        return private_generator(self._seed, round_number)

    # -- noise split -------------------------------------------------------------------
    def count_noise(self) -> float:
        """Standard deviation of the noise on the centred count of clients within the clip."""
        return self._privacy.dp_quantile_noise or self._expected() / 20

    def update_multiplier(self) -> float:
        """The updates' share z_u of the stated multiplier z. The centred count has
        sensitivity 1/2 (add-or-remove one client), so its mechanism's multiplier is
        2 sigma_b, and z_u = (z^-2 - (2 sigma_b)^-2)^-1/2 makes the pair exactly as private
        as one Gaussian mechanism of multiplier z, which is what the ledger records. Under
        replace-one (fixed-size sampling) both sensitivities double and the identity holds
        at z / 2."""
        z = self._privacy.dp_noise_multiplier
        if not self.adaptive or z == 0:
            return z
        sigma_b = self.count_noise()
        if 2 * sigma_b <= z:
            raise ValueError(f"adaptive clipping needs 2 * dp_quantile_noise ({2 * sigma_b:g}) "
                             f"above the noise multiplier ({z:g}): raise --dp-quantile-noise")
        return (z ** -2 - (2 * sigma_b) ** -2) ** -0.5

    def noise_std(self, clip: float) -> float:
        """Standard deviation of the noise on a round's sum of updates clipped to `clip`."""
        return self.update_multiplier() * clip

    # -- admission ---------------------------------------------------------------------
    def check(self, state: PrivacyState, meta: UpdateMeta,
              arrays: Sequence[np.ndarray]) -> None:
        """A unit's claims are bounded before they move anything."""
        clients = len(meta.client_ids)
        if not 0 <= meta.unclipped_clients <= clients:
            raise InvalidArgument(f"unclipped_clients={meta.unclipped_clients} for a unit of "
                                  f"{clients} clients: report how many of them were within "
                                  "the clip, between 0 and the unit's clients")
        norm = math.sqrt(sum(float(np.square(a, dtype=np.float64).sum()) for a in arrays))
        if norm > clients * state.clip * (1 + 1e-4):  # float32 rounding allowed
            raise InvalidArgument(
                f"update of L2 norm {norm:.6g} for {clients} clients clipped to {state.clip}: "
                f"at most {clients * state.clip:.6g}; clip every client's update "
                "(Task.dp_clip) before summing")

    # -- the stage ---------------------------------------------------------------------
    def next(self, state: PrivacyState, contributions: Sequence[Contribution],
             context: RoundContext) -> Output:
        """The round's released step and its measurements; the ledger grows by one round,
        and training stops when one more round would pass --dp-target-epsilon. Under secure
        aggregation `context.ring` says the parties added Skellam noise on the fixed point
        (clip in its steps, values), which the ledger accounts as such."""
        if contributions:
            total = aggregate.sum_in_order([c.arrays for c in contributions])
        else:
            total = [np.zeros(s, np.float32) for s in self._shapes]
        std = self.noise_std(state.clip) if self._central_noise else 0.0
        if std > 0:
            rng = private_generator(self._seed, context.version, _NOISE)
            for t in total:
                t += rng.normal(0.0, std, t.shape).astype(np.float32)
        step = [t / np.float32(self._expected()) for t in total]
        measurements = {"dp_clip": state.clip}
        clip = state.clip
        if self.adaptive:
            clip, measurements["dp_unclipped_fraction"] = self._moved_clip(
                state.clip, contributions, context.version)
        ledger = state.ledger.recorded(RoundRelease.of(
            self._sampling, self._population(), self._privacy.dp_noise_multiplier, self.seeded,
            context.ring))
        if self._privacy.dp_noise_multiplier > 0:
            measurements.update(self._epsilon(ledger))
        return Output(step, PrivacyState(clip, ledger), measurements,
                      stop=self._exhausted(ledger))

    def _moved_clip(self, clip: float, contributions: Sequence[Contribution],
                    version: int) -> tuple[float, float]:
        """Andrew et al.'s geometric update from the noised fraction of clients within the
        clip, centred: sum_i (b_i - 1/2) + noise, so one client moves it by at most 1/2.
        (the next clip, the fraction)"""
        within = sum(c.unclipped for c in contributions)
        clients = sum(c.clients for c in contributions)
        rng = private_generator(self._seed, version, _COUNT_NOISE)
        noised = within - clients / 2 + rng.normal(0.0, self.count_noise())
        fraction = noised / self._expected() + 0.5
        return clip * float(np.exp(-self._privacy.dp_clip_lr *
                                   (fraction - self._privacy.dp_target_quantile))), fraction

    def _epsilon(self, ledger: PrivacyLedger) -> dict:
        out = {"dp_epsilon": ledger.spent(), "dp_delta": ledger.delta}
        if ledger.seeded:
            out["dp_guarantee"] = SEEDED
        return out

    def _exhausted(self, ledger: PrivacyLedger) -> bool:
        """One more round would take epsilon past --dp-target-epsilon."""
        target = self._privacy.dp_target_epsilon
        if not target or not self._privacy.dp_noise_multiplier:
            return False
        last = ledger.releases[-1] if ledger.releases else None
        ring = None if last is None or not last.dims else (last.clip_steps, last.dims)
        after = ledger.spent_after(RoundRelease.of(  # one more round like the last
            self._sampling, self._population(), self._privacy.dp_noise_multiplier, self.seeded,
            ring))
        if after > target:
            log.warning("training ends: one more round would take epsilon past "
                        "--dp-target-epsilon %g (now %.4g)", target, ledger.spent())
            return True
        return False

    def released(self, row: dict) -> dict:
        """What of a step's row may be published: unless the user chose to release them,
        only the schedule, the coordinator's counters and the DP measurements."""
        if self._privacy.dp_release_metrics:
            return row
        return {k: v for k, v in row.items() if k in RELEASED or k.startswith("dp_")}

    # -- checkpoint --------------------------------------------------------------------
    def save(self, state: PrivacyState) -> dict:
        return {"dp_clip": state.clip, "dp_ledger": state.ledger.state()}

    def load(self, saved: dict) -> PrivacyState:
        fresh = self.init()
        return PrivacyState(float(saved.get("dp_clip", fresh.clip)),
                            fresh.ledger.restored(saved.get("dp_ledger", [])))


def check_resume(config: PrivacyConfig, state: dict) -> None:
    """A checkpoint written under client-level DP resumes only under DP (its ledger goes
    on), unless the user chose to go on without privacy."""
    if state.get("dp_ledger") and not config.private and not config.dp_resume_without_privacy:
        raise ValueError("the checkpoint was written under client-level DP: resume with "
                         "--dp-clip and --dp-noise-multiplier (the privacy ledger goes on), "
                         "or pass --dp-resume-without-privacy to continue without privacy")
