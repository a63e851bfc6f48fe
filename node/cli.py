"""``sapo``: the node's command line.

    sapo run [--config PATH] [--run-dir DIR] [--rounds N] [--set dotted.key=value ...]
    sapo config [--config PATH] [--set ...]        print the resolved config and exit

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
        extra["swarm.initial_peers"] = [p.strip() for p in peers.split(",") if p.strip()]
    if transport:
        extra["swarm.transport.type"] = transport
    cfg = _load(config, sets, extra)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    from node.runtime import Node

    def log(msg: str) -> None:
        console.print(msg, markup=False, soft_wrap=True)

    log(f"sapo node | model {cfg.model.name} | tasks "
        + ", ".join(s.dataset for s in cfg.tasks.mix)
        + f" | G={cfg.generation.group_size} I={cfg.sapo.local_groups} J={cfg.sapo.external_groups}"
        + f" | run dir {run_dir} | rounds {cfg.rounds or 'until stopped (Ctrl-C saves and exits)'}")
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
    sets: Optional[list[str]] = SetOpt,
) -> None:
    """Run a lightweight peer that trains nothing and helps others find each other (a DHT node)."""
    extra: dict = {}
    if listen:
        extra["swarm.transport.listen"] = [a.strip() for a in listen.split(",") if a.strip()]
    if peers:
        extra["swarm.initial_peers"] = [p.strip() for p in peers.split(",") if p.strip()]
    cfg = _load(config, sets, extra)
    from swarm.bootstrap import run_bootstrap

    raise typer.Exit(run_bootstrap(cfg, run_dir, log=lambda m: console.print(m, markup=False, soft_wrap=True)))


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
