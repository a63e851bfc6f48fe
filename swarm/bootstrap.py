"""``sapo bootstrap``: a peer that trains nothing. It keeps a DHT node up so that others can join through a
stable address, stores and serves records like any peer, and drops the payloads it receives."""

from __future__ import annotations

import signal
import threading
from pathlib import Path


def run_bootstrap(cfg, run_dir: Path, log=print) -> int:
    from swarm.exchange import identity_path, make_transport, write_node_json
    from swarm.identity import load_or_create

    stop = threading.Event()
    old = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)}
    identity, _ = load_or_create(identity_path(cfg.swarm, run_dir))
    transport = make_transport(cfg.swarm, identity)
    try:
        transport.start()
        info = write_node_json(run_dir, identity, transport, cfg.swarm, role="bootstrap")
        log(f"bootstrap peer {identity.peer_id} for swarm '{cfg.swarm.swarm_id}' ({cfg.swarm.transport.type})")
        for addr in info["addrs"]:
            log(f"  nodes join with: sapo run --peers {addr}")
        last = -1
        while not stop.wait(5.0):
            transport.incoming()  # drained and dropped: memory stays bounded
            n = len(transport.peers())
            if n != last:
                log(f"peers: {n}")
                last = n
        log("stopping")
        return 0
    finally:
        transport.stop()
        for s, h in old.items():
            signal.signal(s, h)
