"""``sapo simulate``: run a scenario as real `sapo run` OS processes on 127.0.0.1 and report on it.

Every node is ``python -m node.cli run --run-dir OUT/nodes/<name> ...`` with a real transport; the harness
only starts, signals and watches processes (by pid, never by name) and reads their run dirs
(node.json, metrics.jsonl). Counters in metrics.jsonl are cumulative per process lifetime, so a restarted
node's counters are summed over its lifetimes (a drop in a counter marks a restart).

Writes ``OUT/report.json``, ``OUT/summary.md``, ``OUT/rewards.png`` (reward curves and cumulative reward
per node), plus each node's log and run dir under ``OUT/nodes/``.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from node.metrics import read_rows
from swarm.sim.scenario import Scenario


@dataclass
class NodeProc:
    name: str
    role: str
    group: str
    seed: int
    cmd: list[str]
    run_dir: Path
    log: Path
    proc: subprocess.Popen | None = None
    exits: list[int] = field(default_factory=list)
    expected_exit: bool = False
    crashed: bool = False

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def lifetime_total(rows: list[dict], key: str) -> int:
    """Sum a per-process cumulative counter over process lifetimes (it restarts from 0 after a restart)."""
    total, prev = 0, 0
    for r in rows:
        v = r.get(key) or 0
        if v < prev:
            total += prev
        prev = v
    return total + prev


def lifetime_dict_total(rows: list[dict], key: str) -> dict[str, int]:
    reasons = sorted({k for r in rows for k in (r.get(key) or {})})
    return {k: lifetime_total([{k: (r.get(key) or {}).get(k, 0)} for r in rows], k) for k in reasons}


class Simulation:
    def __init__(self, scenario: Scenario, out: Path, live: bool = True, python: str = sys.executable,
                 console=None):
        self.sc = scenario
        self.out = Path(out)
        self.live = live
        self.python = python
        from rich.console import Console

        self.console = console or Console()
        self.swarm_id = f"sim-{scenario.name}-{os.getpid()}"
        self.nodes: list[NodeProc] = []
        self.bootstrap: subprocess.Popen | None = None
        self.t0 = 0.0

    # ------------------------------------------------------------------ processes
    def _spawn(self, cmd: list[str], log: Path) -> subprocess.Popen:
        f = open(log, "a")
        try:
            return subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env={**os.environ, "PYTHONUNBUFFERED": "1"})
        finally:
            f.close()

    def _wait_node_json(self, run_dir: Path, proc: subprocess.Popen, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            info = _read_json(run_dir / "node.json")
            if info and info.get("pid") == proc.pid:
                return info
            if proc.poll() is not None:
                raise RuntimeError(f"process {proc.args[3:5]} exited with {proc.returncode} before listening; "
                                   f"see its log")
            time.sleep(0.2)
        raise TimeoutError(f"no node.json in {run_dir} after {timeout} s")

    def _node_cmd(self, name: str, group, seed: int, peers: str | None) -> list[str]:
        cmd = [self.python, "-m", "node.cli", "run", "--run-dir", str(self.out / "nodes" / name),
               "--set", f"seed={seed}", "--set", f"swarm.swarm_id={self.swarm_id}"]
        if peers:
            cmd += ["--peers", peers]
        if self.sc.rounds is not None:
            cmd += ["--rounds", str(self.sc.rounds)]
        for item in [*self.sc.set, *group.set]:
            cmd += ["--set", item]
        if group.role != "honest":
            cmd += ["--set", f"adversary.role={group.role}"]
        return cmd

    def start_all(self) -> None:
        (self.out / "nodes").mkdir(parents=True, exist_ok=True)
        self.t0 = time.monotonic()
        peers = None
        if self.sc.bootstrap:
            bdir = self.out / "bootstrap"
            self.bootstrap = self._spawn([self.python, "-m", "node.cli", "bootstrap", "--run-dir", str(bdir),
                                          "--set", f"swarm.swarm_id={self.swarm_id}", *[
                                              a for item in self.sc.set if item.startswith("swarm.transport")
                                              for a in ("--set", item)]],
                                         self.out / "bootstrap.log")
            peers = self._wait_node_json(bdir, self.bootstrap, 120)["addrs"][0]
        for i, (name, group, seed) in enumerate(self.sc.nodes()):
            run_dir = self.out / "nodes" / name
            node = NodeProc(name, group.role, group.name, seed, [], run_dir, self.out / "nodes" / f"{name}.log")
            node.cmd = self._node_cmd(name, group, seed, peers)
            node.proc = self._spawn(node.cmd, node.log)
            self.nodes.append(node)
            if peers is None:  # no bootstrap peer: everyone joins through the first node
                peers = self._wait_node_json(run_dir, node.proc, 300)["addrs"][0]

    def _node(self, name: str) -> NodeProc:
        return next(n for n in self.nodes if n.name == name)

    def _stop(self, node: NodeProc, sig=signal.SIGTERM, wait: float = 60.0) -> None:
        if not node.alive():
            return
        node.expected_exit = True
        node.proc.send_signal(sig)
        try:
            node.proc.wait(wait)
        except subprocess.TimeoutExpired:
            node.proc.kill()
            node.proc.wait(10)
        node.exits.append(node.proc.returncode)

    def _due(self, event, elapsed: float) -> bool:
        if event.at is not None:
            return event.at <= elapsed
        rows = read_rows(self._node(event.node).run_dir)
        return bool(rows) and rows[-1]["round"] >= event.at_round

    def apply(self, event) -> None:
        node = self._node(event.node)
        self.console.print(f"[{time.monotonic() - self.t0:6.1f} s] {event.action} {event.node}")
        if event.action in ("stop", "restart"):
            self._stop(node)
        elif event.action == "kill9":
            self._stop(node, signal.SIGKILL)
        if event.action in ("start", "restart") and not node.alive():
            node.expected_exit = False
            node.proc = self._spawn(node.cmd, node.log)

    def stop_all(self) -> None:
        for n in self.nodes:
            self._stop(n)
        if self.bootstrap is not None and self.bootstrap.poll() is None:
            self.bootstrap.terminate()
            try:
                self.bootstrap.wait(30)
            except subprocess.TimeoutExpired:
                self.bootstrap.kill()
                self.bootstrap.wait(10)

    # ------------------------------------------------------------------ the loop
    def _table(self):
        from rich.table import Table

        t = Table(title=f"{self.sc.name}  t={time.monotonic() - self.t0:.0f}s  swarm {self.swarm_id}")
        for col in ("node", "role", "state", "round", "reward", "ext", "peers", "admitted", "rejected"):
            t.add_column(col, justify="right" if col not in ("node", "role", "state") else "left")
        for n in self.nodes:
            rows = read_rows(n.run_dir)
            last = rows[-1] if rows else {}
            rej = sum((last.get("rejected") or {}).values())
            t.add_row(n.name, n.role, "running" if n.alive() else f"exit {n.proc.returncode}",
                      str(last.get("round", "-")), f"{last.get('reward_mean', 0):.3f}" if last else "-",
                      str(last.get("external_groups", "-")), str(last.get("peers", "-")),
                      str(last.get("admitted", "-")), str(rej))
        return t

    def run(self) -> dict:
        from rich.live import Live

        events = list(self.sc.events)  # fired in file order, each once its trigger holds
        try:
            self.start_all()
            with Live(self._table(), console=self.console, refresh_per_second=1,
                      transient=False) if self.live else _Null() as live:
                while True:
                    elapsed = time.monotonic() - self.t0
                    while events and self._due(events[0], elapsed):
                        self.apply(events.pop(0))
                    for n in self.nodes:
                        if n.proc is not None and not n.alive() and n.proc.returncode is not None \
                                and n.proc.returncode != 0 and not n.expected_exit:
                            n.crashed = True
                    if self.live:
                        live.update(self._table())
                    if self.sc.duration_s is not None and elapsed >= self.sc.duration_s:
                        break
                    if self.sc.rounds is not None and not events and not any(n.alive() for n in self.nodes):
                        break
                    if elapsed > self.sc.timeout_s:
                        self.console.print(f"timeout after {self.sc.timeout_s} s: stopping every node")
                        break
                    time.sleep(0.5)
        finally:
            self.stop_all()
        for n in self.nodes:
            if n.proc is not None and n.proc.returncode not in (0, None) and not n.expected_exit:
                n.crashed = True
        report = self.report()
        self.write(report)
        return report

    # ------------------------------------------------------------------ results
    def report(self) -> dict:
        nodes = []
        for n in self.nodes:
            rows = read_rows(n.run_dir)
            info = _read_json(n.run_dir / "node.json") or {}
            rewards = [r["reward_mean"] for r in rows]
            nodes.append({
                "name": n.name, "group": n.group, "role": n.role, "seed": n.seed,
                "peer_id": info.get("peer_id"),
                "rounds": rows[-1]["round"] if rows else 0,
                "cumulative_reward": sum(rewards),
                "final_reward": statistics.fmean(rewards[-10:]) if rewards else 0.0,
                "first_reward": statistics.fmean(rewards[:10]) if rewards else 0.0,
                "external_groups_used": sum(r.get("external_groups", 0) for r in rows),
                "admitted": lifetime_total(rows, "admitted"),
                "rejected": lifetime_dict_total(rows, "rejected"),
                "hostile_sent": lifetime_dict_total(rows, "hostile_sent"),
                "admitted_from": lifetime_dict_total(rows, "admitted_from"),
                "crashed": n.crashed,
                "exit_code": n.proc.returncode if n.proc is not None else None,
            })
        honest = [x for x in nodes if x["role"] == "honest"]
        # Admitted groups signed by an adversary, per honest node (a flooder's valid envelopes are admitted
        # up to the per-peer rate limit by design; every other role's must be zero).
        hostile_ids = {x["peer_id"]: x["role"] for x in nodes if x["role"] != "honest" and x["peer_id"]}
        for x in honest:
            x["admitted_from_adversaries"] = {hostile_ids[p]: n for p, n in x["admitted_from"].items()
                                              if p in hostile_ids}
        rejected: dict[str, int] = {}
        for x in honest:
            for k, v in x["rejected"].items():
                rejected[k] = rejected.get(k, 0) + v
        hostile: dict[str, int] = {}
        for x in nodes:
            for k, v in x["hostile_sent"].items():
                hostile[k] = hostile.get(k, 0) + v
        return {
            "scenario": self.sc.name,
            "swarm_id": self.swarm_id,
            "wall_s": time.monotonic() - self.t0,
            "nodes": nodes,
            "totals": {
                "honest_nodes": len(honest),
                "honest_cumulative_reward": sum(x["cumulative_reward"] for x in honest),
                "honest_final_reward_mean": statistics.fmean(x["final_reward"] for x in honest) if honest else 0,
                "honest_external_groups_used": sum(x["external_groups_used"] for x in honest),
                "honest_admitted": sum(x["admitted"] for x in honest),
                "honest_rejected": rejected,
                "hostile_sent": hostile,
                "admitted_from_adversaries": {role: sum(x["admitted_from_adversaries"].get(role, 0) for x in honest)
                                              for role in sorted(set(hostile_ids.values()))},
                "crashed_nodes": [x["name"] for x in nodes if x["crashed"]],
            },
        }

    def write(self, report: dict) -> None:
        (self.out / "report.json").write_text(json.dumps(report, indent=1))
        lines = [f"# Simulation `{report['scenario']}`", "",
                 f"{len(report['nodes'])} nodes, {report['wall_s']:.0f} s wall, swarm `{report['swarm_id']}`.", "",
                 "| node | role | rounds | cumulative reward | first 10 | last 10 | external used | admitted | "
                 "rejected | crashed |", "|---|---|---|---|---|---|---|---|---|---|"]
        for x in report["nodes"]:
            rej = ", ".join(f"{k} {v}" for k, v in x["rejected"].items()) or "0"
            lines.append(f"| {x['name']} | {x['role']} | {x['rounds']} | {x['cumulative_reward']:.1f} | "
                         f"{x['first_reward']:.3f} | {x['final_reward']:.3f} | {x['external_groups_used']} | "
                         f"{x['admitted']} | {rej} | {'yes' if x['crashed'] else 'no'} |")
        t = report["totals"]
        lines += ["", f"Honest cumulative reward {t['honest_cumulative_reward']:.1f}; hostile envelopes sent "
                  f"{sum(t['hostile_sent'].values())} {t['hostile_sent']}; rejected by honest nodes "
                  f"{t['honest_rejected']}; crashed: {t['crashed_nodes'] or 'none'}."]
        try:
            from node.report import plot_runs

            plot_runs([self.out / "nodes" / x["name"] for x in report["nodes"] if x["rounds"]],
                      self.out / "rewards.png", labels=[f"{x['name']} ({x['role']})" for x in report["nodes"]
                                                        if x["rounds"]], title=report["scenario"])
            lines += ["", "![rewards](rewards.png)"]
        except ImportError as exc:  # plotting needs matplotlib; the report stands without it
            lines += ["", f"(no plot: {exc})"]
        (self.out / "summary.md").write_text("\n".join(lines) + "\n")


class _Null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
