import hashlib
import os

import msgpack
import pytest

from swarm.transport.libp2p_frames import FRAME_OVERHEAD, FrameError, Reassembler, parse, split


@pytest.mark.parametrize("size", [0, 1, 58_976, 58_977, 1_048_576])
def test_split_then_reassemble_in_any_order(size):
    payload = os.urandom(size)
    frames = split(payload, 60_000)
    assert all(len(f) <= 60_000 - FRAME_OVERHEAD + 100 for f in frames)
    r = Reassembler()
    out = [r.add("A", f) for f in reversed(frames)]
    assert out[-1] == payload and all(x is None for x in out[:-1])
    assert r.pending_bytes == 0


def test_chunks_are_keyed_by_author():
    frames = split(os.urandom(200_000), 60_000, msg_id=b"m" * 16)
    r = Reassembler()
    assert r.add("A", frames[0]) is None
    assert r.add("B", frames[1]) is None  # B's chunk does not complete A's message
    for f in frames[1:]:
        out = r.add("A", f)
    assert out is not None and r.add("B", frames[0]) is None


@pytest.mark.parametrize("frame", [b"", b"\xff\x00garbage", msgpack.packb([1, b"x", 0, 1, 1, b"d", b"c"]),
                                   msgpack.packb([1, b"m" * 16, 5, 2, 10, b"d" * 32, b"c"]),
                                   msgpack.packb([1, b"m" * 16, 0, 1, 10 ** 12, b"d" * 32, b"c"])])
def test_malformed_frames_are_rejected_without_other_exceptions(frame):
    with pytest.raises(FrameError):
        Reassembler().add("A", frame)


def test_digest_mismatch_and_inconsistent_siblings_are_rejected():
    payload = os.urandom(1000)
    (f,) = split(payload, 60_000)
    obj = msgpack.unpackb(f)
    obj[6] = b"x" * 1000
    with pytest.raises(FrameError, match="digest_mismatch"):
        Reassembler().add("A", msgpack.packb(obj))
    frames = split(os.urandom(150_000), 60_000, msg_id=b"k" * 16)
    other = split(os.urandom(150_000), 60_000, msg_id=b"k" * 16)
    r = Reassembler()
    r.add("A", frames[0])
    with pytest.raises(FrameError, match="inconsistent"):
        r.add("A", other[1])
    assert r.pending_bytes == 0


def test_memory_author_backlog_and_timeout_bounds():
    r = Reassembler(max_pending_bytes=150_000, max_partial_per_author=2, timeout_s=5)
    firsts = [split(os.urandom(200_000), 60_000)[0] for _ in range(3)]
    r.add("A", firsts[0], now=0)
    r.add("A", firsts[1], now=0)
    with pytest.raises(FrameError, match="author_backlog"):
        r.add("A", firsts[2], now=0)
    r.add("B", split(os.urandom(200_000), 60_000)[0], now=1)  # over 150 KB: the oldest partial goes
    assert r.pending_bytes <= 150_000 and r.dropped["memory"] == 1
    assert r.expire(now=100) == 2 and r.pending_bytes == 0


def test_a_replayed_message_is_not_delivered_twice():
    frames = split(b"hello", 60_000)
    r = Reassembler()
    assert r.add("A", frames[0]) == b"hello"
    with pytest.raises(FrameError, match="duplicate"):
        r.add("A", frames[0])
    assert hashlib.sha256(b"hello").digest() == parse(frames[0])[4]
