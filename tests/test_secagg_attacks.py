"""Secure aggregation tried by a coordinator that lies (Bonawitz et al.'s active server):
it equivocates about who survived, puts keys of its own on the roster, or asks for a
threshold too low. Each test is the attack, driven against real parties, and passes only
when the attack fails: the coordinator never holds both secrets of an honest party."""

import re

import numpy as np
import pytest

from fedstream.common import secagg
from fedstream.common.identity import Peers, SiteIdentity, make_identity
from fedstream.common.protocol import Confirmation, EncryptedShare, PartyKeys, SecureStep
from fedstream.worker.secure_party import PartyTrust, ProtocolViolation, SecureParty

ROUND = 7


def identities(tmp_path, names):
    tmp_path.mkdir(exist_ok=True)
    peers = tmp_path / "peers.toml"
    for name in names:
        make_identity(name, tmp_path / f"{name}.key", peers)
    return ({name: SiteIdentity.load(name, tmp_path / f"{name}.key") for name in names},
            Peers.load(peers))


def parties_of(n, trust=lambda q: PartyTrust()):
    return {q: SecureParty(ROUND, q - 1, [np.full(8, float(q), np.float32)], 1.0, 0.1,
                           trust(q)) for q in range(1, n + 1)}


def run_to_unmask(parties, threshold):
    """Share and mask honestly, as far as the coordinator forwards what it got."""
    roster = tuple(p.keys for p in parties.values())
    sent = {q: p.share(SecureStep(q, threshold=threshold, roster=roster))
            for q, p in parties.items()}
    sharers = tuple(parties)
    for q, p in parties.items():
        inbox = tuple(EncryptedShare(s, e.ciphertext) for s, shares in sent.items()
                      for e in shares if e.party == q)
        p.mask(SecureStep(q, sharers=sharers, inbox=inbox, range=16.0, bits=16))


def equivocate(parties, victim, told_survived, told_dropped):
    """Tell one group the victim survived (they reveal shares of its self-mask seed) and
    the other that it dropped (shares of its mask key), from the consistency check on;
    collect what comes back."""
    everyone = tuple(parties)
    dropped = tuple(q for q in everyone if q != victim)
    told = {**{q: everyone for q in told_survived}, **{q: dropped for q in told_dropped}}
    signed = {q: Confirmation(q, parties[q].confirm(SecureStep(q, survivors=s)))
              for q, s in told.items()}
    seeds, keys = [], []
    for q, survivors in told.items():
        revealed = parties[q].unmask(SecureStep(
            q, survivors=survivors, confirmed=survivors,
            confirmations=tuple(c for p, c in signed.items() if told[p] == survivors)))
        if q in told_survived:
            seeds += [(q, r.self_mask_seed) for r in revealed if r.party == victim]
        else:
            keys += [(q, r.mask_key) for r in revealed if r.party == victim]
    return seeds, keys


def test_a_threshold_at_or_below_half_the_roster_is_refused():
    """With t = 2 of 5, telling {1, 2, 3} that party 1 survived and {4, 5} that it dropped
    would give the coordinator t shares of both of party 1's secrets: no party shares
    under such a threshold."""
    parties = parties_of(5)
    roster = tuple(p.keys for p in parties.values())
    for q, p in parties.items():
        with pytest.raises(ProtocolViolation, match="above half"):
            p.share(SecureStep(q, threshold=2, roster=roster))


def test_equivocation_about_a_survivor_never_yields_both_of_its_secrets():
    """At the lowest threshold parties accept (3 of 5), the split that works at 2 leaves the
    coordinator one share short of the victim's mask key: what it combines is not the key,
    so the victim's pairwise masks stay on its input."""
    parties = parties_of(5)
    run_to_unmask(parties, threshold=3)
    victim = parties[1]
    seeds, keys = equivocate(parties, 1, told_survived=(1, 2, 3), told_dropped=(4, 5))
    assert len(seeds) == 3 and len(keys) == 2
    assert secagg.combine_secret(seeds) == victim._seed  # the self-mask seed: yes
    assert secagg.combine_secret(keys) != victim._mask_key.private  # the mask key: never
    for split in [((1, 2), (3, 4, 5)), ((1,), (2, 3, 4, 5))]:  # no other split does better
        fresh = parties_of(5)
        run_to_unmask(fresh, threshold=3)
        seeds, keys = equivocate(fresh, 1, *split)
        assert len(seeds) < 3 or len(keys) < 3


