"""One transport in its own OS process, driven over stdin/stdout JSON lines (conformance tests, benchmark).

    python -m swarm.transport.peer_process --backend hivemind --swarm-id demo [--peers MADDR ...]

The child prints ``{"event": "ready", "peer_id", "addresses", "pid"}`` once started, or
``{"event": "error", "kind": "BootstrapError", "message"}`` and exits 3. Then it answers one JSON line per command:

    {"cmd": "publish", "id": "m1", "size": 65536}  -> {"ok": true, "sha256": ...}   (payload embeds id + send time)
    {"cmd": "received"}   -> {"ok": true, "items": [{"id", "sender", "sha256", "size", "sent_at", "received_at"}]}
                             (what arrived since the previous "received")
    {"cmd": "addresses"} / {"cmd": "peers"} / {"cmd": "stats"} / {"cmd": "stop"} (stops, answers, exits 0)

EOF on stdin also stops it. Logs go to stderr. ``PeerProcess`` is the parent side; its ``processes()`` lists the
child and the child's own children (p2pd for hivemind), e.g. to sum their CPU time or find their sockets.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import queue
import signal
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
BACKENDS = ("hivemind", "libp2p")


def make_transport(backend: str, swarm_id: str, peers: list[str], listen: list[str] | None = None,
                   poll_interval_s: float | None = None, push_hints: bool = True, inline_max_bytes: int | None = None,
                   mdns: bool = False, dht: bool = True):
    """The one place that knows how to build each backend."""
    from swarm.identity import Identity

    if backend == "hivemind":
        from node.config import HivemindTransportConfig
        from swarm.transport.hivemind import HivemindTransport

        cfg = HivemindTransportConfig()
        if listen:
            cfg = cfg.model_copy(update={"listen": listen})
        if poll_interval_s:
            cfg = cfg.model_copy(update={"poll_interval_s": poll_interval_s})
        kw = {} if inline_max_bytes is None else {"inline_max_bytes": inline_max_bytes}
        return HivemindTransport(cfg, Identity.generate(), swarm_id, peers, push_hints=push_hints, **kw)
    if backend == "libp2p":
        from node.config import Libp2pTransportConfig
        from swarm.transport.libp2p import Libp2pTransport

        # mDNS is off unless asked for: every test swarm on this machine would otherwise find every other one.
        cfg = Libp2pTransportConfig(mdns=mdns, dht=dht, **({"listen": listen} if listen else {}))
        return Libp2pTransport(cfg, Identity.generate(), swarm_id, peers)
    raise ValueError(f"unknown transport backend {backend!r}; choose one of {BACKENDS}")


def make_payload(msg_id: str, size: int) -> bytes:
    """``size`` bytes: a length-prefixed JSON header (id, send time) then random filler."""
    header = json.dumps({"id": msg_id, "t": time.time()}).encode()
    head = struct.pack(">I", len(header)) + header
    return head + os.urandom(max(0, size - len(head)))


def parse_payload(payload: bytes) -> dict:
    try:
        (n,) = struct.unpack(">I", payload[:4])
        return json.loads(payload[4:4 + n])
    except (ValueError, struct.error):
        return {}


def _child(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m swarm.transport.peer_process")
    ap.add_argument("--backend", default="hivemind", choices=BACKENDS)
    ap.add_argument("--swarm-id", default="conformance")
    ap.add_argument("--peers", nargs="*", default=[])
    ap.add_argument("--listen", nargs="*", default=None)
    ap.add_argument("--poll-interval", type=float, default=None)
    ap.add_argument("--no-hints", action="store_true", help="hivemind: poll only, no pushed index hints")
    ap.add_argument("--inline-max", type=int, default=None, help="hivemind: largest body pushed inside a hint")
    ap.add_argument("--mdns", action="store_true", help="libp2p: discover peers on this machine/LAN by mDNS")
    ap.add_argument("--no-dht", action="store_true", help="libp2p: no Kademlia DHT discovery")
    args = ap.parse_args(argv)

    def on_sigterm(signum, frame):  # unwind through the finally below so that p2pd (our child) is stopped too
        raise SystemExit(143)

    signal.signal(signal.SIGTERM, on_sigterm)
    out = sys.stdout
    sys.stdout = sys.stderr  # stdout is the protocol channel: keep stray prints off it

    def say(obj: dict) -> None:
        out.write(json.dumps(obj) + "\n")
        out.flush()

    from swarm.transport.base import TransportError

    transport = make_transport(args.backend, args.swarm_id, args.peers, args.listen, args.poll_interval,
                               push_hints=not args.no_hints, inline_max_bytes=args.inline_max,
                               mdns=args.mdns, dht=not args.no_dht)
    try:
        transport.start()
    except TransportError as e:
        say({"event": "error", "kind": type(e).__name__, "message": str(e)})
        return 3
    say({"event": "ready", "peer_id": transport.peer_id, "addresses": transport.addresses(), "pid": os.getpid()})

    received: list[dict] = []
    lock = threading.Lock()
    done = threading.Event()

    def drain() -> None:
        while not done.is_set():
            items = transport.incoming()
            rows = []
            for r in items:
                head = parse_payload(r.payload)
                rows.append({"id": head.get("id"), "sender": r.sender, "sha256": hashlib.sha256(r.payload).hexdigest(),
                             "size": len(r.payload), "sent_at": head.get("t"), "received_at": r.received_at})
            if rows:
                with lock:
                    received.extend(rows)
            done.wait(0.01)

    drainer = threading.Thread(target=drain, daemon=True)
    drainer.start()
    try:
        for line in sys.stdin:
            try:
                cmd = json.loads(line)
                name = cmd.get("cmd")
                if name == "publish":
                    payload = make_payload(str(cmd["id"]), int(cmd["size"]))
                    transport.publish(payload)
                    say({"ok": True, "sha256": hashlib.sha256(payload).hexdigest()})
                elif name == "received":
                    with lock:
                        items, received[:] = list(received), []
                    say({"ok": True, "items": items})
                elif name == "addresses":
                    say({"ok": True, "addresses": transport.addresses()})
                elif name == "peers":
                    say({"ok": True, "peers": transport.peers()})
                elif name == "stats":
                    s = transport.stats()
                    say({"ok": True, "stats": {"bytes_in": s.bytes_in, "bytes_out": s.bytes_out, "errors": s.errors,
                                               "messages_in": s.messages_in, "messages_out": s.messages_out}})
                elif name in _PUBSUB_FAULTS:  # libp2p, for tests: break py-libp2p's bookkeeping as it can break
                    import trio

                    n = trio.from_thread.run_sync(_PUBSUB_FAULTS[name], transport, trio_token=transport._token)
                    say({"ok": True, "peers": n})
                elif name == "stop":
                    break
                else:
                    say({"ok": False, "error": f"unknown command {name!r}"})
            except Exception as e:  # a bad command must not kill the peer; the parent sees the error
                say({"ok": False, "error": repr(e)})
    finally:
        done.set()
        transport.stop()
        drainer.join(2)
    say({"ok": True, "stopped": True})
    return 0


def _drop_pubsub_streams(transport) -> int:
    """Forget every peer's outbound pubsub stream the way py-libp2p does when it gives up re-registering a peer
    (no retry scheduled): only ``Libp2pTransport``'s own healing can bring the peers back."""
    ps = transport._pubsub
    peers = list(ps.peers)
    for pid in peers:
        del ps.peers[pid]
        ps.peer_queues.pop(pid).close()
        ps.router.remove_peer(pid)
    return len(peers)


