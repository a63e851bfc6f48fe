"""``sapo bootstrap``: a peer that trains nothing. It keeps a DHT node up so that others can join through a
stable address, stores and serves records like any peer, and drops the payloads it receives.

With the libp2p transport it also forwards gossip like any mesh member, and with ``--relay``
(``swarm.transport.relay.hop``) it is a circuit relay v2: nodes behind NAT reserve a slot on it and are reached
through ``<this address>/p2p-circuit/p2p/<their id>``."""

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
        t = cfg.swarm.transport
        hop = t.type == "libp2p" and t.relay.hop
        log(f"bootstrap peer {identity.peer_id} for swarm '{cfg.swarm.swarm_id}' ({t.type}"
            + (", circuit relay v2" if hop else "") + ")")
        flag = " --transport libp2p" if t.type == "libp2p" else ""
        for addr in info["addrs"]:
            log(f"  nodes join with: sapo run{flag} --peers {addr}")
            if hop:
                log(f"  behind NAT:      sapo run{flag} --peers {addr} --set swarm.transport.relay.enabled=true")
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
