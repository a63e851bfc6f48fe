"""A hostile peer for the swarm integration test: joins through --peers and publishes forged, tampered and
replayed envelopes, then prints a JSON line with how many of each it sent.

    python -m tests.integration.adversary --peers ADDR --victim PEER_ID [--replays N] [--forgeries N]
"""

from __future__ import annotations

import argparse
import json
import time

import msgspec
import zstandard

from node.config import load_config
from node.rollout import Completion, RolloutGroup
from node.tasks import TaskRef, resolve
from swarm.envelope import canonical_bytes, envelope_from_group
from swarm.exchange import make_transport
from swarm.identity import Identity, public_from_peer_id


def _wrap(body: bytes, sig: bytes) -> bytes:
    return zstandard.ZstdCompressor().compress(msgspec.msgpack.encode([body, sig]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--peers", required=True)
    ap.add_argument("--victim", required=True, help="peer id whose key the forgeries claim")
    ap.add_argument("--forgeries", type=int, default=10)
    ap.add_argument("--replays", type=int, default=10)
    ap.add_argument("--timeout", type=float, default=60.0)
    args = ap.parse_args()

    cfg = load_config(overrides=[f"swarm.initial_peers=[{args.peers}]"])
    me = Identity.generate()
    transport = make_transport(cfg.swarm, me)
    transport.start()
    sent = {"forged": 0, "tampered": 0, "replayed": 0}
    try:
        task = resolve(TaskRef.make("reasoning_gym", "basic_arithmetic", cfg.tasks.mix[0].config, 7, 0))
        group = RolloutGroup(task=task, prompt=task.question, rewards=[1.0, 0.0],
                             completions=[Completion(text=f"<answer>{task.answer}</answer>"),
                                          Completion(text="<answer>-1</answer>")])
        victim = public_from_peer_id(args.victim)
        seq = int(time.time() * 1e6)
        for i in range(args.forgeries):
            # forged: claims the victim's key, signed with ours
            env = envelope_from_group(group, cfg.swarm.swarm_id, me, seq + i)
            env = msgspec.structs.replace(env, sender=victim)
            body = canonical_bytes(env)
            transport.publish(_wrap(body, me.sign(body)))
            sent["forged"] += 1
            # tampered: our own valid signature, then the completions changed
            env = envelope_from_group(group, cfg.swarm.swarm_id, me, seq + 10_000 + i)
            sig = me.sign(canonical_bytes(env))
            bad = msgspec.structs.replace(env, completions=["<answer>999</answer>", "<answer>998</answer>"])
            transport.publish(_wrap(canonical_bytes(bad), sig))
            sent["tampered"] += 1
        # replayed: honest peers' envelopes, re-sent verbatim under our transport identity
        captured: list[bytes] = []
        deadline = time.time() + args.timeout
        while len(captured) < args.replays and time.time() < deadline:
            captured += [r.payload for r in transport.incoming()]
            time.sleep(0.2)
        for payload in captured[: args.replays]:
            transport.publish(payload)
            sent["replayed"] += 1
        time.sleep(3.0)  # let the records propagate before leaving
        print(json.dumps(sent), flush=True)
    finally:
        transport.stop()


if __name__ == "__main__":
    main()
