"""One round's secure aggregation, the coordinator's side (Bonawitz et al., CCS 2017, against
an honest-but-curious coordinator): it forwards keys and encrypted shares, collects masked
inputs, and learns their sum and nothing else.

The parties are the round's units (party = unit + 1, its Shamir x-coordinate). Four
phases, each closing when every expected party answered, or `timeout_s` after it opened
with at least the threshold; with fewer the round is abandoned: nothing is asked to be
revealed and the model is not touched.
1. advertise: each party's two X25519 public keys; the roster is who advertised. Each
   party's neighbourhood is every roster party (Bonawitz et al.'s complete graph) or, with
   `neighbours` k > 0, itself and k others (SecAgg+, Bell et al., CCS 2020: a Harary graph
   over a permutation of the roster drawn from the hash of its keys), and the threshold t
   is `threshold_for` the neighbourhood's size.
2. share: each party's encrypted shares of its self-mask seed and mask key, one per other
   party of its neighbourhood; the sharers are who sent them (only they are masked against).
3. mask: each sharer's input + self mask + pairwise masks with its neighbour sharers, mod
   2^32; the survivors are whose arrived.
3b. confirm: each survivor signs the survivors it was told (Bonawitz et al.'s consistency
   check); every signature goes to every survivor with its unmask step, and a party with
   peers reveals only for survivors that a threshold of its neighbourhood signed.
4. unmask: each survivor reveals, for every neighbour sharer, its self-mask seed's share (a
   survivor) or its mask key's share (dropped), never both for one party; t of each recover
   the secrets, and the masks come off the sum.
A party's cost grows with its neighbourhood: n with the complete graph, k + 1 with SecAgg+.
"""

from __future__ import annotations

import enum
import hashlib
import logging
import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from fedstream.common import secagg
from fedstream.common.errors import FailedPrecondition, InvalidArgument, PermissionDenied
from fedstream.common.protocol import (
    Confirmation,
    EncryptedShare,
    PartyKeys,
    RevealedShare,
    SecureStep,
)

log = logging.getLogger(__name__)

CIPHERTEXT_BYTES = secagg.NONCE_BYTES + secagg.PLAINTEXT_BYTES + 16  # + the GCM tag
SIGNATURE_BYTES = 64  # Ed25519


class Phase(enum.Enum):
    ADVERTISE = "advertise"
    SHARE = "share"
    MASK = "mask"
    CONFIRM = "confirm"
    UNMASK = "unmask"
    DONE = "done"
    ABANDONED = "abandoned"


@dataclass
class Party:
    weight: float  # the party's clients' weight, public: it scales the fixed point's bound
    keys: PartyKeys | None = None
    shares: dict[int, bytes] | None = None  # recipient -> ciphertext
    masked: np.ndarray | None = None
    confirmation: bytes | None = None  # its signature over the survivors (b"": no identity)
    revealed: dict[int, RevealedShare] | None = None  # owner -> share


