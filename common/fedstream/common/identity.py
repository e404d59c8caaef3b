"""Site identities for secure aggregation against an active coordinator.

A coordinator that may lie could otherwise put keys of its own on a round's roster (as new
parties, or in place of a party's keys) and receive the shares meant for them. Each site's
operator therefore makes an Ed25519 key pair (`fedstream secagg-keygen`), keeps the private
key on the site's workers and hands the public key to the other sites directly, never
through the coordinator: the peers file, one `site = "<hex public key>"` line per site.
Every party signs its advertised keys, bound to the round, its party number and its site;
a party takes part only in a roster whose every entry a known site signed.

Ed25519 comes from `cryptography`; the signed bytes are stated in docs/PROTOCOL.md.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import tomllib

from fedstream.common.errors import InvalidArgument
from fedstream.common.protocol import PartyKeys

_KEYS_CONTEXT = b"fedstream/v1 secagg party keys"
_SURVIVORS_CONTEXT = b"fedstream/v1 secagg survivors"


def signed_bytes(round_number: int, keys: PartyKeys) -> bytes:
    """What a party signs: context, round (u64 BE), party (u32 BE), the site's name (u16 BE
    length, UTF-8), then the share and mask public keys (32 bytes each)."""
    site = keys.site.encode()
    return (_KEYS_CONTEXT + round_number.to_bytes(8, "big") + keys.party.to_bytes(4, "big")
            + len(site).to_bytes(2, "big") + site + keys.share_key + keys.mask_key)


def survivors_bytes(round_number: int, party: int, survivors) -> bytes:
    """What a party signs in the consistency check: context, round (u64 BE), the signing
    party (u32 BE), then the survivors in ascending order (u32 BE each)."""
    return (_SURVIVORS_CONTEXT + round_number.to_bytes(8, "big") + party.to_bytes(4, "big")
            + b"".join(q.to_bytes(4, "big") for q in sorted(survivors)))


def _ed25519():
    from cryptography.hazmat.primitives.asymmetric import ed25519
    return ed25519


@dataclass(frozen=True)
class SiteIdentity:
    """A site's signing key, as its workers hold it."""
    site: str
    private_key: bytes  # raw 32 bytes

    @classmethod
    def load(cls, site: str, path: str | Path) -> "SiteIdentity":
        from cryptography.hazmat.primitives import serialization
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
        if not isinstance(key, _ed25519().Ed25519PrivateKey):
            raise InvalidArgument(f"{path} holds no Ed25519 private key: make one with "
                                  "fedstream secagg-keygen")
        return cls(site, key.private_bytes(serialization.Encoding.Raw,
                                           serialization.PrivateFormat.Raw,
                                           serialization.NoEncryption()))

    def sign(self, round_number: int, keys: PartyKeys) -> PartyKeys:
        """The keys with this site's name and signature."""
        named = PartyKeys(keys.party, keys.share_key, keys.mask_key, site=self.site)
        key = _ed25519().Ed25519PrivateKey.from_private_bytes(self.private_key)
        return PartyKeys(named.party, named.share_key, named.mask_key, site=self.site,
                         signature=key.sign(signed_bytes(round_number, named)))

    def sign_survivors(self, round_number: int, party: int, survivors) -> bytes:
        key = _ed25519().Ed25519PrivateKey.from_private_bytes(self.private_key)
        return key.sign(survivors_bytes(round_number, party, survivors))


class Peers:
    """The sites a party trusts, by name: their Ed25519 public keys (raw 32 bytes)."""

    def __init__(self, keys: Mapping[str, bytes]):
        self.keys = dict(keys)

    @classmethod
    def load(cls, path: str | Path) -> "Peers":
        table = tomllib.loads(Path(path).read_text())
        try:
            keys = {site: bytes.fromhex(hexkey) for site, hexkey in table.items()}
        except (TypeError, ValueError) as e:
            raise InvalidArgument(f"{path}: every line must be site = \"<64 hex digits>\" "
                                  f"({e})") from e
        bad = [site for site, key in keys.items() if len(key) != 32]
        if bad:
            raise InvalidArgument(f"{path}: the keys of {bad} are not 32 bytes")
        return cls(keys)

    def check(self, round_number: int, keys: PartyKeys) -> str | None:
        """Why `keys` are not a known site's for this round; None when they are."""
        public = self.keys.get(keys.site)
        if public is None:
            return f"party {keys.party}'s keys name site {keys.site!r}, not a known peer"
        from cryptography.exceptions import InvalidSignature
        try:
            _ed25519().Ed25519PublicKey.from_public_bytes(public).verify(
                keys.signature, signed_bytes(round_number, keys))
        except InvalidSignature:
            return (f"party {keys.party}'s keys do not carry the signature of site "
                    f"{keys.site!r} for round {round_number}")
        return None

    def signed_survivors(self, round_number: int, keys: PartyKeys, survivors,
                         signature: bytes) -> bool:
        """Whether the party of `keys` (already checked) signed exactly these survivors."""
        from cryptography.exceptions import InvalidSignature
        try:
            _ed25519().Ed25519PublicKey.from_public_bytes(self.keys[keys.site]).verify(
                signature, survivors_bytes(round_number, keys.party, survivors))
        except (InvalidSignature, KeyError, ValueError):
            return False
        return True


def make_identity(site: str, key_path: str | Path, peers_path: str | Path) -> bytes:
    """A fresh Ed25519 key for `site`: the private key to `key_path` (PEM, mode 0600), its
    public key into the peers file (added or replaced). Returns the public key."""
    from cryptography.hazmat.primitives import serialization
    key = _ed25519().Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    public = key.public_key().public_bytes(serialization.Encoding.Raw,
                                           serialization.PublicFormat.Raw)
    peers = Path(peers_path)
    table = tomllib.loads(peers.read_text()) if peers.exists() else {}
    table[site] = public.hex()
    peers.write_text("".join(f'"{name}" = "{value}"\n' for name, value in sorted(table.items())))
    return public
