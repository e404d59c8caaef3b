"""Secure aggregation against an honest-but-curious coordinator and dropping parties: the
unmasked sum is the plain sum within the fixed point's bound; one party's masked input looks
uniform; parties that drop after sharing or after uploading are recovered; below the
threshold a round is abandoned with nothing revealed and the model untouched; a party
refuses requests that would reveal both of a party's secrets. The same party driver runs
against the in-process federation and, over real gRPC, against a coordinator process."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pytest

from fedstream.common import secagg
from fedstream.common.clients import CoordinatorClient
from fedstream.common.errors import FailedPrecondition, InvalidArgument
from fedstream.common.protocol import (
    Action,
    EncryptedShare,
    KeysAdvert,
    KeyShares,
    PartyKeys,
    RevealedShare,
    SecureStep,
    SharesRevealed,
    SurvivorsConfirmed,
    UpdateMeta,
)
from fedstream.coordinator.config import FederationConfig
from fedstream.coordinator.federation import Federation
from fedstream.coordinator.secure_sum import Phase, SecureSum, threshold_for
from fedstream.worker.secure_party import ProtocolViolation, SecureParty

from conftest import arrays_file, start_service, stop, synthetic_store, tiny_model

pytest.importorskip("Crypto")


# -- primitives -------------------------------------------------------------------------------
def test_any_threshold_of_the_shares_recover_a_secret_and_fewer_do_not():
    secret = bytes(range(32))
    shares = secagg.split_secret(secret, 3, 5)
    for subset in ([1, 2, 3], [5, 3, 1], [2, 4, 5], [1, 2, 3, 4, 5]):
        assert secagg.combine_secret([(i, shares[i - 1]) for i in subset]) == secret
    assert secagg.combine_secret([(1, shares[0]), (2, shares[1])]) != secret


def test_shares_decrypt_only_for_their_recipient_unaltered():
    a, b, c = secagg.key_pair(), secagg.key_pair(), secagg.key_pair()
    plaintext = bytes(range(64))
    sealed = secagg.encrypt_share(a.private, b.public, 7, 1, 2, plaintext)
    assert secagg.decrypt_share(b.private, a.public, 7, 1, 2, sealed) == plaintext
    tampered = sealed[:20] + bytes([sealed[20] ^ 1]) + sealed[21:]
    for attempt in (lambda: secagg.decrypt_share(b.private, a.public, 7, 1, 2, tampered),
                    lambda: secagg.decrypt_share(c.private, a.public, 7, 1, 2, sealed),
                    lambda: secagg.decrypt_share(b.private, a.public, 8, 1, 2, sealed),
                    lambda: secagg.decrypt_share(b.private, a.public, 7, 3, 2, sealed)):
        with pytest.raises(InvalidArgument, match="do not decrypt"):
            attempt()


def test_both_sides_of_a_pair_derive_one_mask_seed_per_round():
    a, b = secagg.key_pair(), secagg.key_pair()
    assert secagg.pairwise_seed(a.private, b.public, 3) == secagg.pairwise_seed(b.private,
                                                                                a.public, 3)
    assert secagg.pairwise_seed(a.private, b.public, 3) != secagg.pairwise_seed(a.private,
                                                                                b.public, 4)
    assert secagg.public_key(a.private) == a.public


# -- the protocol, driven directly ------------------------------------------------------------
def run_protocol(inputs, weights, *, threshold=0.6, drop_before_mask=(), drop_before_reveal=(),
                 value_range=4.0, noise_std=0.0, bits=0, colluders=0, neighbours=0):
    """Parties 1..n with `inputs` through a SecureSum; the dropped stay silent from the
    phase named. Returns (the closed SecureSum, the parties, their masked inputs)."""
    n = len(inputs)
    now = [0.0]
    secure = SecureSum(9, {p + 1: w for p, w in enumerate(weights)}, inputs[0].size + 1,
                       threshold, value_range, noise_std, timeout_s=5.0, opened_at=0.0,
                       bits=bits, colluders=colluders, neighbours=neighbours)
    parties = {p + 1: SecureParty(9, p, [inputs[p]], weights[p], loss=0.5)
               for p in range(n)}
    masked = {}
    for p in parties.values():
        secure.advertise(p.keys)
    secure.advance(now[0])
    for q, p in parties.items():
        action, step = secure.step_for(q)
        assert action == "share_keys"
        secure.share(q, p.share(step))
    secure.advance(now[0])
    for q, p in parties.items():
        if q in drop_before_mask:
            continue
        action, step = secure.step_for(q)
        assert action == "mask"
        masked[q] = p.mask(step)
        secure.mask(q, masked[q])
    now[0] += 6.0
    secure.advance(now[0])
    for q, p in parties.items():  # the consistency check: every survivor signs them
        step = secure.step_for(q)
        if step is not None:
            assert step[0] == "confirm"
            secure.confirm(q, p.confirm(step[1]))
    secure.advance(now[0])
    for q, p in parties.items():
        step = secure.step_for(q)
        if q in drop_before_mask or q in drop_before_reveal or step is None:
            continue
        secure.reveal(q, p.unmask(step[1]))
    now[0] += 6.0
    secure.advance(now[0])
    return secure, parties, masked


def rng_inputs(n, size=2000, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.uniform(-3, 3, size).astype(np.float32) for _ in range(n)]


@pytest.mark.parametrize("n", [2, 5, 10])
def test_the_unmasked_sum_is_the_plain_sum_within_the_quantisation_bound(n):
    inputs = rng_inputs(n)
    secure, _, _ = run_protocol(inputs, [1.0] * n)
    assert secure.phase is Phase.DONE and secure.result.dropped == ()
    plain = np.sum(np.asarray(inputs, np.float64), axis=0)
    bound = n * secure.fixed_point.step / 2  # each party rounds to the nearest step
    assert np.max(np.abs(secure.result.total - plain)) <= bound
    assert secure.result.loss_sum == pytest.approx(0.5 * n, abs=n / secagg.LOSS_SCALE)


def uniformity_chi2(values: np.ndarray) -> float:
    """Pearson's chi-square of a byte histogram against uniform (255 degrees of freedom:
    mean 255, standard deviation about 22.6)."""
    counts = np.bincount(values.view(np.uint8), minlength=256)
    expected = counts.sum() / 256
    return float(np.sum((counts - expected) ** 2 / expected))


def test_fewer_precision_bits_coarsen_the_sum_and_too_many_fall_back_to_the_ring():
    inputs = rng_inputs(3)
    plain = np.sum(np.asarray(inputs, np.float64), axis=0)
    coarse, _, _ = run_protocol(inputs, [1.0] * 3, bits=8)
    assert coarse.fixed_point.bits == 8
    assert 3 * 2.0 ** -10 < np.max(np.abs(coarse.result.total - plain)) <= 3 * 2.0 ** -9
    wide, _, _ = run_protocol(inputs, [1.0] * 3, bits=30)
    assert wide.fixed_point.bits == secagg.FixedPoint.for_bound(3 * 4.0).bits < 30


def test_one_partys_upload_alone_is_indistinguishable_from_uniform():
    """The most structured input there is (all zeros, so its fixed point is all zero
    bytes) uploads as bytes that pass a chi-square test of uniformity; the same test
    rejects the unmasked encoding, so it is able to fail."""
    inputs = [np.zeros(50_000, np.float32) for _ in range(3)]
    _, _, masked = run_protocol(inputs, [1.0] * 3)
    for upload in masked.values():
        assert uniformity_chi2(upload) < 255 + 6 * 22.6
    encoded, _ = secagg.FixedPoint(20).encode(np.full(50_000, 0.25), 1.0)
    assert uniformity_chi2(encoded) > 10_000
    # nor do two uploads of equal inputs look alike
    a, b = list(masked.values())[:2]
    assert np.mean(a == b) < 1e-3


def test_a_party_that_drops_after_sharing_is_unmasked_out_of_the_sum():
    inputs = rng_inputs(5, seed=1)
    secure, _, _ = run_protocol(inputs, [1.0] * 5, drop_before_mask={2})
    assert secure.phase is Phase.DONE and secure.result.dropped == (2,)
    plain = sum(np.asarray(inputs[i], np.float64) for i in (0, 2, 3, 4))
    assert np.max(np.abs(secure.result.total - plain)) <= 5 * secure.fixed_point.step


def test_a_party_that_drops_after_uploading_is_still_summed():
    inputs = rng_inputs(5, seed=2)
    secure, _, _ = run_protocol(inputs, [1.0] * 5, drop_before_reveal={4, 5})
    assert secure.phase is Phase.DONE and secure.result.survivors == (1, 2, 3, 4, 5)
    plain = np.sum(np.asarray(inputs, np.float64), axis=0)
    assert np.max(np.abs(secure.result.total - plain)) <= 5 * secure.fixed_point.step


def test_below_the_threshold_the_round_is_abandoned_and_nobody_is_asked_to_reveal():
    secure, parties, _ = run_protocol(rng_inputs(5), [1.0] * 5, drop_before_mask={1, 2, 3})
    assert secure.threshold == 3
    assert secure.phase is Phase.ABANDONED and secure.result is None
    assert all(secure.step_for(q) is None for q in parties)
    assert "only 2 parties sent masked inputs" in secure.failure


def test_distributed_noise_sums_to_at_least_the_stated_deviation():
    """Each party adds sigma / sqrt(t); the t or more survivors' sum carries sigma or more."""
    n, sigma = 5, 0.3
    inputs = [np.zeros(20_000, np.float32) for _ in range(n)]
    secure, _, _ = run_protocol(inputs, [1.0] * n, noise_std=sigma)
    measured = np.std(secure.result.total)
    expected = sigma * np.sqrt(n / secure.threshold)
    assert measured == pytest.approx(expected, rel=0.03)  # 20,000 draws: about 0.5% error


