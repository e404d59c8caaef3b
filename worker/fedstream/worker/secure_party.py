"""A secure-aggregation party, the worker's side: one unit's update in one round, hidden
from the coordinator behind masks that cancel only in the sum (Bonawitz et al., CCS 2017).

The party holds three secrets: its self-mask seed, its mask key and its share key. It gives
the coordinator only public keys, shares encrypted to other parties, and its masked input,
and it checks every request against the protocol's safety rules before answering, so that a
coordinator deviating from the protocol learns nothing it could not learn by following it:
- it reveals once per round, for one set of survivors: for each sharer either the share
  of its self-mask seed (a survivor) or of its mask key (dropped), never both;
- it reveals nothing for a set of survivors smaller than the threshold, or one that leaves
  it out (it sent its input), or names parties that never shared;
- it shares only with a roster that holds its own keys and at least `min_parties` parties,
  under a threshold of at least 2 and above half the roster: a coordinator that tells two
  groups different survivor sets cannot then gather a threshold of both secrets of a party;
- with a site identity and peers (`identity`), every roster entry must carry a known site's
  signature over its keys for this round: a coordinator cannot put keys of its own on the
  roster, as new parties or in place of a party's keys.
"""

from __future__ import annotations

import logging
import os
import secrets
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from fedstream.common import secagg
from fedstream.common.errors import FedstreamError
from fedstream.common.identity import Peers, SiteIdentity
from fedstream.common.protocol import (
    EncryptedShare,
    PartyKeys,
    RevealedShare,
    SecureStep,
    UpdateMeta,
)

log = logging.getLogger(__name__)


class ProtocolViolation(FedstreamError):
    """The coordinator asked for something the protocol forbids: the party does not answer."""


@dataclass(frozen=True)
class PartyTrust:
    """Whom a party trusts: the site identity it signs its keys with, the peers whose
    signatures it requires on every roster entry (None: unsigned rosters are accepted,
    which covers an honest-but-curious coordinator only), and the fewest parties it will
    share with."""
    identity: SiteIdentity | None = None
    peers: Peers | None = None
    min_parties: int = 2


UNSIGNED = PartyTrust()  # the honest-but-curious coordinator's protocol


