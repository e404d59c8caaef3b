"""Client-level differential privacy: per-client clipping on the worker, Gaussian noise on
the coordinator, Poisson sampling, the accountant's epsilon checked against dp-accounting
computed here independently, and the run stopping before its target epsilon."""

import json
import subprocess
import sys

import dp_accounting
import numpy as np
import pytest

from fedstream.common.errors import InvalidArgument
from fedstream.common.protocol import Action, UpdateMeta
from fedstream.coordinator.aggregation import RoundContext
from fedstream.coordinator.aggregation.mean import WeightedMean
from fedstream.coordinator.config import FederationConfig
from fedstream.coordinator.federation import Federation
from fedstream.coordinator.privacy import ClientLevelPrivacy
from fedstream.coordinator.units import Contribution, sample_round
from fedstream.worker.computers import make_computer
from fedstream.worker.loop import WorkerLoop
from fedstream.worker.privacy import clip_and_sum, clip_factors

from conftest import synthetic_store, tiny_model, weights_digest

F32 = np.float32


def test_every_clients_contribution_respects_the_clip():
    """On a real per-client computation: each client's clipped update is at most C long,
    updates already shorter are untouched, and the pushed sum is the sum of the clipped."""
    store = synthetic_store(n_train=160, n_clients=8)
    config = FederationConfig(rounds=1, units=1, dp_clip=0.05, server_optimizer="sgd")
    task = Federation(config, tiny_model(), store.summary.client_sizes).task
    import dataclasses
    computer = make_computer(dataclasses.replace(task, per_client=True), "/CPU:0")
    computer.set_weights([v.numpy() for v in tiny_model().weights])
    per_client = computer.compute(store.batches(list(range(8)), 0, 8))
    factors = clip_factors(per_client.arrays, 0.05)
    norms = np.sqrt(sum(np.square(a.reshape(8, -1)).sum(axis=1) for a in per_client.arrays))
    clipped_norms = norms * factors
    assert np.all(clipped_norms <= 0.05 * (1 + 1e-6)) and np.any(norms > 0.05)
    assert np.all((factors == 1) == (norms <= 0.05))
    summed, unclipped = clip_and_sum(per_client, 0.05)
    assert unclipped == int(np.sum(norms <= 0.05))
    for s, a in zip(summed.arrays, per_client.arrays):
        np.testing.assert_allclose(s, np.tensordot(factors, a, axes=1), rtol=1e-5, atol=1e-9)
    assert summed.weight == 8


def dp_stage(expected=4.0, **options):
    config = FederationConfig(**{"dp_clip": 2.0, "dp_noise_multiplier": 1.5, **options})
    return ClientLevelPrivacy(config.privacy, config.client_sampling,
                              shapes=[(400, 500)], expected_clients=lambda: expected,
                              population=lambda: int(expected))


def dp_step(stage, contributions, version):
    """One private step from the stage's initial state: (result, measurements)."""
    out = stage.next(stage.init(), contributions, RoundContext(version))
    return out.result, out.measurements


def test_the_noise_has_the_stated_standard_deviation():
    """sigma * C on the sum, then divided by the expected clients. The noise is the OS's, so
    the bounds are six standard errors of 200,000 draws: the sample standard deviation
    within 1% of 0.75 (its error is about 0.16%), the mean within 0.01 of 0 (its error is
    0.75 / sqrt(200,000) = 0.0017); a wrong sigma, C or divisor moves them far more."""
    zeros = Contribution([np.zeros((400, 500), F32)], 4.0, 4, base_version=3)
    (noisy,), _ = dp_step(dp_stage(), [zeros], version=3)
    assert abs(noisy.std() / (1.5 * 2.0 / 4.0) - 1) < 0.01 and abs(noisy.mean()) < 0.01
    (fresh,), _ = dp_step(dp_stage(), [zeros], version=3)
    assert not np.array_equal(noisy, fresh)  # the OS's randomness: never drawn twice
    seeded = [dp_step(dp_stage(privacy_research_seed=7), [zeros], version=3)[0][0]
              for _ in range(2)]
    np.testing.assert_array_equal(*seeded)  # a research seed repeats it: run = simulate


def test_the_privacy_stage_keeps_its_state_explicit_and_checkpoints_it():
    """The clip and the ledger live in the state a step returns, never in the stage: two
    steps from one state agree, and the state survives a checkpoint's JSON."""
    stage = dp_stage(privacy_research_seed=3, dp_target_quantile=0.5, dp_quantile_noise=2.0)
    unit = Contribution([np.zeros((400, 500), F32)], 4.0, 4, 3, unclipped=4)
    start = stage.init()
    first = stage.next(start, [unit], RoundContext(3))
    again = stage.next(start, [unit], RoundContext(3))
    assert first.result[0].tobytes() == again.result[0].tobytes() and first.state == again.state
    assert first.state.clip > start.clip  # every client within the clip: it grows
    assert len(first.state.ledger.releases) == 1 and start.ledger.releases == ()
    assert stage.load(json.loads(json.dumps(stage.save(first.state)))) == first.state