def _forget_pubsub_topics(transport) -> int:
    """Forget every peer's topic announcements (stock pubsub's forgetting, as after a lost re-announcement)."""
    from libp2p.pubsub.pubsub import Pubsub

    ps = transport._pubsub
    peers = list(ps.peers)
    for pid in peers:
        Pubsub._forget_all_subscriptions(ps, pid)
    return len(peers)


_PUBSUB_FAULTS = {"drop_pubsub_streams": _drop_pubsub_streams, "forget_pubsub_topics": _forget_pubsub_topics}


class PeerProcess:
    """Parent side: spawn a child, send commands, read replies with timeouts, stop it (by pid, escalating)."""

    def __init__(self, backend: str, log_path: Path, peers: list[str] = (), swarm_id: str = "conformance",
                 extra_args: list[str] = ()):
        cmd = [sys.executable, "-m", "swarm.transport.peer_process", "--backend", backend, "--swarm-id", swarm_id,
               *extra_args]
        if peers:
            cmd += ["--peers", *peers]
        env = {**os.environ, "PYTHONUNBUFFERED": "1",
               "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
        self._log = open(log_path, "w")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log,
                                     text=True, bufsize=1, cwd=REPO_ROOT, env=env)
        self._lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.info: dict = {}

    def _read(self) -> None:
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def _next(self, timeout: float) -> dict:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"peer pid {self.proc.pid} did not answer within {timeout} s") from None
        if line is None:
            raise EOFError(f"peer pid {self.proc.pid} exited (rc={self.proc.poll()})")
        return json.loads(line)

    def wait_ready(self, timeout: float = 60) -> dict:
        """The ready (or error) event."""
        self.info = self._next(timeout)
        return self.info

    @property
    def addresses(self) -> list[str]:
        return self.info.get("addresses", [])

    @property
    def peer_id(self) -> str | None:
        return self.info.get("peer_id")

    def processes(self) -> list:
        """``psutil.Process`` of the child and of its live descendants (p2pd for hivemind); [] once it has exited."""
        import psutil

        try:
            me = psutil.Process(self.proc.pid)
            return [me, *me.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def request(self, cmd: str, timeout: float = 30, **kw) -> dict:
        self.proc.stdin.write(json.dumps({"cmd": cmd, **kw}) + "\n")
        self.proc.stdin.flush()
        reply = self._next(timeout)
        if not reply.get("ok"):
            raise RuntimeError(f"peer pid {self.proc.pid}: {cmd} failed: {reply}")
        return reply

    def close(self, timeout: float = 20) -> int | None:
        """Ask it to stop; terminate, then kill, if it does not exit. Returns the exit code."""
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(json.dumps({"cmd": "stop"}) + "\n")
                self.proc.stdin.flush()
                self.proc.stdin.close()
            except (BrokenPipeError, OSError, ValueError):
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._terminate_then_kill()
        self._log.close()
        return self.proc.returncode

    def terminate(self) -> None:
        """Abrupt leave (SIGTERM): no goodbye, as when a peer's machine goes away."""
        if self.proc.poll() is None:
            self._terminate_then_kill()

    def _terminate_then_kill(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


if __name__ == "__main__":
    sys.exit(_child())
