"""Hostile node variants for the simulation harness (``adversary.role``); never used by real nodes.

Each role is a ``SwarmExchange`` whose ``publish`` misbehaves while the node otherwise trains normally
(it still samples and admits peers' groups, so it stays a plausible member of the swarm). What it sent is
counted by kind in ``stats()`` (``hostile_sent``) so the harness can check that every hostile envelope was
rejected by every honest node.

- poisoner: its groups' completions replaced by wrong answers, each claimed to score 1.0, validly signed;
- forger:   envelopes claiming another peer's public key (signed with its own), and ones with a corrupted
            signature;
- replayer: re-sends envelopes it received from peers, verbatim;
- flooder:  ``flood_factor`` x the normal rate of valid, fresh envelopes, ignoring its publish budget;
- garbage:  random bytes and payloads over the receivers' size cap.
"""

from __future__ import annotations

import math
import os
import random
import time
from collections import deque

import msgspec
import zstandard

from node.rollout import Completion, RolloutGroup
from swarm.envelope import canonical_bytes, encode, envelope_from_group
from swarm.exchange import SwarmExchange
from swarm.identity import public_from_peer_id

ROLES = ("poisoner", "forger", "replayer", "flooder", "garbage")


def _wrap(body: bytes, sig: bytes) -> bytes:
    return zstandard.ZstdCompressor().compress(msgspec.msgpack.encode([body, sig]))


class HostileExchange(SwarmExchange):
    def __init__(self, *args, role: str, flood_factor: int = 10, **kwargs):
        super().__init__(*args, **kwargs)
        if role not in ROLES:
            raise ValueError(f"adversary.role: unknown role {role!r}; use one of {ROLES}")
        self.role = role
        self.flood_factor = flood_factor
        self.rng = random.Random(self.seed)
        self.hostile_sent: dict[str, int] = {}
        self._captured: deque[bytes] = deque(maxlen=256)
        self._victims: deque[bytes] = deque(maxlen=16)

    def _send(self, kind: str, payload: bytes) -> None:
        try:
            self.transport.publish(payload)
            self.hostile_sent[kind] = self.hostile_sent.get(kind, 0) + 1
        except Exception as exc:  # e.g. a transport that refuses an oversize payload itself
            self.publish_errors += 1
            self.log(f"hostile publish ({kind}) failed: {type(exc).__name__}: {exc}")

    def drain(self) -> int:
        items = self._incoming()
        added = 0
        for item in items:
            self._captured.append(item.payload)
            group = self.admission.admit(item.payload, item.sender)
            if group is not None:
                self._count_origin(group.origin)
                victim = public_from_peer_id(group.origin)
                if victim:
                    self._victims.append(victim)
                if self.pool.add(group):
                    added += 1
        return added

    def publish(self, groups: list[RolloutGroup], round_idx: int) -> None:
        groups = [g for g in groups if g.has_signal][:2] or groups[:1]
        getattr(self, f"_publish_{self.role}")(groups)

    def _next_seq(self) -> int:
        self.seq += 1
        return self.seq

    def _publish_poisoner(self, groups):
        for g in groups:
            wrong = [Completion(text=f"<answer>{self.rng.randint(-99, -10)}</answer>") for _ in g.completions]
            bad = RolloutGroup(task=g.task, prompt=g.prompt, completions=wrong, rewards=[1.0] * len(wrong),
                               model_id=g.model_id)
            self._send("poisoned", encode(envelope_from_group(bad, self.cfg.swarm_id, self.identity,
                                                               self._next_seq()), self.identity))

    def _publish_forger(self, groups):
        for g in groups:
            env = envelope_from_group(g, self.cfg.swarm_id, self.identity, self._next_seq())
            victim = self._victims[-1] if self._victims else os.urandom(32)
            forged = msgspec.structs.replace(env, sender=victim)
            body = canonical_bytes(forged)
            self._send("forged", _wrap(body, self.identity.sign(body)))
            body = canonical_bytes(env)
            sig = bytearray(self.identity.sign(body))
            sig[self.rng.randrange(len(sig))] ^= 1 << self.rng.randrange(8)
            self._send("bad_signature", _wrap(body, bytes(sig)))

    def _publish_replayer(self, groups):
        for _ in range(2):
            if self._captured:
                self._send("replayed", self._captured[self.rng.randrange(len(self._captured))])

    def _publish_flooder(self, groups):
        # flood_factor x an honest node's publish budget, however slow or fast its rounds are
        now = time.monotonic()
        dt = now - getattr(self, "_last_flood", now - 1.0)
        self._last_flood = now
        # capped per round: flooding slows its own rounds, and an uncapped catch-up would spiral
        n = min(25 * 8, max(1, math.ceil(self.flood_factor * self.cfg.publish_per_minute / 60.0 * dt)))
        for k in range(n):
            g = groups[k % len(groups)]
            self._send("flood", encode(envelope_from_group(g, self.cfg.swarm_id, self.identity,
                                                            self._next_seq()), self.identity))

    def _publish_garbage(self, groups):
        self._send("garbage", os.urandom(self.rng.randint(1, 4096)))
        cap = self.admission.cfg.max_envelope_bytes
        self._send("oversize", os.urandom(cap + 1024))

    def stats(self) -> dict:
        return {**super().stats(), "adversary_role": self.role, "hostile_sent": dict(self.hostile_sent)}
