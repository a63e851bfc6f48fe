"""Micro-benchmark of the swarm envelope path: what one shared rollout group costs each side.

    python scripts/bench_admission.py [--n 2000] [--group-size 8]

For groups of G completions of ~40 characters and of ~2 KB, prints the median (and p90) microseconds per
envelope of

- sign:   ``envelope_from_group`` + ``encode`` (canonical msgpack, Ed25519 signature, zstd)
- admit:  ``Admission.admit`` (size, capped decompression, strict decode, limits, dedup, Ed25519 verify,
          freshness, replay, rate, re-derive the task with reasoning-gym, re-score every completion)
- decode: ``envelope.decode`` alone (decompress + decode + verify), to split admit's cost
- dup:    ``admit`` of an envelope already admitted (a gossip/DHT re-delivery, dropped before verifying)

and the compressed payload size, so it can be compared with a training step (tens to hundreds of ms).
Tasks cycle over 64 basic_arithmetic indices, as a node would see a few peers' current questions.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from node.config import AdmissionConfig  # noqa: E402
from node.rollout import Completion, RolloutGroup  # noqa: E402
from node.tasks import TaskRef, resolve  # noqa: E402
from swarm.admission import Admission  # noqa: E402
from swarm.envelope import decode, encode, envelope_from_group  # noqa: E402
from swarm.identity import Identity  # noqa: E402

CONFIG = {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1, "operators": ["+", "-"],
          "allow_parentheses": False, "allow_negation": False}


_WORDS = ("so", "the", "sum", "of", "and", "is", "then", "carry", "digit", "minus", "plus", "check", "first",
          "next", "we", "get", "add", "take", "away", "result", "equals", "wait", "again", "ok")


def _text(i: int, j: int, chars: int, answer: str) -> str:
    """Sampled-looking reasoning text (random words and numbers, so it compresses like real text, not 100x)."""
    rng = random.Random(i * 1000 + j)
    words: list[str] = []
    n = 0
    while n < chars - 20:
        w = rng.choice(_WORDS) if rng.random() < 0.8 else str(rng.randint(0, 99))
        words.append(w)
        n += len(w) + 1
    body = " ".join(words)[: max(0, chars - 20)]
    return f"{body}<answer>{answer if j % 3 == 0 else int(answer) + j}</answer>"


def _groups(n: int, g: int, chars: int) -> list[RolloutGroup]:
    tasks = [resolve(TaskRef.make("reasoning_gym", "basic_arithmetic", CONFIG, 5, k)) for k in range(64)]
    out = []
    for i in range(n):
        task = tasks[i % len(tasks)]
        comps = [Completion(_text(i, j, chars, task.answer), finished=True) for j in range(g)]
        out.append(RolloutGroup(task=task, prompt=task.question, completions=comps,
                                rewards=[1.0 if j % 3 == 0 else 0.0 for j in range(g)], model_id="bench"))
    return out


def _us(samples_ns: list[int]) -> tuple[float, float]:
    s = sorted(samples_ns)
    return statistics.median(s) / 1000, s[int(0.9 * (len(s) - 1))] / 1000


def bench(n: int, g: int, chars: int) -> None:
    sender = Identity.generate()
    receiver = Identity.generate()
    cfg = AdmissionConfig(rate_per_peer=1e12, burst_per_peer=10**12)
    adm = Admission(cfg, "bench", receiver.peer_id, {("reasoning_gym", "basic_arithmetic")},
                    prompt_for=lambda t: t.question + "\n")
    groups = _groups(n, g, chars)
    payloads, sign_ns = [], []
    now = time.time()
    for seq, group in enumerate(groups):
        t0 = time.perf_counter_ns()
        p = encode(envelope_from_group(group, "bench", sender, seq, now=now), sender)
        sign_ns.append(time.perf_counter_ns() - t0)
        payloads.append(p)
    decode_ns = []
    for p in payloads:
        t0 = time.perf_counter_ns()
        decode(p, cfg.max_envelope_bytes, cfg.max_decompressed_bytes)
        decode_ns.append(time.perf_counter_ns() - t0)
    admit_ns = []
    for p in payloads:
        t0 = time.perf_counter_ns()
        out = adm.admit(p, sender.peer_id)
        admit_ns.append(time.perf_counter_ns() - t0)
        assert out is not None, adm.stats()
    dup_ns = []
    for p in payloads[:200]:
        t0 = time.perf_counter_ns()
        adm.admit(p, sender.peer_id)
        dup_ns.append(time.perf_counter_ns() - t0)
    raw = sum(len(c.text) for c in groups[0].completions)
    size = statistics.median(len(p) for p in payloads)
    print(f"G={g} x ~{chars} chars ({raw} chars of text, payload {size:.0f} B zstd), n={n}:")
    for name, ns in (("sign  (envelope_from_group+encode)", sign_ns), ("admit (full pipeline)", admit_ns),
                     ("  of which decode+verify", decode_ns), ("admit of a duplicate", dup_ns)):
        med, p90 = _us(ns)
        print(f"  {name:36s} median {med:8.1f} us   p90 {p90:8.1f} us")
    print(f"  admission stats: {adm.stats()}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000, help="envelopes per size")
    ap.add_argument("--group-size", type=int, default=8)
    args = ap.parse_args()
    for chars in (40, 2048):
        bench(args.n, args.group_size, chars)


if __name__ == "__main__":
    main()
