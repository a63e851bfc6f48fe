"""The DHT record validator of the hivemind transport: only a subkey's owner can write under it."""

from __future__ import annotations

import os
import random
import time

import msgpack
import pytest

pytest.importorskip("hivemind")

from hivemind.dht.node import DHTID  # noqa: E402
from hivemind.dht.validation import DHTRecord  # noqa: E402
from hivemind.utils.serializer import MSGPackSerializer  # noqa: E402

from swarm.identity import Identity  # noqa: E402
from swarm.transport.hivemind import SignedSubkeyValidator, _signed_bytes  # noqa: E402

KEY = DHTID.generate(source="sapo/test/w/1").to_bytes()
META = MSGPackSerializer.dumps([7, 100, b"\x01" * 32, 1.0])


def _record(subkey, value=META, key=KEY, expiration=None):
    return DHTRecord(key, MSGPackSerializer.dumps(subkey), value, expiration or time.time() + 60)


def _signed(ident, subkey, **kw):
    rec = _record(subkey, **kw)
    return DHTRecord(rec.key, rec.subkey, SignedSubkeyValidator(ident).sign_value(rec), rec.expiration_time)


def test_owner_signed_record_is_accepted_and_stripped():
    alice = Identity.generate()
    rec = _signed(alice, f"{alice.peer_id}/7")
    v = SignedSubkeyValidator()
    assert v.validate(rec)
    assert v.strip_value(rec) == META


def test_record_under_another_peers_subkey_is_rejected():
    alice, mallory = Identity.generate(), Identity.generate()
    subkey = f"{alice.peer_id}/7"
    rec = _record(subkey)
    # Mallory signs correctly, but with her own key, under Alice's subkey.
    forged_value = msgpack.packb([rec.value, mallory.sign(_signed_bytes(rec, rec.value))], use_bin_type=True)
    forged = DHTRecord(rec.key, rec.subkey, forged_value, rec.expiration_time)
    v = SignedSubkeyValidator()
    assert not v.validate(forged)
    assert v.rejected == 1
    with pytest.raises(ValueError):
        SignedSubkeyValidator(mallory).sign_value(rec)  # our own node refuses to sign for someone else


def test_any_change_to_a_signed_record_breaks_it():
    alice = Identity.generate()
    rec = _signed(alice, f"{alice.peer_id}/7")
    inner, sig = msgpack.unpackb(rec.value)
    v = SignedSubkeyValidator()
    variants = [
        DHTRecord(DHTID.generate(source="sapo/other/w/1").to_bytes(), rec.subkey, rec.value, rec.expiration_time),
        DHTRecord(rec.key, MSGPackSerializer.dumps(f"{alice.peer_id}/8"), rec.value, rec.expiration_time),
        DHTRecord(rec.key, rec.subkey, msgpack.packb([inner + b"x", sig]), rec.expiration_time),
        DHTRecord(rec.key, rec.subkey, rec.value, rec.expiration_time + 1000),
        DHTRecord(rec.key, rec.subkey, msgpack.packb([inner, sig[:-1] + bytes([sig[-1] ^ 1])]), rec.expiration_time),
    ]
    assert [v.validate(r) for r in variants] == [False] * len(variants)


def test_hostile_input_is_rejected_without_raising():
    alice = Identity.generate()
    rng = random.Random(0)
    good = _signed(alice, f"{alice.peer_id}/7")
    hostile = [
        _record(f"{alice.peer_id}/7", value=os.urandom(64)),
        _record("not-a-peer/7"),
        _record(f"{alice.peer_id}"),
        _record(f"{alice.peer_id}/x"),
        _record(12345),
        _record(None),
        DHTRecord(KEY, b"\xc1", good.value, good.expiration_time),  # 0xc1: never valid msgpack
        DHTRecord(KEY, good.subkey, msgpack.packb([1, 2]), good.expiration_time),
        DHTRecord(KEY, good.subkey, msgpack.packb([b"a", b"b", b"c"]), good.expiration_time),
        DHTRecord(KEY, good.subkey, b"\x00" * 100_000, good.expiration_time),
        DHTRecord(KEY, good.subkey, good.value, float("nan")),
        DHTRecord(KEY, good.subkey, good.value, time.time() + 10**9),
        DHTRecord(KEY, good.subkey, None, good.expiration_time),
    ]
    hostile += [DHTRecord(KEY, rng.randbytes(rng.randrange(0, 80)), rng.randbytes(rng.randrange(0, 300)),
                          time.time() + 60) for _ in range(300)]
    v = SignedSubkeyValidator()
    assert not any(v.validate(r) for r in hostile)
    assert v.rejected == len(hostile)