def test_no_noise_and_every_client_is_the_plain_mean_bit_for_bit():
    rng = np.random.default_rng(0)
    contributions = [Contribution([rng.normal(size=(30, 7)).astype(F32)], 5.0, 5, 2)
                     for _ in range(3)]
    plain = WeightedMean().next(None, contributions, RoundContext(2)).result
    (private,), _ = dp_step(dp_stage(expected=15.0, dp_noise_multiplier=0.0), contributions, 2)
    assert plain[0].tobytes() == private.tobytes()


def test_poisson_sampling_draws_each_client_with_probability_q():
    config = FederationConfig(client_fraction=0.1, sampling="poisson")
    sizes = [len(sample_round(config, np.arange(1000), r)) for r in range(1, 201)]
    assert abs(np.mean(sizes) - 100) < 3 * np.sqrt(1000 * 0.1 * 0.9 / 200)
    assert len(set(sizes)) > 5  # sizes vary, as Poisson sampling has them


def run_private(**options):
    store = synthetic_store(n_train=400, n_clients=20)
    config = FederationConfig(units=1, server_optimizer="sgd", server_lr=0.5, batch_size=8,
                              **options)
    rows = []
    fed = Federation(config, tiny_model(), store.summary.client_sizes, on_metrics=rows.append)
    WorkerLoop(fed, store, name="w", device="/CPU:0", prefetch=False).run()
    fed.reports.flush()
    return fed, rows


def independent_epsilon(q, sigma, rounds, delta):
    accountant = dp_accounting.rdp.RdpAccountant()
    accountant.compose(dp_accounting.PoissonSampledDpEvent(
        q, dp_accounting.GaussianDpEvent(sigma)), rounds)
    return accountant.get_epsilon(delta)


def test_the_reported_epsilon_is_dp_accountings_and_the_run_stops_before_its_target():
    target = independent_epsilon(0.25, 1.2, 6, 1e-3) * 1.0001  # exactly 6 rounds fit
    fed, rows = run_private(rounds=50, client_fraction=0.25, sampling="poisson", dp_clip=0.1,
                            dp_noise_multiplier=1.2, dp_delta=1e-3, dp_target_epsilon=target)
    assert [r["round"] for r in rows] == [1, 2, 3, 4, 5, 6] and fed.phase == "done"
    for r in rows:
        assert r["dp_epsilon"] == pytest.approx(independent_epsilon(0.25, 1.2, r["round"], 1e-3),
                                                rel=1e-9)
        assert r["dp_delta"] == 1e-3
    assert independent_epsilon(0.25, 1.2, 7, 1e-3) > target


def test_fixed_size_sampling_is_accounted_as_sampling_without_replacement():
    """Replace-one neighbours: replacing a client moves the sum of clipped updates by up to
    2C, so the Gaussian's multiplier is z / 2."""
    fed, rows = run_private(rounds=2, client_fraction=0.2, dp_clip=0.1,
                            dp_noise_multiplier=1.0, dp_delta=1e-3, dp_release_metrics=True)
    accountant = dp_accounting.rdp.RdpAccountant(
        neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE)
    accountant.compose(dp_accounting.SampledWithoutReplacementDpEvent(
        20, 4, dp_accounting.GaussianDpEvent(0.5)), 2)
    assert rows[-1]["dp_epsilon"] == pytest.approx(accountant.get_epsilon(1e-3), rel=1e-9)
    assert [r["clients"] for r in rows] == [4, 4]


def test_an_unclipped_unit_is_refused_and_changes_nothing():
    config = FederationConfig(rounds=2, units=1, dp_clip=0.1, dp_noise_multiplier=1.0,
                              server_optimizer="sgd")
    fed = Federation(config, tiny_model(), [10] * 4)
    wid, task, _ = fed.join("w", "cpu")
    assert task.dp_clip == 0.1
    a = fed.assignment(wid, 0)
    assert a.action is Action.TRAIN
    digest = weights_digest(fed.server.model)
    too_long = [np.full(s.shape, 1.0, F32) for s in task.update_specs]
    meta = UpdateMeta(wid, a.round, a.version, a.unit, a.client_ids, 4.0, 40)
    with pytest.raises(InvalidArgument, match="clip every client's update"):
        fed.push(meta, too_long)
    assert weights_digest(fed.server.model) == digest and fed.server.version == 1
    ok = [np.full(s.shape, 0.0, F32) for s in task.update_specs]
    assert fed.push(meta, ok).accepted