# -- what a party refuses ---------------------------------------------------------------------
def shared_parties(n=3, threshold=2):
    parties = {p + 1: SecureParty(4, p, [np.ones(10, np.float32)], 1.0, 0.1) for p in range(n)}
    roster = tuple(p.keys for p in parties.values())
    sent = {q: p.share(SecureStep(q, threshold=threshold, roster=roster))
            for q, p in parties.items()}
    inbox = {q: tuple(EncryptedShare(s, e.ciphertext) for s, shares in sent.items()
                      for e in shares if e.party == q) for q in parties}
    return parties, roster, inbox


def masked_parties(n=3, threshold=2):
    parties, roster, inbox = shared_parties(n, threshold)
    sharers = tuple(parties)
    for q, p in parties.items():
        p.mask(SecureStep(q, sharers=sharers, inbox=inbox[q], range=4.0, bits=20))
    return parties


def unmask_step(party, survivors, confirmed=None):
    """An unmask step for survivors the party confirmed (`confirmed`, else these)."""
    confirmed = survivors if confirmed is None else confirmed
    return SecureStep(party, survivors=survivors, confirmed=confirmed)


def test_a_coordinator_asking_for_both_secrets_of_one_party_is_refused():
    """Asking party 1 to reveal for survivors {1, 2, 3} (self-mask seed shares) and then for
    {1, 2} (party 3's mask key share) would hand over both of party 3's secrets."""
    party = masked_parties()[1]
    party.confirm(SecureStep(1, survivors=(1, 2, 3)))
    first = party.unmask(unmask_step(1, (1, 2, 3)))
    assert all(r.self_mask_seed and not r.mask_key for r in first)
    with pytest.raises(ProtocolViolation, match="both secrets"):
        party.unmask(unmask_step(1, (1, 2)))
    assert party.unmask(unmask_step(1, (1, 2, 3))) == first  # asked again: same


