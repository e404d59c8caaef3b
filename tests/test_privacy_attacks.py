"""Client-level DP tried as an attacker would: each test is one attack on a stated epsilon
(the adversary named in its docstring) and passes only when the attack fails.

The threat model is docs/explanation/privacy.md's: a model user sees every released version and every
published metric; the coordinator's resolved config and its checkpoints may leak too."""

import dataclasses
import math
import subprocess
import sys

import dp_accounting
import numpy as np
import pytest
from scipy import optimize, stats

from fedstream.common.errors import InvalidArgument
from fedstream.common.protocol import Action, UpdateMeta
from fedstream.common.randomness import SEEDED
from fedstream.coordinator.aggregation import RoundContext
from fedstream.coordinator.config import FederationConfig
from fedstream.coordinator.federation import Federation
from fedstream.coordinator.privacy import ClientLevelPrivacy
from fedstream.coordinator.units import Contribution, sample_round
from fedstream.worker.loop import WorkerLoop

from conftest import arrays_file, synthetic_store, tiny_model, weights_digest

F32 = np.float32


def private_federation(clients=4, **options):
    config = FederationConfig(**{"rounds": 3, "units": 1, "dp_clip": 0.1,
                                 "dp_noise_multiplier": 1.0, "server_optimizer": "sgd",
                                 "server_lr": 1.0, **options})
    fed = Federation(config, tiny_model(), [10] * clients)
    worker, task, _ = fed.join("w", "/CPU:0")
    return fed, worker, task


def push_zeros(fed, worker, task, **meta):
    """One round of all-zero updates: what the model then moves by is the noise alone."""
    a = fed.assignment(worker, 0)
    assert a.action is Action.TRAIN
    before = [w.copy() for w in fed.server.model.get_weights()]
    zeros = [np.zeros(s.shape, F32) for s in task.update_specs]
    fed.push(UpdateMeta(worker, a.round, a.version, a.unit, a.client_ids, len(a.client_ids),
                        len(a.client_ids), **meta), zeros)
    # server SGD with lr 1: w_new = w_old - noise / expected clients
    return a.version, [b - w for b, w in zip(before, fed.server.model.get_weights())]


def test_dp_noise_cannot_be_regenerated_from_the_config():
    """Adversary: a model user holding the resolved config (and every seed in it). They
    redraw the noise the way a seeded run draws it, from each seed the config holds, and
    subtract it from the released step: the clean update must not come out. Two runs
    with the same config must not share their noise either."""
    fed, worker, task = private_federation()
    version, released = push_zeros(fed, worker, task)
    config = dataclasses.asdict(fed.config)
    seeds = {v for k, v in config.items() if "seed" in k and isinstance(v, int)} | {0}
    std = fed.config.dp_noise_multiplier * fed.config.dp_clip
    for seed in seeds:
        rng = np.random.default_rng([seed, version])
        redrawn = [rng.normal(0.0, std, r.shape).astype(F32) / F32(4) for r in released]
        residual = max(float(np.abs(r - g).max()) for r, g in zip(released, redrawn))
        assert residual > 1e-3, f"the noise was redrawn from seed {seed}"
    other, worker2, task2 = private_federation()
    _, released2 = push_zeros(other, worker2, task2)
    assert not np.allclose(released[0], released2[0])
    flat = np.concatenate([r.ravel() for r in released])  # and it is the stated noise
    assert abs(flat.std() / (std / 4) - 1) < 0.05


def test_the_client_sample_under_dp_cannot_be_regenerated():
    """Adversary: a model user who knows the sampling seed (it is in the config). Under DP
    amplification by sampling holds only if they cannot tell who took part: predicting
    the round's sample from the seed must fail, while the sample rate stays q."""
    fed, worker, _ = private_federation(clients=40, rounds=30, client_fraction=0.5,
                                        sampling="poisson", dp_noise_multiplier=2.0)
    predicted, drawn = [], []
    for r in range(1, 31):
        a = fed.assignment(worker, 0)
        assert a.action is Action.TRAIN and a.round == r
        drawn.append(tuple(a.client_ids))
        predicted.append(tuple(sample_round(fed.config, np.arange(40), r).tolist()))
        fed.push(UpdateMeta(worker, a.round, a.version, a.unit, a.client_ids,
                            len(a.client_ids), len(a.client_ids)),
                 [np.zeros(s.shape, F32) for s in fed.task.update_specs])
    assert sum(p == d for p, d in zip(predicted, drawn)) == 0
    rate = sum(map(len, drawn)) / (30 * 40)
    assert abs(rate - 0.5) < 4 * math.sqrt(0.25 / 1200)


