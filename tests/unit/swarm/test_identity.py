import os
import stat

import pytest

from swarm.identity import Identity, IdentityError, load, load_or_create, peer_id_from_public, public_from_peer_id


def test_created_once_with_0600_and_reused(tmp_path):
    path = tmp_path / "sub" / "identity.key"
    a, created = load_or_create(path)
    assert created and stat.S_IMODE(path.stat().st_mode) == 0o600
    b, created_again = load_or_create(path)
    assert not created_again and b.peer_id == a.peer_id


def test_peer_id_is_libp2p_ed25519_form():
    ident = Identity.generate()
    assert ident.peer_id.startswith("12D3KooW")
    assert public_from_peer_id(ident.peer_id) == ident.public_bytes
    assert peer_id_from_public(ident.public_bytes) == ident.peer_id
    assert public_from_peer_id("QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N") is None  # not Ed25519
    assert public_from_peer_id("not base58 0OIl") is None


def test_sign_verify():
    a, b = Identity.generate(), Identity.generate()
    sig = a.sign(b"data")
    assert Identity.verify(a.public_bytes, sig, b"data")
    assert not Identity.verify(b.public_bytes, sig, b"data")
    assert not Identity.verify(a.public_bytes, sig, b"datA")
    assert not Identity.verify(b"short", sig, b"data")


def test_world_readable_or_corrupt_key_is_refused(tmp_path):
    path = tmp_path / "k"
    load_or_create(path)
    os.chmod(path, 0o644)
    with pytest.raises(IdentityError, match="chmod 600"):
        load(path)
    os.chmod(path, 0o600)
    path.write_bytes(b"short")
    with pytest.raises(IdentityError, match="32-byte"):
        load(path)


def test_libp2p_private_key_layout():
    ident = Identity.generate()
    raw = ident.libp2p_private_key()
    assert raw[:4] == b"\x08\x01\x12\x40" and raw[4:36] == ident.private_bytes and raw[36:] == ident.public_bytes