def test_a_party_unmasks_only_for_the_survivors_it_confirmed():
    """The consistency check on the party's side: one set confirmed per round, and the
    unmask step must name it."""
    party = masked_parties()[1]
    with pytest.raises(ProtocolViolation, match="confirmed"):
        party.unmask(unmask_step(1, (1, 2, 3)))  # never confirmed
    assert party.confirm(SecureStep(1, survivors=(1, 2, 3))) == b""  # no identity
    with pytest.raises(ProtocolViolation, match="confirmed already"):
        party.confirm(SecureStep(1, survivors=(1, 2)))
    with pytest.raises(ProtocolViolation, match="this party confirmed"):
        party.unmask(unmask_step(1, (1, 2), confirmed=(1, 2)))
    with pytest.raises(ProtocolViolation, match="not the confirmed ones"):
        party.unmask(unmask_step(1, (1, 2), confirmed=(1, 2, 3)))


@pytest.mark.parametrize("survivors, why", [
    ((2, 3), "leave out this party"),
    ((1, 2, 4), "never shared"),
    ((1,), "fewer than the threshold"),
])
def test_a_party_refuses_survivor_sets_the_protocol_forbids(survivors, why):
    party = masked_parties()[1]
    with pytest.raises(ProtocolViolation, match=why):
        party.unmask(SecureStep(1, survivors=survivors))


