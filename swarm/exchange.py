"""The hook where the swarm meets the node's training loop.

Every round the runtime hands its freshly generated, locally rewarded groups to ``publish`` and asks
``sample`` for up to J external groups (admitted, re-derived and re-scored by this node's own verifier).
``SoloExchange`` is the node alone: it publishes nowhere and returns nothing, so the batch is topped up
with local groups. The swarm layer provides the networked implementation.
"""

from __future__ import annotations

from typing import Protocol

from node.rollout import RolloutGroup


class Exchange(Protocol):
    def publish(self, groups: list[RolloutGroup], round_idx: int) -> None: ...

    def sample(self, n: int, round_idx: int) -> list[RolloutGroup]: ...

    def stats(self) -> dict:
        """Counters for metrics.jsonl (e.g. admitted, rejected by reason, peers, bytes in/out)."""
        ...

    def close(self) -> None: ...


class SoloExchange:
    def publish(self, groups: list[RolloutGroup], round_idx: int) -> None:
        return None

    def sample(self, n: int, round_idx: int) -> list[RolloutGroup]:
        return []

    def stats(self) -> dict:
        return {"admitted": 0, "rejected": {}, "peers": 0, "bytes_in": 0, "bytes_out": 0}

    def close(self) -> None:
        return None


class SwarmExchange:
    """The networked exchange: sign and publish local groups, admit and pool peers' groups.

    Only groups with a learning signal are sent, paced by a token bucket (``swarm.publish_per_minute``).
    Sequence numbers start at the wall clock in microseconds and count up, so a restarted node (same key)
    never reuses a sequence number its peers have already seen (admission rejects replays by (signer, seq)).
    """

    MAX_ORIGINS = 64

    def __init__(self, swarm_cfg, identity, transport, admission, pool, seed: int, log=print):
        import time

        self.cfg = swarm_cfg
        self.identity = identity
        self.transport = transport
        self.admission = admission
        self.pool = pool
        # One reputation shared by admission (charges, ignore check) and the pool (sampling weights).
        self.reputation = getattr(admission, "reputation", None)
        if self.reputation is None and swarm_cfg.reputation.enabled:
            from swarm.reputation import Reputation

            self.reputation = Reputation(swarm_cfg.reputation)
        admission.reputation = pool.reputation = self.reputation
        self.seed = seed
        self.log = log
        self.seq = int(time.time() * 1_000_000)
        self.published = 0
        self.publish_errors = 0
        self.publish_skipped = 0
        self.publish_no_signal = 0
        self.admitted_from: dict[str, int] = {}
        self.transport_errors = 0
        self._peers = 0
        self._clock = time.monotonic
        self._tokens = float(swarm_cfg.publish_burst)
        self._refilled = self._clock()

    def _take_token(self) -> bool:
        now = self._clock()
        rate = self.cfg.publish_per_minute / 60.0
        self._tokens = min(float(self.cfg.publish_burst), self._tokens + (now - self._refilled) * rate)
        self._refilled = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False

    def publish(self, groups: list[RolloutGroup], round_idx: int) -> None:
        from swarm.envelope import encode, envelope_from_group

        for group in groups:
            if not group.has_signal:
                # Peers re-score with the same verifier and drop all-equal groups (no GRPO gradient), so
                # sending them only spends bandwidth and the publish budget.
                self.publish_no_signal += 1
                continue
            if not self._take_token():
                self.publish_skipped += 1
                continue
            self.seq += 1
            payload = encode(envelope_from_group(group, self.cfg.swarm_id, self.identity, self.seq), self.identity)
            try:
                self.transport.publish(payload)
                self.published += 1
            except Exception as exc:  # a transport hiccup must not stop training; counted and logged
                self.publish_errors += 1
                self.log(f"publish failed ({type(exc).__name__}: {exc}); training goes on")

    def _incoming(self) -> list:
        # A busy or broken transport must not stop training: count it, train on what the pool has.
        from swarm.transport.base import TransportError

        try:
            return self.transport.incoming()
        except TransportError as exc:
            self.transport_errors += 1
            self.log(f"transport receive failed ({exc}); training goes on")
            return []

    def drain(self) -> int:
        """Admit everything that arrived; returns how many groups entered the pool."""
        added = 0
        for item in self._incoming():
            group = self.admission.admit(item.payload, item.sender)
            if group is not None:
                self._count_origin(group.origin)
                if self.pool.add(group):
                    added += 1
        return added

    def _count_origin(self, peer: str) -> None:
        # Bounded: at most MAX_ORIGINS peers are itemised (the rest are summed under "other").
        if peer in self.admitted_from or len(self.admitted_from) < self.MAX_ORIGINS:
            self.admitted_from[peer] = self.admitted_from.get(peer, 0) + 1
        else:
            self.admitted_from["other"] = self.admitted_from.get("other", 0) + 1

    def sample(self, n: int, round_idx: int) -> list[RolloutGroup]:
        import random

        from node.runtime import derive_seed

        self.drain()
        return self.pool.sample(n, random.Random(derive_seed(self.seed, "external", round_idx)))

    def stats(self) -> dict:
        from swarm.transport.base import TransportError

        a = self.admission.stats()
        t = self.transport.stats()
        try:
            self._peers = len(self.transport.peers())
        except TransportError:  # keep the last known count; a slow transport must not stop training
            self.transport_errors += 1
        return {
            "admitted": a["admitted"],
            "rejected": dict(sorted(a["rejected"].items())),
            "peers": self._peers,
            "transport_errors": self.transport_errors,
            "transport_events": dict(sorted(t.errors.items())),
            "bytes_in": t.bytes_in,
            "bytes_out": t.bytes_out,
            "published": self.published,
            "publish_errors": self.publish_errors,
            "publish_skipped": self.publish_skipped,
            "publish_no_signal": self.publish_no_signal,
            "admitted_from": dict(self.admitted_from),
            **self.pool.stats(),
            **(self.reputation.stats() if self.reputation is not None else {}),
        }

    def close(self) -> None:
        self.transport.stop()


def make_transport(swarm_cfg, identity):
    """The transport backend named by ``swarm.transport.type``."""
    kind = swarm_cfg.transport.type
    if kind == "hivemind":
        from swarm.transport.hivemind import HivemindTransport

        t = swarm_cfg.transport
        return HivemindTransport(t, identity, swarm_cfg.swarm_id, list(swarm_cfg.initial_peers),
                                 push_hints=t.push_hints, inline_max_bytes=t.inline_max_bytes)
    if kind == "libp2p":
        from swarm.transport.libp2p import Libp2pTransport

        return Libp2pTransport(swarm_cfg.transport, identity, swarm_cfg.swarm_id, list(swarm_cfg.initial_peers))
    raise ValueError(f"swarm.transport.type: unknown transport {kind!r}; use hivemind or libp2p")


def identity_path(swarm_cfg, run_dir):
    from pathlib import Path

    return Path(swarm_cfg.identity_path).expanduser() if swarm_cfg.identity_path else Path(run_dir) / "identity.key"


def write_node_json(run_dir, identity, transport, swarm_cfg, role: str = "node") -> dict:
    """Write RUN_DIR/node.json (peer id and the addresses others pass to --peers); atomic."""
    import json
    import os
    import time
    from pathlib import Path

    info = {"peer_id": identity.peer_id, "addrs": transport.addresses(), "swarm_id": swarm_cfg.swarm_id,
            "transport": swarm_cfg.transport.type, "role": role, "pid": os.getpid(), "started_at": time.time()}
    path = Path(run_dir) / "node.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(info, indent=1))
    os.replace(tmp, path)
    return info
