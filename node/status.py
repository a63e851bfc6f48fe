"""``sapo status`` and ``sapo health``: what a running or finished node is doing, read from outside.

    sapo status [RUN_DIR | http://HOST:PORT/metrics]    one screen: identity, peers, round, reward trend, ...
    sapo health [RUN_DIR] [--max-age 300]               exit 0 healthy / 1 with one line saying why

A run dir is read from its files (``node.json``, ``identity.key``, ``metrics.jsonl``, ``checkpoints/``), a
URL from the node's Prometheus text. Nothing here imports torch, so both answer in well under a second
(``sapo health`` runs every few seconds as a docker/systemd health check).

Whether the node is alive: ``node.json`` holds the pid and the start time of the process that wrote it;
the pid must exist *and* that process must have started before ``started_at`` (a recycled pid belongs to a
younger process); a clean exit writes ``stopped_at``.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from node.observe import last_checkpoint, read_node_json
from node.metrics import read_rows

SPARK = "▁▂▃▄▅▆▇█"


# ---------------------------------------------------------------------------------------------
# Reading


def _proc_start_time(pid: int) -> float | None:
    """Unix start time of ``pid`` from /proc (Linux), or None where that cannot be read."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        ticks = int(stat.rsplit(")", 1)[1].split()[19])  # field 22, counted after the "(comm)" field
        btime = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                     if line.startswith("btime "))
        return btime + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def pid_alive(pid, started_at: float | None = None) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    if started_at is not None:
        began = _proc_start_time(pid)
        if began is not None and began > started_at + 2.0:  # btime has 1 s resolution
            return False
    return True


def last_row(run_dir: Path) -> dict | None:
    """The last complete row of metrics.jsonl, reading only the file's tail."""
    path = Path(run_dir) / "metrics.jsonl"
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 262_144))
            tail = f.read().decode("utf-8", "replace")
    except FileNotFoundError:
        return None
    for line in reversed(tail.splitlines()):
        try:
            return json.loads(line)
        except ValueError:
            continue
    return None


def node_state(info: dict) -> tuple[bool, str]:
    """(alive, words) for the process that wrote node.json."""
    pid = info.get("pid")
    if not info:
        return False, "never started (no node.json)"
    if info.get("stopped_at"):
        return False, f"stopped {_ago(time.time() - info['stopped_at'])} (pid {pid}, clean exit)"
    if pid_alive(pid, info.get("started_at")):
        return True, f"running (pid {pid}, up {_dur(time.time() - info.get('started_at', time.time()))})"
    return False, f"not running (pid {pid} is gone without a clean exit: killed or crashed)"