def test_a_party_refuses_rosters_inboxes_and_thresholds_that_would_weaken_it():
    parties, roster, inbox = shared_parties()
    stranger = SecureParty(4, 0, [np.ones(10, np.float32)], 1.0, 0.1)
    with pytest.raises(ProtocolViolation, match="roster"):
        stranger.share(SecureStep(1, threshold=2, roster=roster))
    with pytest.raises(ProtocolViolation, match="threshold"):
        stranger.share(SecureStep(1, threshold=1, roster=(stranger.keys, roster[1])))
    with pytest.raises(ProtocolViolation, match="every other sharer"):
        parties[1].mask(SecureStep(1, sharers=(1, 2, 3), inbox=inbox[1][:1], range=4.0,
                                   bits=20))
    forged = tuple(EncryptedShare(e.party, e.ciphertext[:-1] + b"\0") for e in inbox[1])
    with pytest.raises(InvalidArgument, match="do not decrypt"):
        parties[1].mask(SecureStep(1, sharers=(1, 2, 3), inbox=forged, range=4.0, bits=20))
    with pytest.raises(ProtocolViolation, match="before it sent"):
        parties[2].unmask(SecureStep(2, survivors=(1, 2, 3)))


def test_the_coordinator_refuses_malformed_keys_shares_and_reveals():
    secure = SecureSum(1, {1: 1.0, 2: 1.0, 3: 1.0}, 11, 0.6, 4.0, 0.0, 5.0, 0.0)
    parties = {q: SecureParty(1, q - 1, [np.ones(10)], 1.0, 0.1) for q in (1, 2, 3)}
    bad = dataclasses.replace(parties[1].keys, mask_key=b"short")
    with pytest.raises(InvalidArgument, match="32 raw bytes"):
        secure.advertise(bad)
    with pytest.raises(InvalidArgument, match="not in round"):
        secure.advertise(dataclasses.replace(parties[1].keys, party=9))
    secure.advertise(parties[1].keys)
    with pytest.raises(InvalidArgument, match="another party's"):
        secure.advertise(dataclasses.replace(parties[1].keys, party=2))
    with pytest.raises(FailedPrecondition, match="advertise phase"):
        secure.share(1, [])
    for q in (2, 3):
        secure.advertise(parties[q].keys)
    secure.advance(0.0)
    _, step = secure.step_for(1)
    shares = parties[1].share(step)
    with pytest.raises(InvalidArgument, match="one for each"):
        secure.share(1, shares[:1])
    with pytest.raises(InvalidArgument, match="bytes"):
        secure.share(1, [EncryptedShare(e.party, e.ciphertext[:10]) for e in shares])
    assert secure.phase is Phase.SHARE and secure.parties[1].shares is None  # nothing kept


def test_nobody_revealing_abandons_the_round():
    secure, _, _ = run_protocol(rng_inputs(3, 10), [1.0] * 3, drop_before_reveal={1, 2, 3})
    assert secure.phase is Phase.ABANDONED and secure.result is None


def test_a_reveal_of_both_secrets_for_one_party_is_refused_by_the_coordinator():
    inputs = rng_inputs(3, 10)
    secure = SecureSum(9, {1: 1.0, 2: 1.0, 3: 1.0}, 11, 0.6, 4.0, 0.0, 5.0, 0.0)
    parties = {q: SecureParty(9, q - 1, [inputs[q - 1]], 1.0, 0.1) for q in (1, 2, 3)}
    for p in parties.values():
        secure.advertise(p.keys)
    secure.advance(0.0)
    for q, p in parties.items():
        secure.share(q, p.share(secure.step_for(q)[1]))
    secure.advance(0.0)
    for q, p in parties.items():
        secure.mask(q, p.mask(secure.step_for(q)[1]))
    secure.advance(0.0)
    for q, p in parties.items():
        secure.confirm(q, p.confirm(secure.step_for(q)[1]))
    secure.advance(0.0)
    shares = parties[1].unmask(secure.step_for(1)[1])
    both = [RevealedShare(s.party, s.self_mask_seed, bytes(32)) for s in shares]
    with pytest.raises(InvalidArgument, match="alone"):
        secure.reveal(1, both)
    with pytest.raises(InvalidArgument, match="not in round"):
        secure.reveal(7, shares)
    assert secure.parties[1].revealed is None


