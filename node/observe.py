"""Watching a node from outside: the Prometheus endpoint and ``RUN_DIR/node.json``.

With ``metrics.port`` set (0 = any free port) the node serves ``http://metrics.host:PORT/metrics`` and writes
that URL to ``RUN_DIR/node.json`` as ``metrics_url``. The values are taken from the same per-round row that
goes to ``metrics.jsonl``, once per round, so the endpoint and the file never disagree. Metric names:

| name | type | meaning |
| --- | --- | --- |
| ``sapo_info{peer_id,model,swarm_id}`` | gauge (1) | identity of the node |
| ``sapo_round`` | gauge | last finished round |
| ``sapo_reward_mean`` | gauge | mean reward of the round's own completions |
| ``sapo_loss`` | gauge | GRPO loss of the round |
| ``sapo_gen_tokens_per_second``, ``sapo_train_tokens_per_second`` | gauge | throughput of the round |
| ``sapo_round_seconds`` | gauge | wall time of the round |
| ``sapo_groups{kind="local|external"}`` | gauge | groups in the round's training batch |
| ``sapo_admitted_total`` | counter | peer groups admitted (since the process started) |
| ``sapo_rejected_total{reason}`` | counter | peer envelopes rejected, by admission reason (a reason appears with its first rejection) |
| ``sapo_published_total`` | counter | own groups published |
| ``sapo_peers`` | gauge | connected peers |
| ``sapo_bytes_total{direction="in|out"}`` | counter | transport bytes |
| ``sapo_transport_events_total{kind}`` | counter | the transport backend's own counts (failed dials and fetches, dropped frames, re-opened streams) |
| ``sapo_staleness`` | gauge | policy versions between the generating and the trained policy (0 in sync mode) |
| ``sapo_tis_ess`` | gauge | effective sample size (fraction) of the round's off-policy token weights |
| ``sapo_wait_seconds{side="generator|trainer"}`` | gauge | async mode: time the generator waited for the staleness bound / the trainer for a round |
| ``sapo_peers_ignored``, ``sapo_peers_penalized`` | gauge | peers whose reputation penalty ignores them / lowers their sampling weight |
| ``sapo_checkpoint_round`` | gauge | round of the newest checkpoint |
| ``sapo_checkpoint_age_seconds`` | gauge | seconds since the newest checkpoint was saved (at scrape time) |
| ``sapo_last_round_timestamp_seconds`` | gauge | unix time the last round finished (alert on ``time() - x``) |
| ``process_*`` | | resident memory, CPU seconds, open fds of the node process |

Each node has its own ``CollectorRegistry`` (not prometheus_client's global one), so several nodes or tests
can run in one process. ``NodeObserver`` bundles what the runtime calls: start, per round, per checkpoint,
close (stops the HTTP server and marks node.json stopped).
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from pathlib import Path

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

METRIC_NAMES = (
    "sapo_info", "sapo_round", "sapo_reward_mean", "sapo_loss", "sapo_gen_tokens_per_second",
    "sapo_train_tokens_per_second", "sapo_round_seconds", "sapo_groups", "sapo_admitted_total",
    "sapo_rejected_total", "sapo_published_total", "sapo_peers", "sapo_bytes_total", "sapo_staleness",
    "sapo_checkpoint_round", "sapo_checkpoint_age_seconds", "sapo_last_round_timestamp_seconds",
    "sapo_tis_ess", "sapo_wait_seconds", "sapo_peers_ignored", "sapo_peers_penalized", "sapo_transport_events_total",
)
_CKPT = re.compile(r"^round-(\d{6,})$")


# ---------------------------------------------------------------------------------------------
# node.json and checkpoints, read without torch (also used by `sapo status` / `sapo health`)


def read_node_json(run_dir: Path) -> dict:
    path = Path(run_dir) / "node.json"
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return {}


def merge_node_json(run_dir: Path, fields: dict, replace: bool = False) -> dict:
    """Merge ``fields`` into RUN_DIR/node.json (``replace``: start from an empty object); atomic."""
    path = Path(run_dir) / "node.json"
    info = {} if replace else read_node_json(run_dir)
    info.update(fields)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".json.tmp{os.getpid()}")
    tmp.write_text(json.dumps(info, indent=1))
    os.replace(tmp, path)
    return info


def last_checkpoint(run_dir: Path) -> tuple[int, float] | None:
    """(round, saved_at unix time) of the newest complete checkpoint, or None."""
    root = Path(run_dir) / "checkpoints"
    best = None
    if root.is_dir():
        for p in root.iterdir():
            m = _CKPT.match(p.name)
            if m and (p / "state.json").is_file() and (best is None or int(m.group(1)) > best[0]):
                best = (int(m.group(1)), p)
    if best is None:
        return None
    try:
        saved_at = float(json.loads((best[1] / "state.json").read_text()).get("saved_at", 0.0))
    except (ValueError, OSError):
        saved_at = (best[1] / "state.json").stat().st_mtime
    return best[0], saved_at


def local_url(host: str, port: int) -> str:
    """The URL a local tool uses to reach a server bound to ``host`` (wildcards mean this machine)."""
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}/metrics"


# ---------------------------------------------------------------------------------------------
# The exporter


def _num(value, default: float = 0.0) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return default
    return v if math.isfinite(v) else float("nan")


class _RowCollector:
    """Turns the latest metrics.jsonl row into metric families at scrape time (so ages are current)."""

    def __init__(self, info: dict):
        self.info = info
        self.row: dict | None = None
        self.checkpoint: tuple[int, float] | None = None

    def collect(self):
        info = GaugeMetricFamily("sapo_info", "Identity of this node", labels=["peer_id", "model", "swarm_id"])
        info.add_metric([str(self.info.get(k) or "") for k in ("peer_id", "model", "swarm_id")], 1.0)
        yield info
        ckpt = self.checkpoint
        if ckpt is not None:
            yield GaugeMetricFamily("sapo_checkpoint_round", "Round of the newest checkpoint", value=ckpt[0])
            yield GaugeMetricFamily("sapo_checkpoint_age_seconds", "Seconds since the newest checkpoint was saved",
                                    value=max(0.0, time.time() - ckpt[1]))
        row = self.row
        if row is None:
            return
        gauges = [
            ("sapo_round", "Last finished round", row.get("round")),
            ("sapo_reward_mean", "Mean reward of this node's own completions in the last round",
             row.get("reward_mean")),
            ("sapo_loss", "GRPO loss of the last round", row.get("loss")),
            ("sapo_gen_tokens_per_second", "Generation throughput of the last round", row.get("gen_tokens_per_s")),
            ("sapo_train_tokens_per_second", "Training throughput of the last round",
             row.get("train_tokens_per_s")),
            ("sapo_round_seconds", "Wall time of the last round", row.get("round_s")),
            ("sapo_peers", "Connected peers", row.get("peers", 0)),
            ("sapo_staleness", "Policy versions between the generating and the trained policy (0 in sync mode)",
             row.get("staleness", 0)),
            ("sapo_last_round_timestamp_seconds", "Unix time the last round finished", row.get("time")),
            ("sapo_tis_ess", "Effective sample size (fraction) of the last round's off-policy token weights",
             row.get("tis_ess", 1.0)),
            ("sapo_peers_ignored", "Peers ignored for their reputation penalty", row.get("reputation_ignored", 0)),
            ("sapo_peers_penalized", "Peers sampled less for their reputation penalty",
             row.get("reputation_penalized", 0)),
        ]
        for name, doc, value in gauges:
            yield GaugeMetricFamily(name, doc, value=_num(value, float("nan")))
        groups = GaugeMetricFamily("sapo_groups", "Groups in the last round's training batch", labels=["kind"])
        groups.add_metric(["local"], _num(row.get("local_groups")))
        groups.add_metric(["external"], _num(row.get("external_groups")))
        yield groups
        waits = GaugeMetricFamily("sapo_wait_seconds", "Async mode: waits in the last round (generator: for the "
                                  "staleness bound; trainer: for a generated round)", labels=["side"])
        waits.add_metric(["generator"], _num(row.get("gen_wait_s")))
        waits.add_metric(["trainer"], _num(row.get("train_wait_s")))
        yield waits
        yield CounterMetricFamily("sapo_admitted", "Peer groups admitted since the process started",
                                  value=_num(row.get("admitted")))
        yield CounterMetricFamily("sapo_published", "Own groups published since the process started",
                                  value=_num(row.get("published")))
        rejected = CounterMetricFamily("sapo_rejected", "Peer envelopes rejected since the process started, by "
                                       "reason", labels=["reason"])
        for reason, n in sorted((row.get("rejected") or {}).items()):
            rejected.add_metric([str(reason)], _num(n))
        yield rejected
        nbytes = CounterMetricFamily("sapo_bytes", "Transport bytes since the process started",
                                     labels=["direction"])
        nbytes.add_metric(["in"], _num(row.get("bytes_in")))
        nbytes.add_metric(["out"], _num(row.get("bytes_out")))
        yield nbytes
        events = CounterMetricFamily("sapo_transport_events", "Transport backend events since the process started "
                                     "(failed dials and fetches, dropped frames, re-opened streams), by kind",
                                     labels=["kind"])
        for kind, n in sorted((row.get("transport_events") or {}).items()):
            events.add_metric([str(kind)], _num(n))
        yield events


class Exporter:
    """A node's Prometheus endpoint: its own registry and HTTP server thread."""

    def __init__(self, info: dict | None = None, process_metrics: bool = True):
        self.registry = CollectorRegistry(auto_describe=False)
        self.collector = _RowCollector(dict(info or {}))
        self.registry.register(self.collector)
        if process_metrics:
            ProcessCollector(registry=self.registry)
        self.server = None
        self.thread = None
        self.url: str | None = None

    @property
    def info(self) -> dict:
        return self.collector.info

    def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve ``/metrics``; returns the URL with the real port (``port=0`` picks a free one)."""
        from prometheus_client import start_http_server

        self.server, self.thread = start_http_server(port, addr=host, registry=self.registry)
        self.url = local_url(host, self.server.server_port)
        return self.url

    def update(self, row: dict) -> None:
        self.collector.row = dict(row)

    def checkpoint_saved(self, round_idx: int, saved_at: float | None = None) -> None:
        self.collector.checkpoint = (round_idx, time.time() if saved_at is None else saved_at)

    def text(self) -> str:
        from prometheus_client import generate_latest

        return generate_latest(self.registry).decode()

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None
        if self.thread is not None:
            self.thread.join(5)
            self.thread = None


# ---------------------------------------------------------------------------------------------
# What the runtime calls


def _peer_id_of(cfg, run_dir: Path, exchange) -> str | None:
    ident = getattr(exchange, "identity", None)
    if ident is not None:
        return ident.peer_id
    # A node with the swarm off has no transport, but may have a key from earlier swarm runs.
    try:
        from swarm.exchange import identity_path
        from swarm.identity import load

        path = identity_path(cfg.swarm, run_dir)
        return load(path).peer_id if path.is_file() else None
    except Exception:  # an unreadable key is the swarm's business, not the observer's
        return None


class NodeObserver:
    """Log context, Prometheus exporter and node.json for one running node."""

    def __init__(self, cfg, run_dir: Path, exchange=None, log=print):
        from node.logs import set_context

        self.run_dir = Path(run_dir)
        self.log = log
        self.peer_id = _peer_id_of(cfg, self.run_dir, exchange)
        set_context(log, peer_id=self.peer_id)
        self.started_at = time.time()
        fields: dict = {"pid": os.getpid(), "started_at": self.started_at, "model": cfg.model.name,
                        "metrics_url": None}
        if not cfg.swarm.enabled:
            # No transport wrote node.json: write a fresh one (old addresses would be stale).
            fields.update({"peer_id": self.peer_id, "addrs": [], "swarm_id": None, "transport": None,
                           "role": "node"})
        self.exporter: Exporter | None = None
        if cfg.metrics.port is not None:
            self.exporter = Exporter({"peer_id": self.peer_id, "model": cfg.model.name,
                                      "swarm_id": cfg.swarm.swarm_id if cfg.swarm.enabled else ""})
            ckpt = last_checkpoint(self.run_dir)
            if ckpt is not None:
                self.exporter.checkpoint_saved(*ckpt)
            try:
                fields["metrics_url"] = self.exporter.start(cfg.metrics.host, cfg.metrics.port)
            except OSError as exc:
                self.exporter = None
                raise OSError(f"metrics endpoint: cannot listen on {cfg.metrics.host}:{cfg.metrics.port} "
                              f"({exc}); pick another metrics.port (0 = any free port)") from exc
            log(f"metrics at {fields['metrics_url']}")
        merge_node_json(self.run_dir, fields, replace=not cfg.swarm.enabled)

    def round_started(self, round_idx: int) -> None:
        from node.logs import set_context

        set_context(self.log, round=round_idx)

    def update(self, row: dict) -> None:
        if self.exporter is not None:
            self.exporter.update(row)

    def checkpoint_saved(self, round_idx: int) -> None:
        if self.exporter is not None:
            self.exporter.checkpoint_saved(round_idx)

    def close(self) -> None:
        if self.exporter is not None:
            self.exporter.stop()
            self.exporter = None
        # Only mark our own node.json: a restarted node may already have replaced it.
        if read_node_json(self.run_dir).get("pid") == os.getpid():
            try:
                merge_node_json(self.run_dir, {"stopped_at": time.time()})
            except OSError as exc:  # e.g. the disk is full: the node is stopping anyway, say so and go on
                self.log(f"could not mark {self.run_dir / 'node.json'} as stopped: {exc}")