def sparkline(values: list[float], width: int = 40) -> str:
    vals = [v for v in values if isinstance(v, (int, float))]
    if not vals:
        return ""
    if len(vals) > width:  # bucket means, so the line shows the whole run
        n = len(vals)
        vals = [sum(vals[i * n // width:(i + 1) * n // width]) / max(1, (i + 1) * n // width - i * n // width)
                for i in range(width)]
    lo, hi = min(vals), max(vals)
    span = hi - lo
    return "".join(SPARK[0 if span == 0 else min(len(SPARK) - 1, int((v - lo) / span * len(SPARK)))]
                   for v in vals)


def _dur(s: float) -> str:
    s = max(0.0, s)
    if s < 90:
        return f"{s:.0f} s"
    if s < 5400:
        return f"{s / 60:.0f} min"
    if s < 172_800:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} d"


def _ago(s: float) -> str:
    return f"{_dur(s)} ago"


def _mean(xs: list[float]) -> float | None:
    xs = [x for x in xs if isinstance(x, (int, float))]
    return sum(xs) / len(xs) if xs else None


def collect(run_dir: Path) -> dict:
    """Everything ``sapo status`` shows about a run dir, as a plain dict."""
    run_dir = Path(run_dir)
    info = read_node_json(run_dir)
    alive, state = node_state(info)
    peer_id = info.get("peer_id")
    if not peer_id and (run_dir / "identity.key").is_file():
        try:
            from swarm.identity import load

            peer_id = load(run_dir / "identity.key").peer_id
        except Exception:
            peer_id = None
    model = info.get("model")
    if not model and (run_dir / "config.yaml").is_file():
        import yaml

        try:
            model = ((yaml.safe_load((run_dir / "config.yaml").read_text()) or {}).get("model") or {}).get("name")
        except yaml.YAMLError:
            model = None
    rows = read_rows(run_dir)
    rewards = [r.get("reward_mean") for r in rows]
    last = rows[-1] if rows else {}
    ckpt = last_checkpoint(run_dir)
    now = time.time()
    return {
        "source": str(run_dir), "peer_id": peer_id, "model": model, "swarm_id": info.get("swarm_id"),
        "transport": info.get("transport"), "role": info.get("role"), "addrs": info.get("addrs") or [],
        "metrics_url": info.get("metrics_url"), "alive": alive, "state": state,
        "rounds": len(rows), "round": last.get("round"),
        "reward_last": last.get("reward_mean"),
        "reward_first10": _mean(rewards[:10]), "reward_last10": _mean(rewards[-10:]),
        "sparkline": sparkline(rewards), "loss": last.get("loss"),
        "gen_tps": last.get("gen_tokens_per_s"), "train_tps": last.get("train_tokens_per_s"),
        "round_s": last.get("round_s"),
        "peers": last.get("peers"), "admitted": last.get("admitted"), "rejected": last.get("rejected") or {},
        "groups_local": last.get("local_groups"), "groups_external": last.get("external_groups"),
        "external_total": sum(r.get("external_groups") or 0 for r in rows),
        "bytes_in": last.get("bytes_in"), "bytes_out": last.get("bytes_out"),
        "staleness": last.get("staleness", 0 if rows else None),
        "last_row_age": now - last["time"] if last.get("time") else None,
        "checkpoint_round": ckpt[0] if ckpt else None,
        "checkpoint_age": now - ckpt[1] if ckpt else None,
    }


def collect_url(url: str, timeout: float = 5.0) -> dict:
    """The same summary from a node's Prometheus endpoint (no history: no trend)."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=timeout) as resp:
        text = resp.read().decode()
    samples: dict[str, list[tuple[dict, float]]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            samples.setdefault(s.name, []).append((s.labels, s.value))

    def one(name, **labels):
        for lab, v in samples.get(name, []):
            if all(lab.get(k) == val for k, val in labels.items()):
                return v
        return None

    info = (samples.get("sapo_info") or [({}, 0)])[0][0]
    rnd = one("sapo_round")
    last_t = one("sapo_last_round_timestamp_seconds")
    return {
        "source": url, "peer_id": info.get("peer_id") or None, "model": info.get("model"),
        "swarm_id": info.get("swarm_id") or None, "transport": None, "role": None, "addrs": [],
        "metrics_url": url, "alive": True, "state": "running (endpoint answered)",
        "rounds": None, "round": int(rnd) if rnd is not None else None,
        "reward_last": one("sapo_reward_mean"), "reward_first10": None, "reward_last10": None, "sparkline": "",
        "loss": one("sapo_loss"), "gen_tps": one("sapo_gen_tokens_per_second"),
        "train_tps": one("sapo_train_tokens_per_second"), "round_s": one("sapo_round_seconds"),
        "peers": one("sapo_peers"), "admitted": one("sapo_admitted_total"),
        "rejected": {lab["reason"]: v for lab, v in samples.get("sapo_rejected_total", [])},
        "groups_local": one("sapo_groups", kind="local"), "groups_external": one("sapo_groups", kind="external"),
        "external_total": None,
        "bytes_in": one("sapo_bytes_total", direction="in"), "bytes_out": one("sapo_bytes_total", direction="out"),
        "staleness": one("sapo_staleness"),
        "last_row_age": time.time() - last_t if last_t else None,
        "checkpoint_round": one("sapo_checkpoint_round"), "checkpoint_age": one("sapo_checkpoint_age_seconds"),
    }


# ---------------------------------------------------------------------------------------------
# Showing


def _f(v, fmt: str = "{:.3f}", none: str = "-") -> str:
    if v is None:
        return none
    try:
        return fmt.format(v)
    except (ValueError, TypeError):
        return str(v)


def _bytes(n) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def render(s: dict):
    """A rich renderable of a ``collect``/``collect_url`` summary."""
    from rich.panel import Panel
    from rich.table import Table

    t = Table.grid(padding=(0, 2))
    t.add_column(style="bold")
    t.add_column()
    state_style = "green" if s["alive"] else "yellow"
    t.add_row("process", f"[{state_style}]{s['state']}[/{state_style}]")
    t.add_row("peer id", s["peer_id"] or "- (no identity: swarm off and no identity.key)")
    t.add_row("model", s["model"] or "-")
    if s.get("swarm_id"):
        t.add_row("swarm", f"{s['swarm_id']} via {s.get('transport') or '?'}")
    for i, a in enumerate(s["addrs"][:3]):
        t.add_row("address" if i == 0 else "", a)
    if s.get("metrics_url"):
        t.add_row("metrics", s["metrics_url"] + ("" if s["alive"] else " (not serving: process not running)"))
    t.add_row("peers", _f(s["peers"], "{:.0f}"))
    rnd = _f(s["round"], "{}")
    if s["last_row_age"] is not None:
        rnd += f"  (finished {_ago(s['last_row_age'])})"
    t.add_row("round", rnd)
    if s["reward_first10"] is not None and s["rounds"]:
        delta = s["reward_last10"] - s["reward_first10"]
        t.add_row("reward", f"{s['reward_first10']:.3f} (first 10) -> {s['reward_last10']:.3f} (last 10)  "
                            f"[{'green' if delta >= 0 else 'red'}]{delta:+.3f}[/]")
        t.add_row("", f"[cyan]{s['sparkline']}[/cyan]  {s['rounds']} rounds")
    else:
        t.add_row("reward", _f(s["reward_last"]) + " (last round)")
    t.add_row("loss", _f(s["loss"], "{:+.4f}"))
    t.add_row("throughput", f"gen {_f(s['gen_tps'], '{:,.0f}')} tok/s | train {_f(s['train_tps'], '{:,.0f}')} "
                            f"tok/s | {_f(s['round_s'], '{:.2f}')} s/round")
    groups = f"{_f(s['groups_local'], '{:.0f}')} local + {_f(s['groups_external'], '{:.0f}')} external (last round)"
    if s.get("external_total") is not None:
        groups += f"; {s['external_total']} external in all"
    t.add_row("batch", groups)
    t.add_row("admitted", _f(s["admitted"], "{:.0f}") + " peer groups")
    rej = s["rejected"] or {}
    t.add_row("rejected", ", ".join(f"{k} {v:.0f}" for k, v in sorted(rej.items(), key=lambda kv: -kv[1]))
              if rej else "0")
    t.add_row("bytes", f"in {_bytes(s['bytes_in'])} | out {_bytes(s['bytes_out'])}")
    t.add_row("staleness", _f(s["staleness"], "{:.0f}"))
    ck = "none yet"
    if s["checkpoint_round"] is not None:
        ck = f"round {s['checkpoint_round']:.0f}" + (f", saved {_ago(s['checkpoint_age'])}"
                                                      if s["checkpoint_age"] is not None else "")
    t.add_row("checkpoint", ck)
    return Panel(t, title=f"sapo status: {s['source']}", title_align="left", expand=False)


# ---------------------------------------------------------------------------------------------
# Health


def health(run_dir: Path, max_age: float = 300.0, now: float | None = None) -> tuple[bool, str]:
    """(healthy, one line): the node's process is alive and finished a round within ``max_age`` seconds
    (counting from its start, so a node still building its model or resuming is not reported dead)."""
    run_dir = Path(run_dir)
    now = time.time() if now is None else now
    info = read_node_json(run_dir)
    if not info:
        return False, f"unhealthy: no node.json in {run_dir} (not started yet, or the wrong run dir)"
    alive, state = node_state(info)
    if not alive:
        return False, f"unhealthy: node {state}"
    if info.get("role") == "bootstrap":
        return True, f"ok: bootstrap peer {state}"
    row = last_row(run_dir)
    started = float(info.get("started_at") or 0.0)
    row_t = float(row.get("time") or 0.0) if row else 0.0
    if row_t >= started:
        age = now - row_t
        if age > max_age:
            return False, (f"unhealthy: no round finished for {age:.0f} s (max {max_age:.0f} s); "
                           f"last was round {row.get('round')}")
        return True, f"ok: pid {info.get('pid')}, round {row.get('round')} finished {age:.0f} s ago"
    age = now - started
    if age > max_age:
        return False, f"unhealthy: started {age:.0f} s ago and no round finished yet (max {max_age:.0f} s)"
    return True, f"ok: pid {info.get('pid')} starting ({age:.0f} s), no round yet"