def test_signed_confirmations_stop_an_equivocation_before_anything_is_revealed(tmp_path):
    """With identities the consistency check has teeth: the parties told that party 1
    dropped hold only their own two signatures on that story, fewer than the threshold,
    and refuse to reveal anything; those told the truth hold three and go on."""
    names = {q: f"s{q}" for q in range(1, 6)}
    ids, peers = identities(tmp_path, list(names.values()))
    parties = parties_of(5, lambda q: PartyTrust(ids[names[q]], peers))
    run_to_unmask(parties, threshold=3)
    with pytest.raises(ProtocolViolation, match="2 parties of its neighbourhood signed"):
        equivocate(parties, 1, told_survived=(1, 2, 3), told_dropped=(4, 5))
    fresh = parties_of(5, lambda q: PartyTrust(ids[names[q]], peers))
    run_to_unmask(fresh, threshold=3)
    seeds, keys = equivocate(fresh, 1, told_survived=(1, 2, 3, 4, 5), told_dropped=())
    assert len(seeds) == 5 and keys == []  # the honest story goes through


def test_keys_the_coordinator_substitutes_or_adds_are_refused(tmp_path):
    """With site identities, the coordinator cannot stand in for a party (its keys with the
    party's signature), add a party of its own (unsigned, or signed by a site nobody
    trusts), nor replay a party's keys from an earlier round."""
    ids, peers = identities(tmp_path, ["a", "b", "c"])
    names = {1: "a", 2: "b", 3: "c"}
    parties = parties_of(3, lambda q: PartyTrust(ids[names[q]], peers))
    honest = tuple(p.keys for p in parties.values())
    attacker = secagg.key_pair()
    substituted = (honest[0], PartyKeys(2, attacker.public, honest[1].mask_key, "b",
                                        honest[1].signature), honest[2])
    identities(tmp_path / "x", ["a"])  # another "a", which nobody here trusts
    sybil_signed = SiteIdentity.load("a", tmp_path / "x" / "a.key").sign(
        ROUND, PartyKeys(4, attacker.public, secagg.key_pair().public))
    replayed = SecureParty(ROUND - 1, 1, [np.zeros(8, np.float32)], 1.0, 0.1,
                           PartyTrust(ids["b"], peers)).keys
    attacks = {
        "signature of site 'b' for round 7": substituted,
        "not a known peer": (*honest, PartyKeys(4, attacker.public, secagg.key_pair().public)),
        "signature of site 'a'": (*honest, sybil_signed),
        "party 2's keys do not carry the signature": (honest[0], replayed, honest[2]),
    }
    for why, roster in attacks.items():
        with pytest.raises(ProtocolViolation, match=why):
            parties[1].share(SecureStep(1, threshold=3, roster=roster))
    assert parties[1].share(SecureStep(1, threshold=2, roster=honest))  # the honest roster


def test_a_roster_smaller_than_the_party_allows_is_refused():
    """A coordinator that leaves every other honest party off the roster would learn one
    party's input from the sum with its colluders': a party may insist on a minimum."""
    parties = parties_of(2, lambda q: PartyTrust(min_parties=3))
    roster = tuple(p.keys for p in parties.values())
    with pytest.raises(ProtocolViolation, match="fewer than the 3"):
        parties[1].share(SecureStep(1, threshold=2, roster=roster))


def test_keygen_writes_a_private_key_only_its_owner_reads(tmp_path):
    public = make_identity("hospital-a", tmp_path / "a.key", tmp_path / "peers.toml")
    assert (tmp_path / "a.key").stat().st_mode & 0o777 == 0o600
    assert Peers.load(tmp_path / "peers.toml").keys == {"hospital-a": public}
    with pytest.raises(FileExistsError):
        make_identity("hospital-a", tmp_path / "a.key", tmp_path / "peers.toml")


# -- over real gRPC: worker processes against a coordinator that lies --------------------------
PARTIES = 5


