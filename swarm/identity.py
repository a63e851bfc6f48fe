"""A node's identity: one Ed25519 key, created on first run, reused on restart.

The key file holds the 32-byte raw private key (seed), mode 0600. The peer id is the libp2p peer id of the
public key (identity multihash of the protobuf-encoded Ed25519 public key, base58btc: ``12D3KooW...``), so
the same key can be the transport's host identity and peer id == envelope signer.

    ident = load_or_create(Path("~/.config/sapo-swarm/identity.key").expanduser())
    sig = ident.sign(b"bytes"); Identity.verify(ident.public_bytes, sig, b"bytes") -> True
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import base58
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

# libp2p crypto.proto: PublicKey { KeyType Type = 1; bytes Data = 2; } with Ed25519 = 1.
_PB_ED25519_PUB = b"\x08\x01\x12\x20"
_PB_ED25519_PRIV = b"\x08\x01\x12\x40"


class IdentityError(ValueError):
    """The key file is unreadable, malformed or too widely readable."""


def peer_id_from_public(public_bytes: bytes) -> str:
    """libp2p peer id of a raw 32-byte Ed25519 public key (identity multihash, base58btc)."""
    if len(public_bytes) != 32:
        raise ValueError("an Ed25519 public key is 32 bytes")
    proto = _PB_ED25519_PUB + public_bytes
    return base58.b58encode(b"\x00" + bytes([len(proto)]) + proto).decode()


def public_from_peer_id(peer_id: str) -> bytes | None:
    """The raw public key inside an Ed25519 peer id, or None if ``peer_id`` is not one."""
    try:
        raw = base58.b58decode(peer_id)
    except ValueError:
        return None
    if len(raw) != 2 + 36 or raw[:2] != b"\x00\x24" or raw[2:6] != _PB_ED25519_PUB:
        return None
    return raw[6:]


class Identity:
    def __init__(self, private_key: Ed25519PrivateKey):
        self.private_key = private_key
        self.public_bytes = private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        self.peer_id = peer_id_from_public(self.public_bytes)

    @classmethod
    def generate(cls) -> "Identity":
        return cls(Ed25519PrivateKey.generate())

    @property
    def private_bytes(self) -> bytes:
        """The 32-byte seed."""
        return self.private_key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                              serialization.NoEncryption())

    def libp2p_private_key(self) -> bytes:
        """The key marshalled as libp2p's crypto.proto PrivateKey (Ed25519: seed || public), e.g. for p2pd -id."""
        return _PB_ED25519_PRIV + self.private_bytes + self.public_bytes

    def sign(self, data: bytes) -> bytes:
        return self.private_key.sign(data)

    @staticmethod
    def verify(public_bytes: bytes, signature: bytes, data: bytes) -> bool:
        """True iff ``signature`` is ``public_bytes``' Ed25519 signature of ``data``; never raises."""
        try:
            Ed25519PublicKey.from_public_bytes(bytes(public_bytes)).verify(bytes(signature), bytes(data))
            return True
        except (InvalidSignature, ValueError, TypeError):
            return False


def save(identity: Identity, path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, identity.private_bytes)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def load(path: Path) -> Identity:
    path = Path(path)
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise IdentityError(f"identity key {path} is readable by others (mode {mode:o}); run: chmod 600 {path}")
    raw = path.read_bytes()
    if len(raw) != 32:
        raise IdentityError(f"identity key {path} is not a 32-byte Ed25519 key ({len(raw)} bytes); "
                            "move it away and let the node create a new one, or run `sapo keygen --force`")
    return Identity(Ed25519PrivateKey.from_private_bytes(raw))


def load_or_create(path: Path) -> tuple[Identity, bool]:
    """Return ``(identity, created)``: the key at ``path``, or a new one saved there with mode 0600."""
    path = Path(path)
    if path.exists():
        return load(path), False
    ident = Identity.generate()
    save(ident, path)
    return ident, True