class SecureParty:
    def __init__(self, round_number: int, unit: int, values: Sequence[np.ndarray],
                 weight: float, loss: float, trust: PartyTrust = UNSIGNED):
        self.round, self.party = round_number, unit + 1
        self._input = np.concatenate([np.asarray(v, np.float64).reshape(-1) for v in values])
        self.weight = weight
        self._loss_sum = loss * weight
        self._share_key, self._mask_key = secagg.key_pair(), secagg.key_pair()
        self._seed = os.urandom(secagg.SECRET_BYTES)
        self._trust = trust
        self.keys = PartyKeys(self.party, self._share_key.public, self._mask_key.public)
        if trust.identity is not None:
            self.keys = trust.identity.sign(round_number, self.keys)
        self._roster: dict[int, PartyKeys] = {}
        self._threshold = 0
        self._sent: list[EncryptedShare] | None = None
        self._own_shares = b""
        self._sharers: tuple[int, ...] = ()
        self._held: dict[int, bytes] = {}  # owner -> its 64 bytes of shares for this party
        self._masked: np.ndarray | None = None
        self._revealed_for: tuple[int, ...] | None = None
        self._confirmed: tuple[int, ...] | None = None
        self.saturated = 0

    def _refuse(self, why: str):
        raise ProtocolViolation(f"round {self.round}, party {self.party}: {why}; refusing")

    def share(self, step: SecureStep) -> list[EncryptedShare]:
        """Shares of the self-mask seed and the mask key for every roster party, each
        encrypted to its share key; the party's own are kept."""
        if self._sent is not None:
            return self._sent
        roster = {k.party: k for k in step.roster}
        if len(roster) != len(step.roster) or roster.get(self.party) != self.keys:
            self._refuse("the roster names a party twice or does not hold this party's keys")
        if not 2 <= step.threshold <= len(roster) or 2 * step.threshold <= len(roster):
            self._refuse(f"threshold {step.threshold} for {len(roster)} parties (at least 2 "
                         "and above half of them)")
        if len(roster) < self._trust.min_parties:
            self._refuse(f"a roster of {len(roster)} parties, fewer than the "
                         f"{self._trust.min_parties} this party shares with")
        for k in roster.values():
            secagg.check_public_key(k.share_key, f"party {k.party}'s share key")
            secagg.check_public_key(k.mask_key, f"party {k.party}'s mask key")
            unknown = (None if self._trust.peers is None
                       else self._trust.peers.check(self.round, k))
            if unknown:
                self._refuse(unknown)
        points = max(roster)
        seeds = secagg.split_secret(self._seed, step.threshold, points)
        keys = secagg.split_secret(self._mask_key.private, step.threshold, points)
        sent = []
        for q in sorted(roster):
            plaintext = seeds[q - 1] + keys[q - 1]
            if q == self.party:
                self._own_shares = plaintext
                continue
            sent.append(EncryptedShare(q, secagg.encrypt_share(
                self._share_key.private, roster[q].share_key, self.round, self.party, q,
                plaintext)))
        self._roster, self._threshold, self._sent = roster, step.threshold, sent
        return sent

    def mask(self, step: SecureStep) -> np.ndarray:
        """The input in fixed point (with distributed DP noise), plus the self mask, plus a
        pairwise mask for every other sharer (+ toward larger parties, - toward smaller)."""
        if self._masked is not None:
            return self._masked
        sharers = tuple(sorted(set(step.sharers)))
        if self._sent is None or self.party not in sharers or not set(sharers) <= set(self._roster):
            self._refuse("asked to mask before sharing, or against parties off the roster")
        if len(sharers) < self._threshold:
            self._refuse(f"{len(sharers)} sharers, fewer than the threshold {self._threshold}")
        senders = sorted(e.party for e in step.inbox)
        if senders != [q for q in sharers if q != self.party]:
            self._refuse(f"shares from {senders}; every other sharer's is needed to help "
                         "unmask")
        held = {self.party: self._own_shares}
        for e in step.inbox:
            held[e.party] = secagg.decrypt_share(self._share_key.private,
                                                 self._roster[e.party].share_key, self.round,
                                                 e.party, self.party, e.ciphertext)
        fixed = secagg.FixedPoint(step.bits)
        encoded, self.saturated = fixed.encode(self._input, step.range * self.weight)
        if step.noise_std > 0:  # secret noise: the coordinator must not be able to remove it
            rng = np.random.default_rng(secrets.randbits(128))
            variance = (step.noise_std * 2.0 ** step.bits) ** 2  # on the fixed point's integers
            encoded += secagg.skellam_noise(rng, variance, encoded.size).astype(np.uint32)
        if self.saturated:
            log.warning("round %d, party %d: %d values beyond --secagg-range saturated",
                        self.round, self.party, self.saturated)
        loss = 0.0 if step.noise_std > 0 else self._loss_sum  # under DP the loss stays here
        masked = np.append(encoded, secagg.encode_loss(loss)).astype(np.uint32)
        masked += secagg.prg(self._seed, masked.size)
        for q in sharers:
            if q == self.party:
                continue
            mask = secagg.prg(secagg.pairwise_seed(self._mask_key.private,
                                                   self._roster[q].mask_key, self.round),
                              masked.size)
            if self.party < q:
                masked += mask
            else:
                masked -= mask
        self._sharers, self._held, self._masked = sharers, held, masked
        return masked

    def confirm(self, step: SecureStep) -> bytes:
        """The consistency check: sign the round's survivors as told (an empty signature
        without an identity); a party confirms one set of survivors per round."""
        survivors = tuple(sorted(set(step.survivors)))
        if self._masked is None or self.party not in survivors:
            self._refuse("asked to confirm survivors before sending its input, or survivors "
                         "that leave it out")
        if self._confirmed is not None and survivors != self._confirmed:
            self._refuse(f"survivors {list(self._confirmed)} were confirmed already")
        self._confirmed = survivors
        identity = self._trust.identity
        return b"" if identity is None else identity.sign_survivors(self.round, self.party,
                                                                    survivors)

    def _check_confirmations(self, step: SecureStep) -> None:
        """Unmask only for the survivors this party confirmed, and, with peers, only when a
        threshold of its neighbourhood signed exactly them: a coordinator that told parties
        different survivors cannot gather a threshold of signatures on two sets."""
        confirmed = tuple(sorted(set(step.confirmed)))
        if self._confirmed is None or confirmed != self._confirmed:
            self._refuse(f"asked to unmask for survivors {list(confirmed)}; this party "
                         f"confirmed {list(self._confirmed or ())}")
        local = tuple(q for q in confirmed if q in self._sharers)
        if tuple(sorted(set(step.survivors))) != local:
            self._refuse("the survivors to unmask are not the confirmed ones among its "
                         "sharers")
        peers = self._trust.peers
        if peers is None:
            return
        signers = {c.party for c in step.confirmations if c.party in self._roster
                   and peers.signed_survivors(self.round, self._roster[c.party], confirmed,
                                              c.signature)}
        if len(signers) < self._threshold:
            self._refuse(f"{len(signers)} parties of its neighbourhood signed the survivors, "
                         f"fewer than the threshold {self._threshold}")

    def unmask(self, step: SecureStep) -> list[RevealedShare]:
        """For every sharer, the share of its self-mask seed (it survived) or of its mask key
        (it dropped): once per round, for the survivors it confirmed."""
        survivors = tuple(sorted(set(step.survivors)))
        if self._revealed_for is not None and survivors != self._revealed_for:
            self._refuse(f"shares were revealed for survivors {list(self._revealed_for)}; "
                         f"revealing for {list(survivors)} too would give both secrets of "
                         "a party")
        if self._masked is None:
            self._refuse("asked to unmask before it sent its masked input")
        if self.party not in survivors or not set(survivors) <= set(self._sharers):
            self._refuse("the survivors leave out this party, which sent its input, or name "
                         "parties that never shared")
        if len(survivors) < self._threshold:
            self._refuse(f"{len(survivors)} survivors, fewer than the threshold "
                         f"{self._threshold}: the round must be abandoned")
        self._check_confirmations(step)
        self._revealed_for = survivors
        half = secagg.SECRET_BYTES
        return [RevealedShare(q, self_mask_seed=self._held[q][:half]) if q in survivors
                else RevealedShare(q, mask_key=self._held[q][half:])
                for q in self._sharers]


class SecureParties:
    """The parties a worker holds, by (round, unit), each with the header its masked input
    will carry; an older round's are forgotten (their secrets with them) once a newer
    round's party is made."""

    def __init__(self):
        self._parties: dict[tuple[int, int], tuple[SecureParty, UpdateMeta]] = {}

    def add(self, party: SecureParty, meta: UpdateMeta) -> None:
        self._parties = {k: p for k, p in self._parties.items() if k[0] >= party.round}
        self._parties[(party.round, party.party - 1)] = (party, meta)

    def get(self, round_number: int, unit: int) -> tuple[SecureParty, UpdateMeta] | None:
        return self._parties.get((round_number, unit))

    def drop(self, round_number: int, unit: int) -> None:
        """A party that refused: it takes no further step."""
        self._parties.pop((round_number, unit), None)