class LyingCoordinator:
    """The real coordinator, with its secure sum rewritten by an attacker in the middle of
    its own process: round 1 puts an attacker's key in place of party 2's, round 2 asks for
    a threshold of 2 of 5, round 3 tells parties 4 and 5 that party 1 dropped (from the
    consistency check on) while 1, 2 and 3 hear that it survived, and keeps every share any
    party reveals."""

    def __init__(self, monkeypatch):
        from fedstream.coordinator.secure_sum import SecureSum
        self.revealed: dict[int, list] = {}
        attacker = secagg.key_pair().public
        honest_step_for, honest_reveal = SecureSum.step_for, SecureSum.reveal
        lying = self

        def step_for(secure, party):
            step = honest_step_for(secure, party)
            if step is None:
                return None
            action, s = step
            if action == "share_keys" and secure.round == 1 and party != 2:
                roster = tuple(PartyKeys(2, attacker, k.mask_key, k.site, k.signature)
                               if k.party == 2 else k for k in s.roster)
                return action, SecureStep(party, threshold=s.threshold, roster=roster)
            if action == "share_keys" and secure.round == 2:
                return action, SecureStep(party, threshold=2, roster=s.roster)
            without_1 = tuple(q for q in s.survivors if q != 1)
            if action == "confirm" and secure.round == 3 and party in (4, 5):
                return action, SecureStep(party, survivors=without_1)
            if action == "unmask" and secure.round == 3 and party in (4, 5):
                return action, SecureStep(party, survivors=without_1, confirmed=without_1,
                                          confirmations=s.confirmations)
            return step

        def reveal(secure, party, shares):
            if secure.round == 3:
                lying.revealed[party] = list(shares)
            return honest_reveal(secure, party, shares)

        monkeypatch.setattr(SecureSum, "step_for", step_for)
        monkeypatch.setattr(SecureSum, "reveal", reveal)


@pytest.mark.e2e
def test_over_grpc_worker_processes_give_a_lying_coordinator_nothing(tmp_path, serve,
                                                                     monkeypatch):
    import threading

    from fedstream.coordinator.config import FederationConfig
    from fedstream.coordinator.federation import Federation
    from fedstream.coordinator.server import SERVICE_NAME
    from fedstream.coordinator.servicer import CoordinatorServicer
    from fedstream.v1 import coordinator_pb2_grpc

    from conftest import arrays_file, start_service, start_worker, stop, tiny_model

    names = [f"w{q}" for q in range(1, PARTIES + 1)]
    identities(tmp_path, names)
    lying = LyingCoordinator(monkeypatch)
    config = FederationConfig(rounds=3, units=PARTIES, min_workers=PARTIES,
                              secure_aggregation=True, server_optimizer="sgd", server_lr=1.0,
                              secagg_timeout_s=3.0, secagg_range=4.0)
    rows = []
    fed = Federation(config, tiny_model(), [20] * 10, on_metrics=rows.append)
    server = serve(lambda s: coordinator_pb2_grpc.add_CoordinatorServicer_to_server(
        CoordinatorServicer(fed), s), [SERVICE_NAME])
    ticking = threading.Event()

    def tick():
        while not ticking.wait(0.1):
            fed.check_deadline()

    threading.Thread(target=tick, daemon=True).start()
    pool, pool_addr = start_service(tmp_path, "datapool", "--data-format", "arrays", "--data",
                                    str(arrays_file(tmp_path)), "--clients", "10",
                                    "--partitioner", "iid")
    workers = [start_worker(tmp_path, f"127.0.0.1:{server.port}", pool_addr, name,
                            "--secagg-identity", str(tmp_path / f"{name}.key"),
                            "--secagg-peers", str(tmp_path / "peers.toml"))
               for name in names]
    try:
        assert fed.wait_until_done(timeout_s=240), fed.status()
    finally:
        ticking.set()
        stop(*workers, pool)
    logs = "".join((tmp_path / f"{name}.log").read_text() for name in names)
    assert [r["secagg_abandoned"] for r in rows] == [1, 1, 0]
    substituted = re.findall(r"party 2's keys do not carry the signature of site 'w\d' for "
                             r"round 1", logs)
    assert len(substituted) == PARTIES - 1  # every party but party 2 itself refused
    assert logs.count("threshold 2 for 5 parties") == PARTIES
    seed_shares = [r for shares in lying.revealed.values() for r in shares
                   if r.party == 1 and r.self_mask_seed]
    key_shares = [r for shares in lying.revealed.values() for r in shares
                  if r.party == 1 and r.mask_key]
    assert len(seed_shares) == 3 and key_shares == []  # 4 and 5 refused to reveal at all
    assert len(re.findall(r"2 parties of its neighbourhood signed the survivors, fewer than "
                          r"the threshold 3", logs)) == 2
