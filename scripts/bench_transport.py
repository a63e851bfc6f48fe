"""Transport benchmark: N real peer processes on 127.0.0.1, every peer publishes M payloads, every peer counts.

    python scripts/bench_transport.py --nodes 4 8 16 --sizes 8192 32768 262144 --messages 5 [--json out.json]

For each (nodes, size) a fresh swarm of ``swarm.transport.peer_process`` children is started (node 0 first, the
others bootstrap from it), allowed to see each other, then in each of ``--messages`` rounds every peer publishes one
payload (which embeds its send time) and the script waits ``--interval`` seconds. Reported per row: delivery ratio
(intact receptions / (nodes x (nodes - 1) x messages)), p50 / p99 publish-to-receive latency (all peers share this
machine's clock), the time from the first publish until the last delivery, and the row's total wall time (spawn to
stop). Every loop is bounded; every process started here is stopped (by pid) before the script exits.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from swarm.transport.peer_process import BACKENDS, PeerProcess  # noqa: E402


def percentile(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q / 100 * (len(xs) - 1))))]


def run_case(backend: str, n: int, size: int, messages: int, interval: float, timeout: float, logdir: Path,
             extra: list[str]) -> dict:
    t0 = time.time()
    procs: list[PeerProcess] = []
    try:
        first = PeerProcess(backend, logdir / f"n{n}-s{size}-peer0.log", swarm_id=f"bench-{n}-{size}",
                            extra_args=extra)
        procs.append(first)
        if first.wait_ready(120).get("event") != "ready":
            raise RuntimeError(f"peer 0 failed: {first.info}")
        for i in range(1, n):
            procs.append(PeerProcess(backend, logdir / f"n{n}-s{size}-peer{i}.log", peers=first.addresses,
                                     swarm_id=f"bench-{n}-{size}", extra_args=extra))
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
        lat = [x["received_at"] - x["sent_at"] for x in got.values()]
        last = max((x["received_at"] for x in got.values()), default=t_first)
        errors: dict[str, int] = {}
        for p in procs:
            for k, v in p.request("stats")["stats"]["errors"].items():
                errors[k] = errors.get(k, 0) + v
    finally:
        for p in procs:
            p.close()
    return {"backend": backend, "nodes": n, "size": size, "messages": messages, "expected": expected,
            "received": len(got), "corrupt_or_misattributed": bad, "delivery_ratio": len(got) / expected,
            "p50_s": percentile(lat, 50), "p99_s": percentile(lat, 99), "max_s": max(lat, default=None),
            "deliver_s": last - t_first, "startup_s": started, "settle_s": settled - started,
            "wall_s": time.time() - t0, "errors": errors}


def fmt(x, spec=".3f"):
    return "-" if x is None else format(x, spec)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, nargs="+", default=[4, 8, 16])
    ap.add_argument("--sizes", type=int, nargs="+", default=[8192, 32768, 262144])
    ap.add_argument("--messages", type=int, default=5, help="payloads per peer")
    ap.add_argument("--interval", type=float, default=1.0, help="seconds between publishing rounds")
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for deliveries after the last round")
    ap.add_argument("--backend", default="hivemind", choices=BACKENDS)
    ap.add_argument("--no-hints", action="store_true", help="hivemind: poll the DHT only (no pushed index hints)")
    ap.add_argument("--inline-max", type=int, default=None,
                    help="hivemind: largest body pushed inside the hint (0 = receivers always fetch bodies)")
    ap.add_argument("--json", type=Path, help="also write the rows here")
    ap.add_argument("--logdir", type=Path, help="peer logs (default: a temporary directory)")
    args = ap.parse_args(argv)

    logdir = args.logdir or Path(tempfile.mkdtemp(prefix="bench-transport-"))
    logdir.mkdir(parents=True, exist_ok=True)
    extra = ["--no-hints"] if args.no_hints else []
    if args.inline_max is not None:
        extra += ["--inline-max", str(args.inline_max)]
    header = (f"{'backend':<9} {'nodes':>5} {'size':>8} {'delivery':>8} {'p50 s':>7} {'p99 s':>7} {'max s':>7} "
              f"{'deliver s':>9} {'wall s':>7}  errors")
    print(f"peer logs: {logdir}", flush=True)
    print(header, flush=True)
    rows = []
    for n in args.nodes:
        for size in args.sizes:
            try:
                row = run_case(args.backend, n, size, args.messages, args.interval, args.timeout, logdir, extra)
            except (RuntimeError, TimeoutError, EOFError) as e:
                row = {"backend": args.backend, "nodes": n, "size": size, "failed": str(e)}
                print(f"{args.backend:<9} {n:>5} {size:>8} FAILED: {e}", flush=True)
                rows.append(row)
                continue
            rows.append(row)
            print(f"{row['backend']:<9} {n:>5} {size:>8} {row['delivery_ratio']:>8.3f} {fmt(row['p50_s']):>7} "
                  f"{fmt(row['p99_s']):>7} {fmt(row['max_s']):>7} {row['deliver_s']:>9.2f} {row['wall_s']:>7.1f}  "
                  f"{row['errors'] or ''}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0 if all(r.get("delivery_ratio") == 1.0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