def replace_one_lower_bound(q, z, delta, rounds):
    """Epsilon at `delta` of one pair of neighbouring datasets under fixed-size sampling at
    rate q, composed `rounds` times, computed here without dp-accounting: every other client
    pushes -C, the target pushes +C in one dataset and -C in the other. Then one output is
    N(-kC, (zC)^2) and the other the mixture (1 - q) N(-kC) + q N(-(k-2)C): a shift of 2C
    whenever the target is sampled. Its privacy loss, discretised (rounded down, so this is
    a lower bound) and composed by FFT, gives delta(eps) = E[(1 - e^(eps - L))+]."""
    x = np.linspace(-16 * z, 16 * z + 2, 200001)
    dx = x[1] - x[0]
    mixture = ((1 - q) * stats.norm.pdf(x, 0, z) + q * stats.norm.pdf(x, 2, z)) * dx
    loss = np.log(mixture) - np.log(stats.norm.pdf(x, 0, z) * dx)
    step = 1e-3
    bins = np.floor(loss / step).astype(int)
    pmf = np.bincount(bins - bins.min(), weights=mixture)
    pmf /= pmf.sum()
    size = 1 << (len(pmf) * rounds).bit_length()
    composed = np.maximum(np.fft.irfft(np.fft.rfft(pmf, size) ** rounds, size), 0)
    composed = composed[:rounds * (len(pmf) - 1) + 1]
    losses = (np.arange(len(composed)) + rounds * bins.min()) * step

    def excess(eps):
        return float(np.sum(composed * -np.expm1(np.minimum(eps - losses, 0)))) - delta

    return optimize.brentq(excess, 0.0, float(losses.max()))


def test_fixed_size_sampling_reports_at_least_what_replacing_one_client_reveals():
    """Adversary: a model user who knows all but one client, under the replace-one relation
    that fixed-size sampling implies (N and k public). After 1 and 10 rounds epsilon must
    not be below what one realisable pair of neighbouring datasets already reveals
    (computed independently: 6.58 and 12.26 at N=100, k=10, z=1, delta=1e-5)."""
    _, rows = run_private(rounds=10, client_fraction=0.1, dp_clip=0.1,
                          dp_noise_multiplier=1.0, dp_delta=1e-5, clients=100, n_train=1000)
    for r in (1, 10):
        assert rows[r - 1]["dp_epsilon"] >= replace_one_lower_bound(0.1, 1.0, 1e-5, r)


def test_the_adaptive_clips_count_moves_by_at_most_half_a_client():
    """Adversary: a model user watching the clip move. One client more in a round must move
    the noised count by at most 1/2 (the sensitivity the noise split assumes) whether its
    update was within the clip or not. Same noise on both sides (a research seed), so the
    difference is the statistic's own."""
    def count(clients, within):
        config = FederationConfig(dp_clip=0.1, dp_noise_multiplier=1.0, dp_target_quantile=0.5,
                                  dp_quantile_noise=2.0, privacy_research_seed=5)
        stage = ClientLevelPrivacy(config.privacy, config.client_sampling,
                                   shapes=[(3,)], expected_clients=lambda: 10.0, population=lambda: 100)
        unit = Contribution([np.zeros(3, F32)], clients, clients, 1, unclipped=within)
        measured = stage.next(stage.init(), [unit], RoundContext(1)).measurements
        return measured["dp_unclipped_fraction"] * 10.0

    base = count(4, 2)
    assert count(5, 3) - base == pytest.approx(0.5)  # the extra client within the clip
    assert count(5, 2) - base == pytest.approx(-0.5)  # the extra client beyond it