# -- the federation, in process ---------------------------------------------------------------
class PartyDriver:
    """Workers that follow the protocol through any CoordinatorPort (the in-process
    federation, or a gRPC client of a coordinator process), each with a fixed update, until
    round 1 is over; a worker in `drop` stays silent from the named action on."""

    def __init__(self, port, n, *, drop=None, seed=0):
        rng = np.random.default_rng(seed)
        self.port = port
        joined = [port.join(f"w{i}", "/CPU:0") for i in range(n)]
        self.ids = [j.worker_id for j in joined]
        self.updates = {w: [rng.uniform(-1, 1, s.shape).astype(np.float32)
                            for s in joined[0].task.update_specs] for w in self.ids}
        self.drop = {self.ids[i]: action for i, action in (drop or {}).items()}
        self.parties, self.metas, self.weights = {}, {}, {}
        self.actions = {w: [] for w in self.ids}

    def run(self, timeout_s=60.0, tick=None, wait_s=0.0):
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            busy = False
            for w in self.ids:
                a = self.port.assignment(w, wait_s)
                if a.action in (Action.WAIT, Action.STOP) or a.round != 1:
                    continue
                busy = True
                self.actions[w].append(a.action)
                if self.drop.get(w) == a.action:
                    continue
                self._act(w, a)
            if tick is not None:
                tick()
            if self.port.status().round > 1:
                return
            if not busy:
                time.sleep(0.02)
        raise AssertionError("round 1 did not close")

    def _act(self, w, a):
        if a.action is Action.TRAIN:
            party = SecureParty(a.round, a.unit, self.updates[w], len(a.client_ids), 1.0)
            self.parties[w] = party
            self.weights[w] = len(a.client_ids)
            self.metas[w] = UpdateMeta(w, a.round, a.version, a.unit, a.client_ids,
                                       len(a.client_ids), len(a.client_ids))
            self.port.deliver(KeysAdvert(w, a.round, a.unit, party.keys))
        elif a.action is Action.SHARE_KEYS:
            self.port.deliver(KeyShares(w, a.round, a.unit, self.parties[w].share(a.secure)))
        elif a.action is Action.MASK:
            self.port.push(self.metas[w], [self.parties[w].mask(a.secure)])
        elif a.action is Action.CONFIRM:
            self.port.deliver(SurvivorsConfirmed(w, a.round, a.unit,
                                                 self.parties[w].confirm(a.secure)))
        elif a.action is Action.UNMASK:
            self.port.deliver(SharesRevealed(w, a.round, a.unit,
                                             self.parties[w].unmask(a.secure)))


def secure_federation(parties=3, **options):
    store = synthetic_store(n_train=180, n_clients=6)
    config = FederationConfig(rounds=2, units=parties, min_workers=parties,
                              secure_aggregation=True, server_optimizer="sgd", server_lr=1.0,
                              secagg_timeout_s=5.0, secagg_range=4.0, **options)
    now = [0.0]
    fed = Federation(config, tiny_model(), store.summary.client_sizes, clock=lambda: now[0])
    return fed, now


def expected_weights(before, driver, survivors):
    """SGD(1) on the weighted mean: w - (sum of the survivors' updates) / their weight."""
    weight = sum(driver.weights[w] for w in survivors)
    sums = [sum(driver.updates[w][i].astype(np.float64) for w in survivors)
            for i in range(len(before))]
    return [b - s / weight for b, s in zip(before, sums)]


