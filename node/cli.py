"""``sapo``: the node's command line.

    sapo run [--config PATH] [--run-dir DIR] [--rounds N] [--set dotted.key=value ...]
    sapo config [--config PATH] [--set ...]        print the resolved config and exit
    sapo status [RUN_DIR | URL]                    one screen on a running or finished node
    sapo report RUN_DIR... --out FILE.png          reward curves of one or more runs
    sapo health [RUN_DIR] [--max-age S]            exit 0 if alive and training (for health checks)

The config is parsed and checked before torch or transformers are imported, so ``--help`` and config
errors answer in well under a second.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from node.config import ConfigError, dump_config, load_config

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="sapo-swarm: a decentralized swarm training node (GRPO + SAPO rollout sharing).")
console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)

ConfigOpt = typer.Option(None, "--config", "-c", help="YAML config file (default: the built-in offline "
                         "CPU config, the same as configs/local.yaml).")
SetOpt = typer.Option(None, "--set", "-s", help="Override one key, e.g. --set train.lr=1e-4 (repeatable).")


def _load(config: Optional[Path], sets: Optional[list[str]], extra: dict | None = None):
    try:
        return load_config(config, sets or [], extra)
    except ConfigError as exc:
        err_console.print(f"[red]error:[/red] {exc}", markup=True)
        raise typer.Exit(2)


def _csv(text: str) -> list[str]:
    """``a, b,,c`` -> ``["a", "b", "c"]`` (comma-separated multiaddr options)."""
    return [x.strip() for x in text.split(",") if x.strip()]


@app.command()
def run(
    config: Optional[Path] = ConfigOpt,
    run_dir: Path = typer.Option(Path("runs/node"), "--run-dir", "-o", help="Where metrics.jsonl, "
                                 "config.yaml and checkpoints/ go; an existing run dir is resumed."),
    rounds: Optional[int] = typer.Option(None, "--rounds", "-n", min=1, help="Stop after this round "
                                         "(counted from the run's start). Default: train until stopped."),
    peers: Optional[str] = typer.Option(None, "--peers", "-p", help="Bootstrap multiaddrs, comma-separated "
                                        "(same as swarm.initial_peers). Without: first node of a new swarm."),
    transport: Optional[str] = typer.Option(None, "--transport", help="Transport backend (swarm.transport.type)."),
    sets: Optional[list[str]] = SetOpt,
) -> None:
    """Run a node: generate rollouts, reward them, share them, train with GRPO; resume if RUN_DIR has a checkpoint."""
    extra: dict = {}
    if rounds is not None:
        extra["rounds"] = rounds
    if peers:
        extra["swarm.initial_peers"] = _csv(peers)
    if transport:
        extra["swarm.transport.type"] = transport
    cfg = _load(config, sets, extra)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    from node.logs import node_log
    from node.runtime import Node

    log = node_log(cfg.logging)  # text: these console lines as before; json: one object per line
    log(f"sapo node | model {cfg.model.name} | tasks "
        + ", ".join(s.dataset for s in cfg.tasks.mix)
        + f" | G={cfg.generation.group_size} I={cfg.sapo.local_groups} J={cfg.sapo.external_groups}"
        + f" | run dir {run_dir} | rounds {cfg.rounds or 'until stopped (Ctrl-C saves and exits)'}")
    log(f"watch it: sapo status {run_dir} | plot: sapo report {run_dir} --out reward.png"
        + ("" if cfg.metrics.port is not None else " | Prometheus: --set metrics.port=0"))
    code = Node(cfg, run_dir, log=log).run()
    raise typer.Exit(code)


@app.command()
def keygen(
    path: Path = typer.Option(..., "--path", help="Where to write the Ed25519 key (mode 0600)."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing key (its peer id is lost)."),
) -> None:
    """Create a node identity key and print its peer id."""
    from swarm.identity import Identity, save

    if path.exists() and not force:
        err_console.print(f"error: {path} exists; pass --force to replace it (the old peer id is lost)")
        raise typer.Exit(1)
    ident = Identity.generate()
    save(ident, path)
    console.print(ident.peer_id)


@app.command("id")
def show_id(
    path: Optional[Path] = typer.Option(None, "--path", help="Key file."),
    run_dir: Optional[Path] = typer.Option(None, "--run-dir", help="Run dir whose identity.key to read."),
) -> None:
    """Print the peer id of a key file (or of a run dir's identity.key)."""
    from swarm.identity import IdentityError, load

    key = path or ((run_dir or Path("runs/node")) / "identity.key")
    try:
        console.print(load(key).peer_id)
    except FileNotFoundError:
        err_console.print(f"error: no key at {key}; create one with `sapo keygen --path {key}` or run a node")
        raise typer.Exit(1)
    except IdentityError as exc:
        err_console.print(f"error: {exc}")
        raise typer.Exit(1)


@app.command()
def bootstrap(
    config: Optional[Path] = ConfigOpt,
    run_dir: Path = typer.Option(Path("runs/bootstrap"), "--run-dir", "-o", help="Where node.json and "
                                 "identity.key go."),
    listen: Optional[str] = typer.Option(None, "--listen", help="Listen multiaddrs, comma-separated "
                                         "(swarm.transport.listen), e.g. /ip4/0.0.0.0/tcp/31337."),
    peers: Optional[str] = typer.Option(None, "--peers", "-p", help="Other bootstrap peers to connect to."),
    transport: Optional[str] = typer.Option(None, "--transport", help="Transport backend (swarm.transport.type)."),
    relay: bool = typer.Option(False, "--relay", help="Also act as a circuit relay v2 for nodes behind NAT "
                               "(swarm.transport.relay.hop; libp2p transport only)."),
    sets: Optional[list[str]] = SetOpt,
) -> None:
    """Run a lightweight peer that trains nothing and helps others find each other (a DHT node), and with
    --relay relays connections to nodes behind NAT."""
    extra: dict = {}
    if transport:
        extra["swarm.transport.type"] = transport
    if listen:
        extra["swarm.transport.listen"] = _csv(listen)
    if peers:
        extra["swarm.initial_peers"] = _csv(peers)
    cfg = _load(config, sets, extra)
    if relay:
        if cfg.swarm.transport.type != "libp2p":
            err_console.print("error: --relay needs the libp2p transport (circuit relay v2); add --transport libp2p")
            raise typer.Exit(2)
        cfg = _load(config, sets, {**extra, "swarm.transport.relay.hop": True})
    from swarm.bootstrap import run_bootstrap

    raise typer.Exit(run_bootstrap(cfg, run_dir, log=lambda m: console.print(m, markup=False, soft_wrap=True)))


@app.command()
def simulate(
    scenario: Path = typer.Option(..., "--scenario", help="Scenario YAML (see configs/sim/)."),
    out: Path = typer.Option(..., "--out", help="Output dir: report.json, summary.md, rewards.png, nodes/."),
    rounds: Optional[int] = typer.Option(None, "--rounds", min=1, help="Override the scenario's round budget."),
    duration: Optional[float] = typer.Option(None, "--duration", help="Override the wall-clock budget (s)."),
    live: bool = typer.Option(True, "--live/--no-live", help="Show the live table."),
) -> None:
    """Run a swarm of real local `sapo run` processes from a scenario (churn, adversaries) and report."""
    from swarm.sim.runner import Simulation
    from swarm.sim.scenario import load_scenario

    overrides = {k: v for k, v in {"rounds": rounds, "duration_s": duration}.items() if v is not None}
    try:
        sc = load_scenario(scenario, overrides)
    except ConfigError as exc:
        err_console.print(f"error: {exc}")
        raise typer.Exit(2)
    if out.exists() and any(out.iterdir()):
        err_console.print(f"error: {out} is not empty; pick a new --out (runs there would be resumed)")
        raise typer.Exit(2)
    report = Simulation(sc, out, live=live, console=console).run()
    t = report["totals"]
    console.print(f"wrote {out / 'report.json'}, {out / 'summary.md'}; honest cumulative reward "
                  f"{t['honest_cumulative_reward']:.1f}, rejected {t['honest_rejected']}, "
                  f"crashed {t['crashed_nodes'] or 'none'}")
    raise typer.Exit(1 if t["crashed_nodes"] else 0)


@app.command()
def status(
    target: str = typer.Argument("runs/node", help="A run dir, or a node's metrics URL "
                                 "(http://HOST:PORT/metrics)."),
) -> None:
    """One screen on a running or finished node: identity, peers, round, reward trend, rejections, checkpoint."""
    from node.status import collect, collect_url, render

    if target.startswith(("http://", "https://")):
        try:
            summary = collect_url(target)
        except OSError as exc:
            err_console.print(f"error: cannot read {target}: {exc}")
            raise typer.Exit(1)
    else:
        if not Path(target).is_dir():
            err_console.print(f"error: {target} is not a run dir; pass the --run-dir of `sapo run` or a metrics URL")
            raise typer.Exit(1)
        summary = collect(Path(target))
    console.print(render(summary))


@app.command()
def report(
    run_dirs: list[Path] = typer.Argument(..., help="One or more run dirs."),
    out: Path = typer.Option(..., "--out", help="PNG file to write."),
    labels: Optional[str] = typer.Option(None, "--labels", help="Comma-separated legend labels, one per run."),
    title: Optional[str] = typer.Option(None, "--title", help="Figure title."),
) -> None:
    """Plot reward curves (moving average, raw faint) and cumulative reward of one or more runs into a PNG."""
    from node.report import plot_runs

    names = [x.strip() for x in labels.split(",")] if labels else None
    try:
        path = plot_runs(run_dirs, out, labels=names, title=title)
    except (FileNotFoundError, ValueError) as exc:
        err_console.print(f"error: {exc}")
        raise typer.Exit(1)
    console.print(f"wrote {path}")


@app.command()
def health(
    run_dir: Path = typer.Argument(Path("runs/node"), help="The node's run dir."),
    max_age: float = typer.Option(300.0, "--max-age", help="Unhealthy when no round finished for this many "
                                  "seconds."),
) -> None:
    """Exit 0 if the node's process is alive and finished a round within --max-age seconds, else 1 (says why)."""
    from node.status import health as check

    ok, line = check(run_dir, max_age)
    (console if ok else err_console).print(line, markup=False)
    raise typer.Exit(0 if ok else 1)


@app.command("config")
def show_config(config: Optional[Path] = ConfigOpt, sets: Optional[list[str]] = SetOpt) -> None:
    """Print the resolved config (defaults < file < --set) as YAML."""
    cfg = _load(config, sets)
    sys.stdout.write(dump_config(cfg))


@app.command()
def version() -> None:
    """Print the version."""
    from node import __version__

    console.print(f"sapo-swarm {__version__}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