def run_private(clients=20, n_train=400, checkpoint_dir=None, **options):
    store = synthetic_store(n_train=n_train, n_clients=clients)
    config = FederationConfig(units=1, server_optimizer="sgd", server_lr=0.5, batch_size=8,
                              **options)
    rows = []
    fed = Federation(config, tiny_model(), store.summary.client_sizes, on_metrics=rows.append,
                     checkpoint_dir=checkpoint_dir)
    WorkerLoop(fed, store, name="w", device="/CPU:0", prefetch=False).run()
    fed.reports.flush()
    return fed, rows


def independent_epsilon(events, delta):
    accountant = dp_accounting.rdp.RdpAccountant()
    for event, count in events:
        accountant.compose(event, count)
    return accountant.get_epsilon(delta)


def poisson(q, z):
    return dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z))


def test_a_resumed_run_composes_what_it_spent_before(tmp_path):
    """Adversary: a model user of a run resumed with more noise. Epsilon must count the
    rounds before the restart at their own noise; resuming a private checkpoint without
    DP is refused unless the user says so."""
    private = dict(client_fraction=0.25, sampling="poisson", dp_clip=0.1, dp_delta=1e-5)
    run_private(rounds=2, dp_noise_multiplier=0.5, checkpoint_dir=str(tmp_path), **private)
    _, rows = run_private(rounds=3, dp_noise_multiplier=5.0, checkpoint_dir=str(tmp_path),
                          **private)
    assert [r["round"] for r in rows] == [3]
    want = independent_epsilon([(poisson(0.25, 0.5), 2), (poisson(0.25, 5.0), 1)], 1e-5)
    assert rows[0]["dp_epsilon"] == pytest.approx(want, rel=1e-9)
    with pytest.raises(ValueError, match="--dp-resume-without-privacy"):
        run_private(rounds=4, checkpoint_dir=str(tmp_path), client_fraction=0.25)
    _, rows = run_private(rounds=4, checkpoint_dir=str(tmp_path), client_fraction=0.25,
                          dp_resume_without_privacy=True)
    assert [r["round"] for r in rows] == [4] and "dp_epsilon" not in rows[0]


def test_the_pld_accountant_runs_a_simulation_on_tensorflow(tmp_path):
    """`fedstream simulate --dp-accountant pld` on the default backend reports PLD's
    epsilon (computed here independently) rather than crashing at round 1."""
    data = arrays_file(tmp_path, examples=200)
    out = tmp_path / "m.jsonl"
    subprocess.run([sys.executable, "-m", "fedstream.cli", "simulate", "--data-format",
                    "arrays", "--data", str(data), "--clients", "10", "--rounds", "2",
                    "--model", "2nn", "--client-fraction", "0.3", "--sampling", "poisson",
                    "--dp-clip", "0.5", "--dp-noise-multiplier", "1.0", "--dp-accountant",
                    "pld", "--server-optimizer", "sgd", "--server-lr", "0.1",
                    "--metrics", str(out)], check=True, capture_output=True, timeout=300)
    import json
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    accountant = dp_accounting.pld.PLDAccountant()
    accountant.compose(poisson(0.3, 1.0), 2)
    assert rows[-1]["dp_epsilon"] == pytest.approx(accountant.get_epsilon(1e-5), rel=1e-9)


def test_a_worker_cannot_claim_more_clients_within_the_clip_than_it_has():
    """Adversary: a worker claiming 10^6 clients within the clip to drag the adaptive clip
    (and every later update) to nothing. Refused, and nothing moves."""
    fed, worker, task = private_federation(dp_target_quantile=0.5, dp_quantile_noise=2.0)
    a = fed.assignment(worker, 0)
    digest, clip = weights_digest(fed.server.model), fed.policy.clip
    zeros = [np.zeros(s.shape, F32) for s in task.update_specs]
    for claim in (10 ** 6, -1):
        meta = UpdateMeta(worker, a.round, a.version, a.unit, a.client_ids, 4, 4,
                          unclipped_clients=claim)
        with pytest.raises(InvalidArgument, match="unclipped_clients"):
            fed.push(meta, zeros)
    assert weights_digest(fed.server.model) == digest and fed.policy.clip == clip
    assert fed.server.version == a.version


