"""Secure aggregation's primitives (Bonawitz et al., CCS 2017), byte for byte as
docs/PROTOCOL.md states them, so a party in any language can take part.

Every primitive comes from a vetted library: X25519, HKDF-SHA256, AES-256-GCM and the
ChaCha20 keystream from `cryptography`; Shamir secret sharing over GF(2^128) from
`pycryptodome` (16-byte secrets, so a 32-byte secret is shared as two halves at the same
points). The arithmetic of masks is in the ring of 2^32: numpy's uint32 wraps exactly so.
"""

from __future__ import annotations

import math
import os
import struct
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from fedstream.common.errors import FailedPrecondition, InvalidArgument

SECRET_BYTES = 32  # a self-mask seed and an X25519 private key
SHARE_BYTES = 16  # one Shamir share of a 16-byte half
PLAINTEXT_BYTES = 4 * SHARE_BYTES  # self-mask seed's two halves, then the mask key's two
NONCE_BYTES = 12
RING_BITS = 32
MASKED_TENSOR = "masked"  # PushUpdate's one tensor under secure aggregation: uint32 [n + 1]
LOSS_SCALE = 256.0  # the securely summed weighted loss travels as round(loss * 256)
_MASK_INFO = b"fedstream/v1 secagg pairwise mask"
_SHARE_INFO = b"fedstream/v1 secagg share key"
_SHARE_AD = b"fedstream/v1 secagg share"


def _require():
    try:
        from Crypto.Protocol.SecretSharing import Shamir
        from cryptography.hazmat.primitives.asymmetric import x25519
    except ImportError as e:
        raise FailedPrecondition(
            f"secure aggregation needs the `cryptography` and `pycryptodome` packages ({e}): "
            "pip install 'fedstream[secagg]'") from e
    return x25519, Shamir


@dataclass(frozen=True)
class KeyPair:
    private: bytes  # raw 32 bytes
    public: bytes  # raw 32 bytes


def key_pair() -> KeyPair:
    """A fresh X25519 key pair."""
    x25519, _ = _require()
    from cryptography.hazmat.primitives import serialization
    key = x25519.X25519PrivateKey.generate()
    raw = serialization.Encoding.Raw
    return KeyPair(key.private_bytes(raw, serialization.PrivateFormat.Raw,
                                     serialization.NoEncryption()),
                   key.public_key().public_bytes(raw, serialization.PublicFormat.Raw))


def public_key(private: bytes) -> bytes:
    """The raw X25519 public key of a raw private key."""
    x25519, _ = _require()
    from cryptography.hazmat.primitives import serialization
    return x25519.X25519PrivateKey.from_private_bytes(private).public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def check_public_key(key: bytes, what: str) -> None:
    if len(key) != 32:
        raise InvalidArgument(f"{what} holds {len(key)} bytes: an X25519 public key is 32 raw "
                              "bytes")


def _agree(private: bytes, public: bytes, info: bytes, round_number: int) -> bytes:
    """HKDF-SHA256 (no salt, 32 bytes) of the X25519 shared secret, bound to the round."""
    x25519, _ = _require()
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF
    shared = x25519.X25519PrivateKey.from_private_bytes(private).exchange(
        x25519.X25519PublicKey.from_public_bytes(public))
    return HKDF(hashes.SHA256(), 32, None, info + struct.pack("<Q", round_number)).derive(shared)


def pairwise_seed(private: bytes, public: bytes, round_number: int) -> bytes:
    """The mask seed two parties share: each derives it from its mask key and the other's
    public one."""
    return _agree(private, public, _MASK_INFO, round_number)


def prg(seed: bytes, length: int) -> np.ndarray:
    """`length` uint32 values: the ChaCha20 keystream of key `seed`, all-zero 16-byte nonce
    (counter included), read little-endian."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
    encryptor = Cipher(algorithms.ChaCha20(seed, bytes(16)), mode=None).encryptor()
    return np.frombuffer(encryptor.update(bytes(4 * length)), dtype="<u4")


def _share_cipher(private: bytes, public: bytes, round_number: int):
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    return AESGCM(_agree(private, public, _SHARE_INFO, round_number))


def _share_ad(round_number: int, sender: int, recipient: int) -> bytes:
    return _SHARE_AD + struct.pack("<QII", round_number, sender, recipient)


def encrypt_share(private: bytes, recipient_public: bytes, round_number: int, sender: int,
                  recipient: int, plaintext: bytes) -> bytes:
    """nonce (12 random bytes) || AES-256-GCM(plaintext), bound to round, sender and
    recipient, under the key the two parties' share keys agree on."""
    nonce = os.urandom(NONCE_BYTES)
    cipher = _share_cipher(private, recipient_public, round_number)
    return nonce + cipher.encrypt(nonce, plaintext, _share_ad(round_number, sender, recipient))