def test_an_empty_poisson_round_releases_noise_and_training_goes_on():
    """A step of noise alone, so the released model does not say the sample was empty."""
    fed, rows = run_private(rounds=30, client_fraction=0.02, sampling="poisson", dp_clip=0.1,
                            dp_noise_multiplier=1.0, dp_release_metrics=True)
    assert any(r["clients"] == 0 for r in rows)
    assert [r["round"] for r in rows] == list(range(1, 31))
    assert fed.server.version == 31 and all(r["dp_epsilon"] > 0 for r in rows)


def test_without_noise_an_empty_poisson_round_steps_on_nothing():
    """No noise, no claim: an empty sample adds nothing (the noise-free clipped mean)."""
    fed, rows = run_private(rounds=30, client_fraction=0.02, sampling="poisson", dp_clip=0.1,
                            dp_release_metrics=True)
    assert any(r["clients"] == 0 for r in rows) and fed.server.version == 31


def test_dp_refuses_settings_it_cannot_account_for():
    with pytest.raises(ValueError, match="needs synchronous rounds"):
        FederationConfig(dp_clip=1.0, mode="fedbuff")
    with pytest.raises(ValueError, match="needs --dp-clip"):
        FederationConfig(dp_noise_multiplier=1.0)
    with pytest.raises(ValueError, match="uniform weighting"):
        FederationConfig(dp_clip=1.0, weighting="examples")


def test_the_noise_command_gives_the_smallest_multiplier_for_a_target():
    done = subprocess.run(
        [sys.executable, "-m", "fedstream.cli", "dp-noise", "--target-epsilon", "3",
         "--clients", "1000", "--rounds", "100", "--client-fraction", "0.02", "--sampling",
         "poisson"], capture_output=True, text=True, check=True)
    out = json.loads(done.stdout)
    sigma = out["noise_multiplier"]
    assert independent_epsilon(0.02, sigma, 100, 1e-5) <= 3
    assert independent_epsilon(0.02, sigma * 0.995, 100, 1e-5) > 3


def test_adaptive_clipping_splits_the_noise_without_changing_the_privacy():
    """The count's mechanism (multiplier 2 sigma_b) and the updates' (z_u) compose to
    exactly the stated z: dp-accounting gives the pair and a single z the same epsilon."""
    def schedule_of(config):
        return ClientLevelPrivacy(config.privacy, config.client_sampling, shapes=[],
                                  expected_clients=lambda: 40.0,
                                  population=lambda: 40)

    config = FederationConfig(dp_clip=1.0, dp_noise_multiplier=1.1, dp_target_quantile=0.5,
                              dp_quantile_noise=2.0)
    schedule = schedule_of(config)
    z_u = schedule.update_multiplier()
    assert z_u > 1.1 and schedule.noise_std(1.0) == pytest.approx(z_u * 1.0)

    def eps(event):
        accountant = dp_accounting.rdp.RdpAccountant()
        accountant.compose(event, 50)
        return accountant.get_epsilon(1e-5)

    pair = dp_accounting.ComposedDpEvent([dp_accounting.GaussianDpEvent(z_u),
                                          dp_accounting.GaussianDpEvent(2 * 2.0)])
    assert eps(pair) == pytest.approx(eps(dp_accounting.GaussianDpEvent(1.1)), rel=1e-6)
    with pytest.raises(ValueError, match="raise --dp-quantile-noise"):
        schedule_of(FederationConfig(dp_clip=1.0, dp_noise_multiplier=3.0,
                                     dp_target_quantile=0.5, dp_quantile_noise=1.0)
                    ).update_multiplier()


@pytest.mark.parametrize("start", [0.01, 5.0])
def test_the_adaptive_clip_moves_to_the_target_quantile_of_update_norms(start):
    """From a clip far below or above the clients' update norms, the clip moves until about
    half of the clients' updates are within it (the workers clip with the round's clip)."""
    fed, rows = run_private(rounds=40, dp_clip=start, dp_noise_multiplier=0.5,
                            dp_target_quantile=0.5, dp_clip_lr=0.5)
    clips = [r["dp_clip"] for r in rows]
    fractions = [r["dp_unclipped_fraction"] for r in rows]
    assert clips[0] == start and 0.05 < clips[-1] < 2.0  # the norms' median is about 0.35
    assert 0.2 < np.mean(fractions[-10:]) < 0.8
    assert fed.policy.clip == pytest.approx(clips[-1] * np.exp(-0.5 * (fractions[-1] - 0.5)))