def threshold_for(parties: int, fraction: float, colluders: int = 0) -> int:
    """ceil(fraction * parties), at least 2, and above (parties + colluders) / 2: a
    coordinator that tells two groups of honest parties different survivor sets, helped by
    `colluders` parties that answer both, never gathers a threshold of shares of both of one
    party's secrets."""
    return max(2, math.ceil(fraction * parties), (parties + colluders) // 2 + 1)


def neighbourhoods(roster: Sequence[int], keys: Sequence[PartyKeys],
                   neighbours: int) -> dict[int, tuple[int, ...]]:
    """Each roster party's neighbourhood, itself included: everyone (neighbours 0, or at
    least the roster), else a Harary graph, each party joined to the neighbours / 2 nearest
    on either side of a ring. The ring's order is a permutation seeded by SHA-256 of every
    advertised key, fixed once the roster is."""
    n = len(roster)
    if not neighbours or neighbours >= n - 1:
        return {q: tuple(roster) for q in roster}
    digest = hashlib.sha256(b"".join(k.share_key + k.mask_key for k in keys)).digest()
    ring = [roster[i] for i in np.random.default_rng(
        np.frombuffer(digest, np.uint32)).permutation(n)]
    half = neighbours // 2
    return {ring[i]: tuple(sorted({ring[(i + d) % n] for d in range(-half, half + 1)}))
            for i in range(n)}


@dataclass(frozen=True)
class SecureResult:
    """What the coordinator learns: the sum over the survivors, and who they were."""
    total: np.ndarray  # float64, the decoded sum of the survivors' inputs
    loss_sum: float  # the survivors' weighted training loss, summed
    survivors: tuple[int, ...]
    dropped: tuple[int, ...]


@dataclass
class SecureSum:
    round: int
    weights: dict[int, float]  # party -> weight, every unit of the round
    length: int  # ring elements of one input: the update's values, then the weighted loss
    threshold_fraction: float
    value_range: float  # bound on a coordinate of one client's update, per unit of weight
    noise_std: float  # distributed DP: the Skellam noise's deviation any `threshold` parties
    # less the colluders add together (value units; on the ring it is times 2^bits)
    timeout_s: float
    opened_at: float | None  # None: the phase opens at the first `advance`
    bits: int = 0  # fixed-point precision asked for; 0: the most the ring allows
    colluders: int = 0  # parties that may collude with the coordinator (or drop) and still
    # leave the threshold out of reach of equivocation and the others' noise at noise_std
    neighbours: int = 0  # SecAgg+: each party's neighbours (even); 0: every other party
    phase: Phase = Phase.ADVERTISE
    threshold: int = 0
    roster: tuple[int, ...] = ()
    sharers: tuple[int, ...] = ()
    survivors: tuple[int, ...] = ()
    graph: dict[int, tuple[int, ...]] = field(default_factory=dict)  # party -> neighbourhood
    failure: str = ""
    result: SecureResult | None = None
    parties: dict[int, Party] = field(default_factory=dict)

    def __post_init__(self):
        self.parties = {p: Party(w) for p, w in self.weights.items()}

    # -- what each party sends ---------------------------------------------------------------
    def _party(self, party: int, phase: Phase) -> Party:
        if party not in self.parties:
            raise InvalidArgument(f"party {party} is not in round {self.round}'s secure sum")
        if self.phase is not phase:
            raise FailedPrecondition(
                f"round {self.round}'s secure sum is in its {self.phase.value} phase, not "
                f"{phase.value}: drop this message and ask GetAssignment for work")
        return self.parties[party]

    def advertise(self, keys: PartyKeys) -> None:
        p = self._party(keys.party, Phase.ADVERTISE)
        secagg.check_public_key(keys.share_key, "share_key")
        secagg.check_public_key(keys.mask_key, "mask_key")
        if keys.share_key == keys.mask_key:
            raise InvalidArgument("share_key and mask_key must be two different keys")
        if p.keys is not None and p.keys != keys:
            raise FailedPrecondition(f"party {keys.party} already advertised other keys in "
                                     f"round {self.round}")
        taken = {k for q, o in self.parties.items() if q != keys.party and o.keys
                 for k in (o.keys.share_key, o.keys.mask_key)}
        if {keys.share_key, keys.mask_key} & taken:
            raise InvalidArgument("these public keys are another party's: generate fresh ones")
        p.keys = keys

    def share(self, party: int, shares: Sequence[EncryptedShare]) -> None:
        p = self._party(party, Phase.SHARE)
        if party not in self.roster:
            raise PermissionDenied(f"party {party} did not advertise keys in time for round "
                                   f"{self.round}: it takes no part")
        recipients = sorted(s.party for s in shares)
        expected = [q for q in self.graph[party] if q != party]
        if recipients != expected:
            raise InvalidArgument(f"shares for parties {recipients}; the roster asks for one "
                                  f"for each of {expected}")
        bad = [s.party for s in shares if len(s.ciphertext) != CIPHERTEXT_BYTES]
        if bad:
            raise InvalidArgument(f"shares for parties {bad} are not {CIPHERTEXT_BYTES} bytes "
                                  "(nonce, 64 bytes of shares, tag)")
        if p.shares is not None and p.shares != {s.party: s.ciphertext for s in shares}:
            raise FailedPrecondition(f"party {party} already sent other shares")
        p.shares = {s.party: s.ciphertext for s in shares}

    def check_masked(self, party: int, length: int) -> None:
        """What a masked input's header decides."""
        p = self._party(party, Phase.MASK)
        if party not in self.sharers:
            raise PermissionDenied(f"party {party} sent no shares in time for round "
                                   f"{self.round}: its input cannot be unmasked")
        if length != self.length:
            raise InvalidArgument(f"a masked input of {length} values; this task's has "
                                  f"{self.length} (the update's values, then the loss)")
        if p.masked is not None:
            raise FailedPrecondition(f"party {party}'s masked input was already received")

    def mask(self, party: int, masked: np.ndarray) -> None:
        self.check_masked(party, masked.size)
        self.parties[party].masked = np.asarray(masked, dtype=np.uint32).reshape(-1)

    def confirm(self, party: int, signature: bytes) -> None:
        """A survivor's signature over the survivors it was told (kept as sent: the parties
        check them against the signers' identities)."""
        p = self._party(party, Phase.CONFIRM)
        if party not in self.survivors:
            raise PermissionDenied(f"party {party} is not a survivor of round {self.round}")
        if len(signature) not in (0, SIGNATURE_BYTES):
            raise InvalidArgument(f"a confirmation is an Ed25519 signature of "
                                  f"{SIGNATURE_BYTES} bytes (or empty without an identity), "
                                  f"not {len(signature)} bytes")
        if p.confirmation is not None and p.confirmation != signature:
            raise FailedPrecondition(f"party {party} already confirmed with another signature")
        p.confirmation = signature

    def reveal(self, party: int, shares: Sequence[RevealedShare]) -> None:
        p = self._party(party, Phase.UNMASK)
        if party not in self.survivors:
            raise PermissionDenied(f"party {party} is not a survivor of round {self.round}")
        owners = sorted(s.party for s in shares)
        asked = self.near(party, self.sharers)
        if owners != list(asked):
            raise InvalidArgument(f"shares of parties {owners}; one for each sharer "
                                  f"{list(asked)} is asked")
        for s in shares:
            survived = s.party in self.survivors
            wanted, other = ((s.self_mask_seed, s.mask_key) if survived
                             else (s.mask_key, s.self_mask_seed))
            if len(wanted) != secagg.SECRET_BYTES or other:
                raise InvalidArgument(
                    f"party {s.party} {'survived' if survived else 'dropped'}: reveal its "
                    f"{'self_mask_seed' if survived else 'mask_key'} share (32 bytes) alone")
        revealed = {s.party: s for s in shares}
        if p.revealed is not None and p.revealed != revealed:
            raise FailedPrecondition(f"party {party} already revealed other shares")
        p.revealed = revealed

    # -- what each party is asked ------------------------------------------------------------
    def step_for(self, party: int) -> tuple[str, SecureStep] | None:
        """The step `party` has to take now, if any: (action, what it needs)."""
        p = self.parties.get(party)
        if p is None:
            return None
        if self.phase is Phase.SHARE and party in self.roster and p.shares is None:
            roster = tuple(self.parties[q].keys for q in self.graph[party])
            return "share_keys", SecureStep(party, threshold=self.threshold, roster=roster)
        if self.phase is Phase.MASK and party in self.sharers and p.masked is None:
            sharers = self.near(party, self.sharers)
            inbox = tuple(EncryptedShare(q, self.parties[q].shares[party])
                          for q in sharers if q != party)
            return "mask", SecureStep(party, sharers=sharers, inbox=inbox,
                                      range=self.value_range, bits=self.fixed_point.bits,
                                      noise_std=self.party_noise_std)
        if self.phase is Phase.CONFIRM and party in self.survivors and p.confirmation is None:
            return "confirm", SecureStep(party, survivors=self.survivors)
        if self.phase is Phase.UNMASK and party in self.survivors and p.revealed is None:
            confirmations = tuple(Confirmation(q, self.parties[q].confirmation)
                                  for q in self.survivors
                                  if self.parties[q].confirmation is not None)
            return "unmask", SecureStep(party, survivors=self.near(party, self.survivors),
                                        confirmed=self.survivors, confirmations=confirmations)
        return None

    def advertised(self, party: int) -> bool:
        p = self.parties.get(party)
        return p is not None and p.keys is not None

    @property
    def party_noise_std(self) -> float:
        """Each party's share of the noise: any `threshold` survivors, less the `colluders`
        among them who may subtract their own, still sum to `noise_std`."""
        honest = self.threshold - self.colluders
        return self.noise_std / math.sqrt(honest) if honest > 0 else 0.0

    @property
    def fixed_point(self) -> secagg.FixedPoint:
        """Wide enough for every sharer's saturated input (range x weight + 6 noise stds):
        the precision asked for, or less where the ring could not hold the sum."""
        bound = sum(self.value_range * self.parties[q].weight + 6 * self.party_noise_std
                    for q in self.sharers)
        widest = secagg.FixedPoint.for_bound(bound)
        return secagg.FixedPoint(min(self.bits, widest.bits)) if self.bits else widest

    # -- phases --------------------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        return self.phase in (Phase.DONE, Phase.ABANDONED)

    def advance(self, now: float) -> bool:
        """Close every phase that is complete or timed out; True when the phase changed."""
        if self.opened_at is None:
            self.opened_at = now
        before = self.phase
        while not self.closed and self._close_phase(now):
            self.opened_at = now
        return self.phase is not before

    def _close_phase(self, now: float) -> bool:
        timed_out = now - self.opened_at >= self.timeout_s
        if self.phase is Phase.ADVERTISE:
            done = [q for q, p in self.parties.items() if p.keys is not None]
            if len(done) < len(self.parties) and not timed_out:
                return False
            self.roster = tuple(sorted(done))
            self.graph = neighbourhoods(self.roster, [self.parties[q].keys for q in self.roster],
                                        self.neighbours)
            size = min(len(g) for g in self.graph.values()) if self.graph else 0
            self.threshold = threshold_for(size, self.threshold_fraction, self.colluders)
            return self._next(Phase.SHARE, len(done), "advertised keys")
        if self.phase is Phase.SHARE:
            done = [q for q in self.roster if self.parties[q].shares is not None]
            if len(done) < len(self.roster) and not timed_out:
                return False
            self.sharers = tuple(done)
            return self._next(Phase.MASK, len(done), "sent their shares")
        if self.phase is Phase.MASK:
            done = [q for q in self.sharers if self.parties[q].masked is not None]
            if len(done) < len(self.sharers) and not timed_out:
                return False
            self.survivors = tuple(done)
            return self._next(Phase.CONFIRM, len(done), "sent masked inputs")
        if self.phase is Phase.CONFIRM:
            done = [q for q in self.survivors if self.parties[q].confirmation is not None]
            if len(done) < len(self.survivors) and not timed_out:
                return False
            return self._next(Phase.UNMASK, len(done), "confirmed the survivors")
        done = [q for q in self.survivors if self.parties[q].revealed is not None]
        if len(done) < len(self.survivors) and not timed_out:
            return False
        if not self._next(Phase.DONE, len(done), "revealed their shares"):
            return True
        try:
            self.result = unmask(self, done)
        except InvalidArgument as e:
            self.phase, self.failure = Phase.ABANDONED, str(e)
            log.error("round %d's secure sum is abandoned: %s", self.round, e)
        return True

    def _next(self, phase: Phase, count: int, what: str) -> bool:
        if count < max(2, self.threshold):
            self.phase = Phase.ABANDONED
            self.failure = (f"only {count} parties {what} within {self.timeout_s:g} s; the "
                            f"threshold is {max(2, self.threshold)}")
            log.warning("round %d's secure sum is abandoned, nothing revealed: %s", self.round,
                        self.failure)
            return False
        self.phase = phase
        return True

    def near(self, party: int, members: Sequence[int]) -> tuple[int, ...]:
        """Those of `members` in the party's neighbourhood (itself included)."""
        return tuple(q for q in members if q in self.graph[party])


def _revealers(s: SecureSum, owner: int, revealers: Sequence[int]) -> list[int]:
    """`threshold` of the owner's neighbours that revealed its shares."""
    near = [r for r in revealers if r in s.graph[owner]][:s.threshold]
    if len(near) < s.threshold:
        raise InvalidArgument(f"only {len(near)} of party {owner}'s neighbours revealed "
                              f"its shares; {s.threshold} are needed")
    return near


def unmask(s: SecureSum, revealers: Sequence[int]) -> SecureResult:
    """The survivors' sum: their masked inputs, less each survivor's self mask (its seed
    from `threshold` revealers) and each dropped neighbour's pairwise masks (its mask key
    from theirs)."""
    dropped = tuple(q for q in s.sharers if q not in s.survivors)
    if set(dropped) & set(s.survivors):  # the protocol's rule, kept by construction
        raise AssertionError("a party counted as survivor and dropped")
    total = secagg.ring_sum([s.parties[q].masked for q in s.survivors])
    for owner in s.survivors:
        seed = secagg.combine_secret(
            [(r, s.parties[r].revealed[owner].self_mask_seed)
             for r in _revealers(s, owner, revealers)])
        total -= secagg.prg(seed, s.length)
    for owner in dropped:
        key = secagg.combine_secret(
            [(r, s.parties[r].revealed[owner].mask_key)
             for r in _revealers(s, owner, revealers)])
        if secagg.public_key(key) != s.parties[owner].keys.mask_key:
            raise InvalidArgument(f"the shares revealed for dropped party {owner} do not "
                                  "recover the mask key it advertised")
        for q in s.near(owner, s.survivors):
            mask = secagg.prg(secagg.pairwise_seed(key, s.parties[q].keys.mask_key,
                                                   s.round), s.length)
            if q < owner:  # q added +mask(q, owner); owner's -mask never arrived
                total -= mask
            else:
                total += mask
    values = s.fixed_point.decode(total[:-1])
    loss = float(total[-1:].view(np.int32)[0]) / secagg.LOSS_SCALE
    return SecureResult(values, loss, s.survivors, dropped)