@pytest.mark.parametrize("drop, survivors", [
    ({}, [0, 1, 2]),
    ({1: Action.MASK}, [0, 2]),  # drops after sharing: its pairwise masks are recovered
    ({2: Action.UNMASK}, [0, 1, 2]),  # drops after uploading: still in the sum
], ids=["all", "drop-after-sharing", "drop-after-upload"])
def test_a_federation_steps_on_the_secure_sum_of_its_survivors(drop, survivors):
    fed, now = secure_federation()
    before = [w.copy() for w in fed.server.model.get_weights()]
    driver = PartyDriver(fed, 3, drop=drop)

    def tick():
        now[0] += 0.5
        fed.check_deadline()

    driver.run(timeout_s=30, tick=tick)
    expected = expected_weights(before, driver, [driver.ids[i] for i in survivors])
    for got, want in zip(fed.server.model.get_weights(), expected):
        np.testing.assert_allclose(got, want, atol=1e-5)
    row = fed.reports.last_metrics
    assert row["secagg_dropped"] == (1 if drop.get(1) is Action.MASK else 0)
    assert row["secagg_abandoned"] == 0


def test_a_federation_with_a_sparse_graph_steps_on_the_survivors_sum():
    """SecAgg+ through the coordinator's port: 6 parties of 2 neighbours each, one dropping
    after sharing."""
    fed, now = secure_federation(parties=6, secagg_neighbours=2)
    before = [w.copy() for w in fed.server.model.get_weights()]
    driver = PartyDriver(fed, 6, drop={3: Action.MASK})

    def tick():
        now[0] += 0.5
        fed.check_deadline()

    driver.run(timeout_s=30, tick=tick)
    assert [len(p._roster) for p in driver.parties.values()] == [3] * 6  # itself and 2
    expected = expected_weights(before, driver, [driver.ids[i] for i in (0, 1, 2, 4, 5)])
    for got, want in zip(fed.server.model.get_weights(), expected):
        np.testing.assert_allclose(got, want, atol=1e-4)


def test_a_federation_below_the_threshold_abandons_the_round_and_keeps_its_model():
    fed, now = secure_federation()
    before = [w.copy() for w in fed.server.model.get_weights()]
    version = fed.server.version
    driver = PartyDriver(fed, 3, drop={0: Action.MASK, 1: Action.MASK})

    def tick():
        now[0] += 0.5
        fed.check_deadline()

    driver.run(timeout_s=30, tick=tick)
    assert fed.server.version == version
    for got, want in zip(fed.server.model.get_weights(), before):
        np.testing.assert_array_equal(got, want)
    assert all(Action.UNMASK not in acts for acts in driver.actions.values())
    assert fed.reports.last_metrics["secagg_abandoned"] == 1


def test_an_update_in_the_clear_is_refused_under_secure_aggregation():
    fed, _ = secure_federation()
    w = [fed.join(f"w{i}", "/CPU:0").worker_id for i in range(3)][0]
    a = fed.assignment(w, 0)
    assert a.action is Action.TRAIN
    meta = UpdateMeta(w, a.round, a.version, a.unit, a.client_ids, len(a.client_ids), 1)
    with pytest.raises(InvalidArgument, match="masked input"):
        fed.push(meta, [np.zeros(s.shape, np.float32) for s in fed.task.update_specs])
    with pytest.raises(FailedPrecondition, match="advertise phase, not mask"):
        fed.push(meta, [np.zeros(10, np.uint32)])


def test_secure_aggregation_refuses_what_it_cannot_sum():
    for bad in (dict(aggregator="median"), dict(mode="fedbuff"), dict(update_encoding="int8"),
                dict(dp_clip=1.0, dp_noise_multiplier=1.0, dp_target_quantile=0.5)):
        with pytest.raises(ValueError, match="secure aggregation"):
            FederationConfig(secure_aggregation=True, **bad)


# -- over real gRPC, between processes --------------------------------------------------------
@pytest.fixture
def coordinator_process(tmp_path):
    procs = []

    def start(*args):
        pool, pool_addr = start_service(tmp_path, "datapool", "--data-format", "arrays",
                                        "--data", str(arrays_file(tmp_path)), "--clients", "6",
                                        "--partitioner", "iid")
        coord, addr = start_service(
            tmp_path, "coordinator", "--datapool", pool_addr, "--model", "2nn",
            "--secure-aggregation", "--units", "3",
            "--min-workers", "3", "--rounds", "2", "--server-optimizer", "sgd",
            "--server-lr", "1", "--secagg-timeout-s", "2", "--secagg-range", "4", *args)
        procs.extend([coord, pool])
        return CoordinatorClient(addr)

    yield start
    stop(*procs)