def decrypt_share(private: bytes, sender_public: bytes, round_number: int, sender: int,
                  recipient: int, ciphertext: bytes) -> bytes:
    from cryptography.exceptions import InvalidTag
    try:
        plaintext = _share_cipher(private, sender_public, round_number).decrypt(
            ciphertext[:NONCE_BYTES], ciphertext[NONCE_BYTES:],
            _share_ad(round_number, sender, recipient))
    except (InvalidTag, ValueError) as e:
        raise InvalidArgument(f"the shares of party {sender} for party {recipient} do not "
                              "decrypt: altered in transit, or sent to the wrong party") from e
    if len(plaintext) != PLAINTEXT_BYTES:
        raise InvalidArgument(f"party {sender}'s shares hold {len(plaintext)} bytes, not "
                              f"{PLAINTEXT_BYTES}")
    return plaintext


def split_secret(secret: bytes, threshold: int, parties: int) -> list[bytes]:
    """Shares of a 32-byte secret for parties 1..`parties` (index i at position i - 1), any
    `threshold` of which recover it: each 16-byte half shared at the same points."""
    _, shamir = _require()
    halves = [shamir.split(threshold, parties, secret[i:i + SHARE_BYTES])
              for i in range(0, SECRET_BYTES, SHARE_BYTES)]
    return [b"".join(h[p][1] for h in halves) for p in range(parties)]


def combine_secret(shares: Sequence[tuple[int, bytes]]) -> bytes:
    """The 32-byte secret from (party index, 32-byte share) pairs: at least the threshold."""
    _, shamir = _require()
    return b"".join(
        shamir.combine([(i, s[h:h + SHARE_BYTES]) for i, s in shares])
        for h in range(0, SECRET_BYTES, SHARE_BYTES))


@dataclass(frozen=True)
class FixedPoint:
    """Reals as round(x * 2^bits) in two's complement mod 2^32. `bits` is the most that keeps
    a sum whose magnitude stays within `bound` inside the ring's signed half."""
    bits: int

    @staticmethod
    def for_bound(bound: float) -> "FixedPoint":
        bits = math.floor(math.log2((2 ** (RING_BITS - 1) - 1) / max(bound, 1e-30)))
        if bits < 1:
            raise InvalidArgument(
                f"a secure sum bounded by {bound:g} leaves no precision in a ring of "
                f"2^{RING_BITS}: lower --secagg-range or the number of units")
        return FixedPoint(bits)

    @property
    def step(self) -> float:
        return 2.0 ** -self.bits

    def encode(self, values: np.ndarray, bound: float) -> tuple[np.ndarray, int]:
        """uint32 ring elements of `values` saturated to [-bound, bound], and how many were
        saturated."""
        x = np.asarray(values, dtype=np.float64)
        saturated = int(np.count_nonzero(np.abs(x) > bound))
        q = np.rint(np.clip(x, -bound, bound) * 2.0 ** self.bits)
        return q.astype(np.int64).astype(np.uint32), saturated

    def decode(self, ring: np.ndarray) -> np.ndarray:
        return ring.astype(np.uint32).view(np.int32).astype(np.float64) * self.step


def skellam_noise(rng: np.random.Generator, variance: float, size: int) -> np.ndarray:
    """Integer noise of the given variance on the fixed point: Poisson(variance / 2) minus
    Poisson(variance / 2), the symmetric Skellam distribution (Agarwal et al., NeurIPS 2021).
    A sum of independent Skellam variables is Skellam again, so the parties' noise adds up
    exactly on the ring, with no rounding after it."""
    lam = variance / 2
    return rng.poisson(lam, size) - rng.poisson(lam, size)


def encode_loss(loss_sum: float) -> np.uint32:
    """The weighted training loss a party adds to its input: round(loss * 256) mod 2^32."""
    return np.int64(round(loss_sum * LOSS_SCALE)).astype(np.uint32)


def ring_sum(vectors: Sequence[np.ndarray]) -> np.ndarray:
    total = np.zeros_like(vectors[0], dtype=np.uint32)
    for v in vectors:
        total += v  # wraps mod 2^32
    return total
