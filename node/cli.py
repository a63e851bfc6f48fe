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
    sets: Optional[list[str]] = SetOpt,
) -> None:
    """Run a node: generate rollouts, reward them, train with GRPO; resume if RUN_DIR has a checkpoint."""
    cfg = _load(config, sets, {"rounds": rounds} if rounds is not None else None)
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
