"""The bounded inbox between a transport's event loop and the node."""

from __future__ import annotations

import threading

from swarm.transport.base import Inbox, TransportStats


def _inbox(**kw) -> tuple[Inbox, TransportStats]:
    stats = TransportStats()
    return Inbox(threading.Lock(), stats, **kw), stats


def test_drain_returns_in_arrival_order_and_respects_max_items():
    inbox, stats = _inbox()
    for i in range(5):
        inbox.put(bytes([i]) * 3, f"peer{i}")
    first = inbox.drain(2)
    assert [r.payload for r in first] == [b"\x00" * 3, b"\x01" * 3]
    assert [r.sender for r in first] == ["peer0", "peer1"]
    assert all(r.received_at > 0 for r in first)
    assert [r.payload[0] for r in inbox.drain()] == [2, 3, 4]
    assert inbox.drain() == [] and len(inbox) == 0
    assert (stats.messages_in, stats.bytes_in, stats.errors) == (5, 15, {})


def test_a_flood_past_the_item_cap_drops_the_oldest_and_counts_them():
    inbox, stats = _inbox(max_items=100)
    for i in range(250):
        inbox.put(i.to_bytes(2, "big"), "flooder")
    kept = inbox.drain()
    assert len(kept) == 100
    assert [int.from_bytes(r.payload, "big") for r in kept] == list(range(150, 250))
    assert stats.errors == {"inbox_overflow": 150}
    assert stats.messages_in == 250  # arrivals are still counted


def test_the_byte_cap_bounds_memory_but_always_keeps_the_newest_payload():
    inbox, stats = _inbox(max_bytes=1000)
    for _ in range(10):
        inbox.put(b"x" * 300, "p")
    assert len(inbox) == 3 and stats.errors["inbox_overflow"] == 7
    inbox.put(b"y" * 5000, "p")  # alone over the cap: kept, everything older dropped
    kept = inbox.drain()
    assert [r.payload[:1] for r in kept] == [b"y"]
    inbox.put(b"z" * 900, "p")  # the byte count went back to zero with the drain
    assert len(inbox) == 1


def test_concurrent_producers_and_a_consumer_lose_nothing_under_the_cap():
    inbox, stats = _inbox()
    got: list[bytes] = []
    done = threading.Event()

    def consume():
        while not done.is_set() or len(inbox):
            got.extend(r.payload for r in inbox.drain(50))

    consumer = threading.Thread(target=consume)
    consumer.start()
    producers = [threading.Thread(target=lambda k=k: [inbox.put(f"{k}:{i}".encode(), str(k)) for i in range(2000)])
                 for k in range(4)]
    for t in producers:
        t.start()
    for t in producers:
        t.join()
    done.set()
    consumer.join()
    assert sorted(got) == sorted(f"{k}:{i}".encode() for k in range(4) for i in range(2000))
    assert stats.errors == {}