@pytest.mark.parametrize("encoding", ["int8", "int8-block", "topk", "float16", "bfloat16"])
def test_dp_refuses_compressed_updates_it_does_not_account_for(encoding):
    """Rounding after clipping (and top-k's error feedback, which carries clipped mass into
    later rounds) changes a client's contribution beyond the sensitivity accounted."""
    with pytest.raises(ValueError, match="client-level DP needs raw updates"):
        FederationConfig(dp_clip=1.0, dp_noise_multiplier=1.0, update_encoding=encoding)


def test_under_dp_nothing_computed_from_client_data_without_noise_is_published():
    """Adversary: a model user reading the metrics (JSONL, TensorBoard, Prometheus all take
    these rows). Training loss, sample sizes and worker reports are withheld unless the
    user releases them; an empty Poisson sample still releases a noise step."""
    options = dict(rounds=6, client_fraction=0.1, sampling="poisson", dp_clip=0.1,
                   dp_noise_multiplier=1.0)
    fed, rows = run_private(**options)
    assert fed.server.version == 7  # one step a round, empty samples included
    for row in rows:
        leaked = {k for k in row if k in ("train_loss", "clients", "examples", "empty_round")
                  or k.endswith("_bytes") or k in ("compute_s", "fetch_s", "pull_s", "push_s")}
        assert not leaked, leaked
        assert row["dp_epsilon"] > 0
    _, rows = run_private(dp_release_metrics=True, **options)
    assert all("train_loss" in r and "clients" in r for r in rows)


def test_a_seeded_run_says_it_is_not_private():
    _, rows = run_private(rounds=2, dp_clip=0.1, dp_noise_multiplier=1.0,
                          privacy_research_seed=1)
    assert all(r["dp_guarantee"] == SEEDED for r in rows)
    _, rows = run_private(rounds=1, dp_clip=0.1, dp_noise_multiplier=1.0)
    assert "dp_guarantee" not in rows[0]


def test_secure_aggregation_refuses_a_threshold_at_or_below_half_the_parties():
    """Adversary: a coordinator that tells half of the parties a party survived and the
    other half it dropped, collecting both of its secrets. Two disjoint halves can both
    reach a threshold only if it is at most half of the parties."""
    for fraction in (0.3, 0.5):
        with pytest.raises(ValueError, match=r"secagg_threshold must be in \(0.5, 1\]"):
            FederationConfig(secure_aggregation=True, secagg_threshold=fraction)


@pytest.mark.parametrize("parties, colluders", [(3, 1), (10, 2)])
def test_distributed_noise_survives_the_declared_colluders(parties, colluders):
    """Adversary: the coordinator with `colluders` surviving parties who subtract their own
    noise from the revealed sum. Whatever survives (at least the threshold), the honest
    parties' noise alone must still reach the stated deviation; and the threshold stays
    above (parties + colluders) / 2, so equivocation with their help reaches it once."""
    from test_secure_aggregation import run_protocol
    sigma = 0.3
    inputs = [np.zeros(20_000, np.float32) for _ in range(parties)]
    secure, _, _ = run_protocol(inputs, [1.0] * parties, noise_std=sigma,
                                colluders=colluders)
    per_party = np.std(secure.result.total) / math.sqrt(parties)  # measured, all survived
    worst = math.sqrt(secure.threshold - colluders) * per_party  # t survivors, c colluding
    assert worst >= sigma * 0.97  # 20,000 draws: about 0.5% error
    assert 2 * secure.threshold > parties + colluders


def test_the_progress_a_private_run_prints_holds_no_withheld_figure():
    """`fedstream run` prints epsilon where a private round's row withholds the loss."""
    from fedstream.cli.local import progress_line
    private = {"round": 3, "rounds_per_s": 2.0, "dp_epsilon": 1.25, "test_acc": 0.5,
               "test_loss": 1.0}
    assert "epsilon 1.25" in progress_line(private, 10) and "loss 1" not in \
        progress_line(private, 10).split("test_acc")[0]
    seeded = {**private, "dp_guarantee": SEEDED}
    assert "(not private: seeded)" in progress_line(seeded, 10)
    assert "train_loss 0.5000" in progress_line({"round": 1, "rounds_per_s": 1.0,
                                                 "train_loss": 0.5}, 10)