def round_one_row(client, timeout_s=30.0):
    """Round 1's metrics as `status` reports them, once its report was handled."""
    deadline = time.monotonic() + timeout_s
    while (row := client.status().last_metrics).get("round") != 1:
        assert time.monotonic() < deadline, row
        time.sleep(0.05)
    return row


@pytest.mark.parametrize("drop, survivors", [
    ({1: Action.MASK}, [0, 2]),
    ({0: Action.UNMASK}, [0, 1, 2]),
], ids=["drop-after-sharing", "drop-after-upload"])
def test_over_grpc_a_coordinator_process_recovers_dropped_parties(coordinator_process,
                                                                    tmp_path, drop, survivors):
    client = coordinator_process()
    probe = client.join("probe", "/CPU:0").worker_id  # reads the weights, takes no work
    before = client.pull_weights(probe, 0).arrays
    driver = PartyDriver(client, 3, drop=drop)
    driver.run(timeout_s=90, wait_s=0.02)
    after = client.pull_weights(probe, 0).arrays
    trainable = expected_weights(before, driver, [driver.ids[i] for i in survivors])
    for got, want in zip(after, trainable):
        np.testing.assert_allclose(got, want, atol=1e-4)
    row = round_one_row(client)
    assert row["secagg_dropped"] == (1 if 1 in drop else 0)
    client.close()


def test_over_grpc_below_the_threshold_nothing_is_revealed_and_the_model_stays(
        coordinator_process, tmp_path):
    client = coordinator_process()
    driver = PartyDriver(client, 3, drop={0: Action.SHARE_KEYS, 1: Action.SHARE_KEYS})
    version = client.status().version
    driver.run(timeout_s=90, wait_s=0.02)
    assert client.status().version == version
    assert all(Action.UNMASK not in acts and Action.MASK not in acts
               for acts in driver.actions.values())
    assert round_one_row(client)["secagg_abandoned"] == 1
    client.close()


# -- SecAgg+: a sparse graph of neighbours --------------------------------------------------------
@pytest.mark.parametrize("n, k", [(10, 4), (16, 6)])
def test_a_sparse_graph_sums_exactly_with_parties_dropping_at_each_phase(n, k):
    """Each party shares with and masks against its k neighbours only; a party dropped
    after sharing is unmasked by its neighbours, and the sum is the survivors' sum."""
    inputs = rng_inputs(n)
    secure, _, _ = run_protocol(inputs, [1.0] * n, neighbours=k, drop_before_mask={2},
                                drop_before_reveal={5})
    assert secure.phase is Phase.DONE, secure.failure
    assert all(len(g) == k + 1 for g in secure.graph.values())
    assert all(len(secure.parties[q].shares) == k for q in secure.sharers)
    assert secure.threshold == threshold_for(k + 1, 0.6) and 2 * secure.threshold > k + 1
    survivors = [q for q in range(1, n + 1) if q != 2]
    assert secure.result.survivors == tuple(survivors) and secure.result.dropped == (2,)
    plain = np.sum([inputs[q - 1].astype(np.float64) for q in survivors], axis=0)
    assert np.max(np.abs(secure.result.total - plain)) <= n * secure.fixed_point.step / 2


def test_the_graph_is_fixed_by_the_roster_keys_and_symmetric():
    from fedstream.coordinator.secure_sum import neighbourhoods

    keys = [PartyKeys(q, bytes([q]) * 32, bytes([q + 100]) * 32) for q in range(1, 21)]
    graph = neighbourhoods(tuple(range(1, 21)), keys, 6)
    assert graph == neighbourhoods(tuple(range(1, 21)), keys, 6)
    assert all(q in graph[p] for p in graph for q in graph[p])  # u ~ v iff v ~ u
    other = neighbourhoods(tuple(range(1, 21)), keys[::-1], 6)
    assert other != graph  # another set of keys, another permutation
    assert neighbourhoods((1, 2, 3), keys[:3], 6) == {q: (1, 2, 3) for q in (1, 2, 3)}
