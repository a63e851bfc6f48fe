"""Flood a real receiver (Admission + ExternalPool + Reputation) and show that its state stays bounded.

    python scripts/bench_flood.py [--n 100000] [--seed 0]

The receiver is wired as ``SwarmExchange`` wires it (one ``Reputation`` shared by admission and pool; default
``AdmissionConfig``, ``PoolConfig``, ``ReputationConfig``; the node's own task config only). Simulated time
advances 1 ms per envelope (100k envelopes = 100 s), and every component reads that clock. The flood, drawn
per envelope with a seeded RNG:

    30% valid       honest peers (2,000 keys), each well under its rate limit, groups with a reward spread
    10% flooder     one key sending valid envelopes far over its rate limit
    10% sybil       valid envelopes, each from a fresh key (the worst case for per-peer caches)
     5% lazy        valid envelopes whose completions all score 0 (20 keys)
     5% poison      false reward claims (20 keys)
    10% garbage     random bytes from 50 authenticated transport senders
     5% garbage     random bytes, no transport sender
     5% forged      an honest peer's key claimed, signed by an attacker, no transport sender
     5% duplicate   a previously sent valid payload, again
     5% replay      an honest peer's seq reused with another body
     5% stale/swarm an honest peer's old or other-swarm envelope, no transport sender
     5% hostile     zstd bombs (64 MiB: declared; streamed with a small and a large window), 100,000-deep
                    nesting, 4 million empty arrays (176 bytes, and padded to 17 KB to pass the ratio cap)

At 1k, 10k and 100k envelopes (and every 10x after) it prints the size of every piece of receiver state
(deep ``sys.getsizeof``, each structure on its own) and the process's peak RSS; at the end, the CPU time per
envelope by outcome (``time.process_time_ns`` around ``admit`` only; payload generation is not counted) and
the share of admission CPU spent on rejected traffic. ``pool.add`` is timed separately.
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import msgspec  # noqa: E402
import zstandard  # noqa: E402

from node.config import AdmissionConfig, PoolConfig, ReputationConfig  # noqa: E402
from node.rollout import Completion, RolloutGroup  # noqa: E402
from node.tasks import TaskRef, canonical_config, resolve  # noqa: E402
from swarm.admission import Admission  # noqa: E402
from swarm.envelope import canonical_bytes, encode, envelope_from_group  # noqa: E402
from swarm.identity import Identity  # noqa: E402
from swarm.reputation import Reputation  # noqa: E402
from swarm.sampler import ExternalPool  # noqa: E402

SWARM = "flood"
T0 = 1_700_000_000.0
CONFIG = {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1, "operators": ["+", "-"],
          "allow_parentheses": False, "allow_negation": False}
MIX = [("valid", 30), ("flooder", 10), ("sybil", 10), ("lazy", 5), ("poison", 5), ("garbage_auth", 10),
       ("garbage_anon", 5), ("forged", 5), ("duplicate", 5), ("replay", 5), ("stale_swarm", 5), ("hostile", 5)]


class SimClock:
    def __init__(self, t: float):
        self.t = t

    def __call__(self) -> float:
        return self.t


def deep_size(obj, seen: set | None = None) -> int:
    """Bytes of ``obj`` and everything it references (each object once)."""
    seen = set() if seen is None else seen
    stack, total = [obj], 0
    while stack:
        o = stack.pop()
        if id(o) in seen or o is None or isinstance(o, (bool, type)):
            continue
        seen.add(id(o))
        total += sys.getsizeof(o)
        if isinstance(o, dict):
            stack.extend(o.keys())
            stack.extend(o.values())
        elif isinstance(o, (list, tuple, set, frozenset)):
            stack.extend(o)
        elif hasattr(o, "__dict__") and not callable(o):
            stack.append(vars(o))
        elif hasattr(o, "__slots__"):
            stack.extend(getattr(o, s) for s in o.__slots__ if hasattr(o, s))
    return total


class Flood:
    def __init__(self, seed: int):
        self.rng = random.Random(seed)
        self.clock = SimClock(T0)
        self.receiver = Identity.generate()
        self.reputation = Reputation(ReputationConfig(), clock=self.clock)
        self.admission = Admission(AdmissionConfig(), SWARM, self.receiver.peer_id,
                                   {("reasoning_gym", "basic_arithmetic")}, lambda t: t.question + "\n",
                                   clock=self.clock,
                                   own_configs={("reasoning_gym", "basic_arithmetic", canonical_config(CONFIG))},
                                   reputation=self.reputation)
        self.pool = ExternalPool(PoolConfig(), clock=self.clock, reputation=self.reputation)
        self.tasks = [resolve(TaskRef.make("reasoning_gym", "basic_arithmetic", CONFIG, 5, k)) for k in range(64)]
        self.honest = [Identity.generate() for _ in range(2000)]
        self.flooder = Identity.generate()
        self.lazy = [Identity.generate() for _ in range(20)]
        self.poisoners = [Identity.generate() for _ in range(20)]
        self.attackers = [Identity.generate().peer_id for _ in range(50)]
        self.forger = Identity.generate()
        self.seq: dict[str, int] = defaultdict(int)
        self.sent_valid: list[bytes] = []
        zeros = bytes(64 << 20)
        deep = b"\x91" * 100_000 + b"\xc0"
        body4m = b"\x81\xa8logprobs\xdd" + (4_000_000).to_bytes(4, "big") + b"\x90" * 4_000_000
        small_window = zstandard.ZstdCompressionParameters.from_level(3, window_log=17, write_content_size=0)
        padded4m = b"\x82\xa1a" + msgspec.msgpack.encode(os.urandom(17_000)) + body4m[1:]  # passes the ratio cap
        self.hostile = [
            zstandard.ZstdCompressor().compress(zeros),
            zstandard.ZstdCompressor(write_content_size=False).compress(zeros),
            zstandard.ZstdCompressor(compression_params=small_window).compress(zeros),
            zstandard.ZstdCompressor().compress(msgspec.msgpack.encode((b"\x82\xa1v\x01\xa1x" + deep, bytes(64)))),
            zstandard.ZstdCompressor().compress(msgspec.msgpack.encode((body4m, bytes(64)))),
            zstandard.ZstdCompressor().compress(msgspec.msgpack.encode((padded4m, bytes(64)))),
        ]
        self.cpu_ns: dict[str, list[int]] = defaultdict(list)
        self.pool_ns: list[int] = []

    # Payloads -------------------------------------------------------------------------------------------

    def group(self, kind: str = "good") -> RolloutGroup:
        task = self.tasks[self.rng.randrange(len(self.tasks))]
        if kind == "good":
            texts = [f"<answer>{task.answer}</answer>", "<answer>x</answer>", "so the sum is", f"<answer>{task.answer}"]
            rewards = [1.0, 0.0, 0.0, 0.0]
        elif kind == "zero":
            texts, rewards = ["<answer>x</answer>"] * 4, [0.0] * 4
        else:  # poison: wrong answers claimed correct
            texts, rewards = ["<answer>-99</answer>"] * 4, [1.0] * 4
        return RolloutGroup(task=task, prompt="", completions=[Completion(t, finished=True) for t in texts],
                            rewards=rewards, model_id="flood")

    def signed(self, ident: Identity, kind: str = "good", seq: int | None = None, **env_kw) -> bytes:
        if seq is None:
            self.seq[ident.peer_id] += 1
            seq = self.seq[ident.peer_id]
        env = envelope_from_group(self.group(kind), env_kw.pop("swarm", SWARM), ident, seq,
                                  now=env_kw.pop("now", self.clock.t))
        return encode(env, ident)

    def next_payload(self, kind: str) -> tuple[bytes, str | None]:
        rng = self.rng
        if kind == "valid":
            ident = self.honest[rng.randrange(len(self.honest))]
            p = self.signed(ident)
            self.sent_valid.append(p)
            if len(self.sent_valid) > 10_000:
                self.sent_valid = self.sent_valid[-5_000:]
            return p, ident.peer_id
        if kind == "flooder":
            return self.signed(self.flooder), self.flooder.peer_id
        if kind == "sybil":
            ident = Identity.generate()
            return self.signed(ident), ident.peer_id
        if kind == "lazy":
            ident = self.lazy[rng.randrange(len(self.lazy))]
            return self.signed(ident, "zero"), ident.peer_id
        if kind == "poison":
            ident = self.poisoners[rng.randrange(len(self.poisoners))]
            return self.signed(ident, "poison"), ident.peer_id
        if kind == "garbage_auth":
            return os.urandom(rng.randint(1, 4096)), self.attackers[rng.randrange(len(self.attackers))]
        if kind == "garbage_anon":
            return os.urandom(rng.randint(1, 4096)), None
        if kind == "forged":
            victim = self.honest[rng.randrange(len(self.honest))]
            env = envelope_from_group(self.group(), SWARM, victim, 10**9 + rng.randrange(10**9), now=self.clock.t)
            body = canonical_bytes(env)
            return zstandard.ZstdCompressor().compress(msgspec.msgpack.encode((body, self.forger.sign(body)))), None
        if kind == "duplicate" and self.sent_valid:
            return self.sent_valid[rng.randrange(len(self.sent_valid))], None
        if kind == "replay":
            ident = self.honest[rng.randrange(len(self.honest))]
            seq = self.seq[ident.peer_id]
            if seq:
                return self.signed(ident, seq=seq), ident.peer_id  # same seq, another body
            return self.signed(ident), ident.peer_id
        if kind == "stale_swarm":
            ident = self.honest[rng.randrange(len(self.honest))]
            if rng.random() < 0.5:
                return self.signed(ident, now=self.clock.t - 10_000), None
            return self.signed(ident, swarm="another-swarm"), None
        return self.hostile[rng.randrange(len(self.hostile))], None

    # The run --------------------------------------------------------------------------------------------

    def step(self, kind: str) -> None:
        payload, sender = self.next_payload(kind)
        t = time.process_time_ns()
        group = self.admission.admit(payload, sender)
        dt = time.process_time_ns() - t
        if group is None:
            before = getattr(self, "_rejected", {})
            now = self.admission.stats()["rejected"]
            reason = next(r for r in now if now[r] != before.get(r, 0))
            self._rejected = dict(now)
        else:
            reason = "admitted"
            t = time.process_time_ns()
            self.pool.add(group)
            self.pool_ns.append(time.process_time_ns() - t)
        self.cpu_ns[reason].append(dt)
        self.clock.t += 0.001

    def state(self) -> list[tuple[str, int, int]]:
        a, rep, pool = self.admission, self.reputation, self.pool
        seqs = sum(len(s) for s in a._seqs.values())
        return [
            ("pool groups", len(pool), deep_size(pool._entries)),
            ("pool per-peer index", len(pool._by_peer), deep_size(pool._by_peer)),
            ("admission digests (dedup)", len(a._digests), deep_size(a._digests)),
            (f"admission seqs (replay; {seqs} seqs)", len(a._seqs), deep_size(a._seqs)),
            ("admission token buckets", len(a._buckets), deep_size(a._buckets)),
            ("reputation peers", len(rep._peers), deep_size(rep._peers)),
        ]


def at_bounds(seed: int) -> None:
    """Every structure filled to its bound directly (no signing): the worst case a longer flood can reach."""
    from swarm import admission as adm
    from swarm import reputation as repmod

    flood = Flood(seed)
    a, rep, pool = flood.admission, flood.reputation, flood.pool
    t = T0
    peers = [f"12D3KooW{i:044d}" for i in range(adm.MAX_TRACKED_PEERS)]
    with a._lock:
        for i in range(adm.MAX_REMEMBERED_SEQS + adm.MAX_DIGESTS):
            peer = peers[i % len(peers)]
            a._remember(peer, 10**15 + i, os.urandom(32))
            a._take_token(peer, t)
    for i in range(repmod.MAX_TRACKED_PEERS + 100):
        rep.charge(peers[i % len(peers)] + str(i), "invalid")
    for i in range(PoolConfig().max_groups + 100):
        g = flood.group()
        g.origin = peers[i % len(peers)]
        pool.add(g)
    print("\nevery structure at its bound (filled directly)")
    print(f"  {'structure':<40} {'entries':>8} {'KiB':>9}")
    for name, n, size in flood.state():
        print(f"  {name:<40} {n:>8} {size / 1024:>9.0f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--bounds", action="store_true", help="only fill every structure to its bound and print sizes")
    args = ap.parse_args()
    if args.bounds:
        at_bounds(args.seed)
        return
    flood = Flood(args.seed)
    kinds = [k for k, w in MIX for _ in range(w)]
    checkpoints = {c for c in (1_000, 10_000, 100_000, 1_000_000, 10_000_000) if c <= args.n} | {args.n}
    started = time.monotonic()
    for i in range(1, args.n + 1):
        flood.step(kinds[flood.rng.randrange(len(kinds))])
        if i in checkpoints:
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss >> 10
            print(f"\nafter {i:,} envelopes ({time.monotonic() - started:.0f} s wall, peak RSS {rss} MiB)")
            print(f"  {'structure':<40} {'entries':>8} {'KiB':>9}")
            for name, n, size in flood.state():
                print(f"  {name:<40} {n:>8} {size / 1024:>9.0f}")
    total_ns = sum(sum(v) for v in flood.cpu_ns.values())
    rejected_ns = sum(sum(v) for k, v in flood.cpu_ns.items() if k != "admitted")
    print(f"\nCPU per envelope in admit (us), {args.n:,} envelopes")
    print(f"  {'outcome':<22} {'count':>7} {'mean':>9} {'median':>9} {'p99':>9} {'total s':>8}")
    for reason, ns in sorted(flood.cpu_ns.items(), key=lambda kv: -sum(kv[1])):
        s = sorted(ns)
        print(f"  {reason:<22} {len(s):>7} {statistics.mean(s) / 1e3:>9.1f} {statistics.median(s) / 1e3:>9.1f} "
              f"{s[int(0.99 * (len(s) - 1))] / 1e3:>9.1f} {sum(s) / 1e9:>8.2f}")
    if flood.pool_ns:
        s = sorted(flood.pool_ns)
        print(f"  {'(pool.add)':<22} {len(s):>7} {statistics.mean(s) / 1e3:>9.1f} {statistics.median(s) / 1e3:>9.1f} "
              f"{s[int(0.99 * (len(s) - 1))] / 1e3:>9.1f} {sum(s) / 1e9:>8.2f}")
    n_rej = sum(len(v) for k, v in flood.cpu_ns.items() if k != "admitted")
    print(f"\nrejected: {n_rej:,} of {args.n:,} envelopes, {rejected_ns / 1e9:.2f} s of {total_ns / 1e9:.2f} s "
          f"admission CPU ({100 * rejected_ns / max(total_ns, 1):.1f}%)")
    print("reputation:", {k: v for k, v in flood.reputation.stats().items()})
    print("pool:", flood.pool.stats())


if __name__ == "__main__":
    main()