def renyi_of_shifted_skellam(mu, shift, order):
    """D_order(Sk + shift || Sk) for Skellam noise of variance mu, summed exactly over its
    support with scipy: the one-dimensional case of the parties' mechanism."""
    from scipy.special import logsumexp
    lam = mu / 2
    k = np.arange(-int(60 * math.sqrt(mu)) - 200 - shift, int(60 * math.sqrt(mu)) + 200 + shift)
    p, q = stats.skellam.logpmf(k - shift, lam, lam), stats.skellam.logpmf(k, lam, lam)
    finite = np.isfinite(p) & np.isfinite(q)
    return logsumexp(order * p[finite] + (1 - order) * q[finite]) / (order - 1)


@pytest.mark.parametrize("mu", [0.5, 2.0, 20.0, 1000.0])
def test_the_skellam_bound_covers_the_exact_divergence(mu):
    """The bound the ledger uses for the parties' noise, against the exact Renyi divergence
    of a shifted Skellam distribution (one value: L1 = L2 = the shift)."""
    from fedstream.coordinator.accounting import skellam_rdp
    for shift in (1, 3, 10):
        for order in (1.5, 2, 4, 16, 64):
            exact = renyi_of_shifted_skellam(mu, shift, order)
            assert exact <= skellam_rdp(order, mu, shift, shift) * (1 + 1e-9)


def test_distributed_noise_is_skellam_on_the_ring_and_accounted_after_rounding():
    """Adversary: the coordinator's operator, who sees the unmasked sum on the ring. The
    parties add integer Skellam noise after rounding, so the sum is the rounded inputs plus
    Skellam noise of the stated variance, and the ledger accounts that mechanism,
    rounding's extra sensitivity included: its epsilon is dp-accounting's for zCDP events
    of Agarwal et al.'s bound, and above the continuous Gaussian's at the same z."""
    from test_secure_aggregation import PartyDriver, secure_federation

    from fedstream.coordinator.accounting import SKELLAM
    fed, now = secure_federation(dp_clip=1.0, dp_noise_multiplier=1.0, dp_delta=1e-5)
    driver = PartyDriver(fed, 3)

    def tick():
        now[0] += 0.5
        fed.check_deadline()

    driver.run(timeout_s=30, tick=tick)
    fed.reports.flush()
    (release,) = fed.policy.aggregation_state.ledger.releases
    assert release.mechanism == SKELLAM and release.dims == sum(
        int(np.prod(s.shape)) for s in fed.task.update_specs)
    bits = round(math.log2(release.clip_steps))  # the clip is 1
    l2 = release.clip_steps + math.sqrt(release.dims)
    mu = release.clip_steps ** 2
    zcdp = min((dp_accounting.ZCDpEvent(l2 ** 2 / (2 * mu) + l2 ** 2 / (2 * mu ** 2),
                                        max(0.0, (6 * math.sqrt(release.dims) * l2 - l2 ** 2)
                                            / (4 * mu ** 2))),
                dp_accounting.ZCDpEvent(l2 ** 2 / (2 * mu),
                                        3 * math.sqrt(release.dims) * l2 / (2 * mu))),
               key=lambda e: e.xi + 8 * e.rho)
    accountant = dp_accounting.rdp.RdpAccountant()
    accountant.compose(zcdp)
    assert fed.reports.last_metrics["dp_epsilon"] == pytest.approx(accountant.get_epsilon(1e-5))
    gaussian = dp_accounting.rdp.RdpAccountant()
    gaussian.compose(dp_accounting.GaussianDpEvent(1.0))
    assert fed.reports.last_metrics["dp_epsilon"] > gaussian.get_epsilon(1e-5)
    assert "train_loss" not in fed.reports.last_metrics and bits > 8
