"""Transport benchmark: both backends side by side, N real peer processes on 127.0.0.1, every peer publishes M payloads.

    python scripts/bench_transport.py --nodes 4 8 16 --sizes 8192 32768 262144 --messages 5 [--json out.json]
    python scripts/bench_transport.py --backends libp2p ...     # one backend only

For each (nodes, size) and each backend, in turn, a fresh swarm of ``swarm.transport.peer_process`` children is
started (node 0 first, the others bootstrap from it) and allowed to see each other; then, in each of ``--messages``
rounds, every peer publishes one payload (which embeds its send time) and the script waits ``--interval`` seconds,
then waits (at most ``--timeout`` s) until every peer has every other peer's payloads. The *measured window* runs from
just before the first publish to the moment the last delivery was seen (or the timeout). Reported per row:

* delivery: intact receptions / (nodes x (nodes - 1) x messages); p50 / p99 / max publish-to-receive latency (all
  peers share this machine's clock).
* wire KB/node/env: TCP payload bytes that the peers' sockets sent during the window (every byte written to a TCP
  connection: our payloads and their framing, noise encryption, yamux/mplex, gossipsub control and relaying, DHT
  traffic, hivemind's hints and body fetches, the background chatter of those seconds; not TCP/IP headers), summed
  over all peers and divided by nodes x envelopes published (nodes x messages): what one node sends for each
  envelope in the swarm. ``x ideal`` divides the same total by the least a swarm can send, one copy of every payload
  to every other peer (envelopes x (nodes - 1) x size): 1.0 is no overhead and no duplicates.
  How: ``ss -tinHe`` (the kernel's ``tcp_info.bytes_sent`` per socket, with its inode) sampled every second;
  sockets are attributed to a node by the inodes in ``/proc/<pid>/fd`` of the peer process and its children (p2pd
  for hivemind: with hivemind all network traffic goes through p2pd's TCP sockets, the Python process only talks
  to p2pd over a unix socket, which is not counted). A socket closed during the window counts up to its last
  sample. The transports' own ``stats().bytes_out`` count payload bytes only (libp2p: the frames a node authored,
  not gossip it forwards; hivemind: hints and bodies it served); their total is in the JSON as ``stats_bytes_out``.
* CPU s/node: user + system CPU seconds of each peer process plus its children (p2pd), during the window, mean over
  the nodes (max in the JSON); ``start CPU`` is the same sum from spawn to the window (start-up, connecting, the
  wait until every peer sees the others).
* wall s: the row's total time (spawn to stop).

Every loop is bounded; every process started here is stopped (by pid) before the script exits.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from swarm.transport.peer_process import BACKENDS, PeerProcess  # noqa: E402

_INO = re.compile(r"\bino:(\d+)")
_SENT = re.compile(r"\bbytes_sent:(\d+)")


def percentile(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q / 100 * (len(xs) - 1))))]


def tcp_bytes_sent() -> dict[int, int]:
    """socket inode -> tcp_info.bytes_sent, for every TCP socket in this network namespace (one netlink dump)."""
    out = subprocess.run(["ss", "-tinHe"], capture_output=True, text=True, timeout=10).stdout
    sent: dict[int, int] = {}
    ino = 0
    for line in out.splitlines():
        if line[:1].isspace():  # the tcp_info line of the socket above
            m = _SENT.search(line)
            if ino and m:
                sent[ino] = int(m.group(1))
        else:
            m = _INO.search(line)
            ino = int(m.group(1)) if m else 0
    return sent


def socket_inodes(pid: int) -> set[int]:
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:["):
                inodes.add(int(link[8:-1]))
    except OSError:
        pass
    return inodes


class WireMeter:
    """Per-node TCP bytes sent over a window, sampled every ``period`` s so that sockets closed mid-window count."""

    def __init__(self, node_pids: list[list[int]], period: float = 1.0):
        self.node_pids, self.period = node_pids, period
        self.owner: dict[int, int] = {}  # socket inode -> node index (kept after the socket closes)
        self.base: dict[int, int] = {}
        self.last: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> dict[int, int]:
        for i, pids in enumerate(self.node_pids):
            for pid in pids:
                for ino in socket_inodes(pid):
                    self.owner.setdefault(ino, i)
        sent = tcp_bytes_sent()
        mine = {ino: b for ino, b in sent.items() if ino in self.owner}
        self.last.update(mine)
        return mine

    def start(self) -> None:
        self.base = self._sample()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.period):
            self._sample()

    def stop_sampling(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(15)

    def stop(self) -> dict:
        self.stop_sampling()
        final = self._sample()
        per_node = [0] * len(self.node_pids)
        for ino, b in self.last.items():
            per_node[self.owner[ino]] += b - self.base.get(ino, 0)
        return {"per_node": per_node, "sockets": len(self.last),
                "closed_in_window": len(set(self.last) - set(final))}


def cpu_seconds(p: PeerProcess) -> float:
    total = 0.0
    for proc in p.processes():
        try:
            t = proc.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def lo_tx_bytes() -> int | None:
    try:
        return int(Path("/sys/class/net/lo/statistics/tx_bytes").read_text())
    except (OSError, ValueError):
        return None


def run_case(backend: str, n: int, size: int, messages: int, interval: float, timeout: float, logdir: Path,
             extra: list[str]) -> dict:
    t0 = time.time()
    procs: list[PeerProcess] = []
    meter: WireMeter | None = None
    tag = f"{backend}-n{n}-s{size}"
    try:
        first = PeerProcess(backend, logdir / f"{tag}-peer0.log", swarm_id=f"bench-{tag}", extra_args=extra)
        procs.append(first)
        if first.wait_ready(120).get("event") != "ready":
            raise RuntimeError(f"peer 0 failed: {first.info}")
        for i in range(1, n):
            procs.append(PeerProcess(backend, logdir / f"{tag}-peer{i}.log", peers=first.addresses,
                                     swarm_id=f"bench-{tag}", extra_args=extra))
        for p in procs[1:]:
            if p.wait_ready(180).get("event") != "ready":
                raise RuntimeError(f"peer failed to start: {p.info}")
        started = time.time() - t0

        deadline = time.time() + 60  # let the routing tables fill (bounded)
        while time.time() < deadline:
            if all(len(p.request("peers")["peers"]) >= n - 1 for p in procs):
                break
            time.sleep(0.5)
        settled = time.time() - t0

        # the measured window starts here
        stats0 = [p.request("stats")["stats"] for p in procs]
        meter = WireMeter([[x.pid for x in p.processes()] for p in procs])
        lo0 = lo_tx_bytes()
        meter.start()
        cpu0 = [cpu_seconds(p) for p in procs]

        digests: dict[str, tuple[str, str]] = {}  # msg id -> (sha256, publisher peer id)
        t_first = time.time()
        for r in range(messages):
            for i, p in enumerate(procs):
                mid = f"p{i}-m{r}"
                digests[mid] = (p.request("publish", id=mid, size=size)["sha256"], p.peer_id)
            time.sleep(interval)

        expected = n * (n - 1) * messages
        got: dict[tuple[int, str], dict] = {}
        bad = 0
        deadline = time.time() + timeout
        while time.time() < deadline:
            for i, p in enumerate(procs):
                for item in p.request("received", timeout=60)["items"]:
                    sha, sender = digests.get(item["id"], (None, None))
                    if sha is None or item["sha256"] != sha or item["sender"] != sender:
                        bad += 1
                    else:
                        got.setdefault((i, item["id"]), item)
            if len(got) >= expected:
                break
            time.sleep(0.25)

        # the measured window ends here
        cpu1 = [cpu_seconds(p) for p in procs]
        wire = meter.stop()
        lo1 = lo_tx_bytes()
        t_end = time.time()
        stats1 = [p.request("stats")["stats"] for p in procs]
        lat = [x["received_at"] - x["sent_at"] for x in got.values()]
        last = max((x["received_at"] for x in got.values()), default=t_first)
        errors: dict[str, int] = {}
        for s in stats1:
            for k, v in s["errors"].items():
                errors[k] = errors.get(k, 0) + v
    finally:
        if meter is not None:
            meter.stop_sampling()
        for p in procs:
            p.close()
    envelopes = n * messages
    wire_total = sum(wire["per_node"])
    cpu = [b - a for a, b in zip(cpu0, cpu1)]
    return {"backend": backend, "nodes": n, "size": size, "messages": messages, "expected": expected,
            "received": len(got), "corrupt_or_misattributed": bad, "delivery_ratio": len(got) / expected,
            "p50_s": percentile(lat, 50), "p99_s": percentile(lat, 99), "max_s": max(lat, default=None),
            "deliver_s": last - t_first, "window_s": t_end - t_first,
            "wire_bytes_total": wire_total, "wire_bytes_per_node": wire["per_node"],
            "wire_bytes_per_node_per_envelope": wire_total / n / envelopes,
            "wire_x_ideal": wire_total / (envelopes * (n - 1) * size),
            "wire_sockets": wire["sockets"], "wire_sockets_closed_in_window": wire["closed_in_window"],
            "lo_tx_bytes": None if lo0 is None or lo1 is None else lo1 - lo0,
            "stats_bytes_out": sum(b["bytes_out"] - a["bytes_out"] for a, b in zip(stats0, stats1)),
            "cpu_s_per_node": sum(cpu) / n, "cpu_s_max_node": max(cpu), "cpu_s_per_node_list": cpu,
            "startup_cpu_s_per_node": sum(cpu0) / n,
            "startup_s": started, "settle_s": settled - started, "wall_s": time.time() - t0, "errors": errors}


def fmt(x, spec=".3f"):
    return "-" if x is None else format(x, spec)


def human_size(b: int) -> str:
    return f"{b // 1024} KB" if b % 1024 == 0 else f"{b} B"


HEADER = (f"{'backend':<9} {'nodes':>5} {'size':>8} {'delivery':>8} {'p50 s':>7} {'p99 s':>7} {'max s':>7} "
          f"{'wire KB/node/env':>16} {'x ideal':>7} {'CPU s/node':>10} {'start CPU':>9} {'wall s':>7}  errors")


def line(row: dict) -> str:
    if "failed" in row:
        return f"{row['backend']:<9} {row['nodes']:>5} {row['size']:>8} FAILED: {row['failed']}"
    return (f"{row['backend']:<9} {row['nodes']:>5} {row['size']:>8} {row['delivery_ratio']:>8.3f} "
            f"{fmt(row['p50_s']):>7} {fmt(row['p99_s']):>7} {fmt(row['max_s']):>7} "
            f"{row['wire_bytes_per_node_per_envelope'] / 1024:>16.1f} {row['wire_x_ideal']:>7.2f} "
            f"{row['cpu_s_per_node']:>10.2f} {row['startup_cpu_s_per_node']:>9.2f} {row['wall_s']:>7.1f}  "
            f"{row['errors'] or ''}")


def markdown(rows: list[dict]) -> str:
    out = ["| nodes | payload | backend | delivery | p50 s | p99 s | wire KB sent/node/envelope (x ideal) "
           "| CPU s/node (start-up) | wall s |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "failed" in r:
            out.append(f"| {r['nodes']} | {human_size(r['size'])} | {r['backend']} | failed | | | | | |")
            continue
        out.append(f"| {r['nodes']} | {human_size(r['size'])} | {r['backend']} | {r['delivery_ratio']:.3f} "
                   f"| {fmt(r['p50_s'])} | {fmt(r['p99_s'])} "
                   f"| {r['wire_bytes_per_node_per_envelope'] / 1024:.0f} ({r['wire_x_ideal']:.2f}) "
                   f"| {r['cpu_s_per_node']:.2f} ({r['startup_cpu_s_per_node']:.1f}) | {r['wall_s']:.0f} |")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, nargs="+", default=[4, 8, 16])
    ap.add_argument("--sizes", type=int, nargs="+", default=[8192, 32768, 262144])
    ap.add_argument("--messages", type=int, default=5, help="payloads per peer")
    ap.add_argument("--interval", type=float, default=1.0, help="seconds between publishing rounds")
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for deliveries after the last round")
    ap.add_argument("--backends", "--backend", nargs="+", default=list(BACKENDS), choices=BACKENDS,
                    help="run each (nodes, size) on these, one after the other (default: both)")
    ap.add_argument("--no-hints", action="store_true", help="hivemind: poll the DHT only (no pushed index hints)")
    ap.add_argument("--inline-max", type=int, default=None,
                    help="hivemind: largest body pushed inside the hint (0 = receivers always fetch bodies)")
    ap.add_argument("--json", type=Path, help="also write the rows here")
    ap.add_argument("--markdown", action="store_true", help="also print the rows as a markdown table at the end")
    ap.add_argument("--logdir", type=Path, help="peer logs (default: a temporary directory)")
    args = ap.parse_args(argv)
    if shutil.which("ss") is None or not Path("/proc/self/fd").is_dir():
        ap.error("needs Linux with iproute2's `ss` (apt-get install iproute2) to count the bytes on the wire")

    logdir = args.logdir or Path(tempfile.mkdtemp(prefix="bench-transport-"))
    logdir.mkdir(parents=True, exist_ok=True)
    hivemind_extra = ["--no-hints"] if args.no_hints else []
    if args.inline_max is not None:
        hivemind_extra += ["--inline-max", str(args.inline_max)]
    print(f"peer logs: {logdir}; load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}",
          flush=True)
    print(HEADER, flush=True)
    rows = []
    for n in args.nodes:
        for size in args.sizes:
            for backend in args.backends:
                extra = hivemind_extra if backend == "hivemind" else []
                try:
                    row = run_case(backend, n, size, args.messages, args.interval, args.timeout, logdir, extra)
                except (RuntimeError, TimeoutError, EOFError) as e:
                    row = {"backend": backend, "nodes": n, "size": size, "failed": str(e)}
                row["loadavg"] = os.getloadavg()
                rows.append(row)
                print(line(row), flush=True)
                if args.json:  # after every row, so that an interrupted run keeps what it measured
                    args.json.write_text(json.dumps(rows, indent=2))
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    if args.markdown:
        print(markdown(rows), flush=True)
    return 0 if all(r.get("delivery_ratio") == 1.0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