@pytest.mark.slow
def test_forged_record_stored_by_a_hostile_dht_node_is_never_delivered():
    """A raw DHTNode without our validator writes under Alice's subkey; honest nodes neither store nor deliver it."""
    import asyncio
    import threading

    from hivemind.dht.node import DHTNode

    from node.config import HivemindTransportConfig
    from swarm.transport.hivemind import HivemindTransport

    cfg = HivemindTransportConfig(poll_interval_s=0.1)
    alice = HivemindTransport(cfg, Identity.generate(), "forge", [])
    alice.start()
    bob = HivemindTransport(cfg, Identity.generate(), "forge", alice.addresses())
    try:
        bob.start()

        async def forge():
            mallory = await DHTNode.create(initial_peers=alice.addresses(), host_maddrs=["/ip4/127.0.0.1/tcp/0"])
            try:
                now = time.time()
                key = alice._window_key(alice._window(now))
                meta = [999, 4, b"\x00" * 32, now]
                fake_sig = msgpack.packb([MSGPackSerializer.dumps(meta), b"\x00" * 64], use_bin_type=True)
                stored.append(await mallory.store(key, fake_sig, now + 60, subkey=f"{alice.peer_id}/999"))
                await asyncio.sleep(3)  # stay up and answer Bob's polls with the forged entry
            finally:
                await mallory.shutdown()

        stored = []
        hostile = threading.Thread(target=asyncio.run, args=(forge(),))
        hostile.start()
        alice.publish(b"real")
        deadline = time.time() + 5
        got = []
        while time.time() < deadline and not got:
            got += bob.incoming()
            time.sleep(0.05)
        time.sleep(1.0)  # several more polls: the forged entry must still not show up
        got += bob.incoming()
        assert [(r.payload, r.sender) for r in got] == [(b"real", alice.peer_id)]
        hostile.join(30)
        assert stored, "the hostile node did not get to store"
        assert alice.validator.rejected + bob.validator.rejected >= 1
    finally:
        bob.stop()
        alice.stop()


def test_delivered_record_memory_is_bounded_against_sybil_floods(monkeypatch):
    """Index entries from many fresh keys: the 'already delivered' set stays at SEEN_MAX, oldest forgotten first,
    and every new record is still delivered once (with its pushed body, no fetch needed)."""
    import hashlib

    from node.config import HivemindTransportConfig
    from swarm.transport import hivemind as hm

    monkeypatch.setattr(hm, "SEEN_MAX", 50)
    t = hm.HivemindTransport(HivemindTransportConfig(), Identity.generate(), "s", [])
    sybils = [Identity.generate().peer_id for _ in range(4)]
    entries = []
    for seq in range(60):
        body = f"rollout {seq}".encode()
        entries.append((f"{sybils[seq % 4]}/{seq}", [seq, len(body), hashlib.sha256(body).digest(), 1.0], body))
    assert sum(t._on_index(*e) for e in entries) == 60
    assert len(t._seen) == 50 and (sybils[0], 0) not in t._seen and (sybils[3], 59) in t._seen
    assert [r.payload for r in t.incoming()] == [e[2] for e in entries]
    assert sum(t._on_index(*e) for e in entries[-50:]) == 0  # the remembered ones are not delivered twice
