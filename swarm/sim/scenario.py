"""Scenario files for ``sapo simulate``: which nodes to start, with what overrides, and what happens when.

    name: smoke
    rounds: 40                 # every node runs `sapo run --rounds 40` (or use duration_s)
    bootstrap: true            # start `sapo bootstrap` first; every node joins through its address
    set: [threads=1]           # overrides for every node (same syntax as `sapo run --set`)
    groups:
      - {name: honest, count: 3}
      - {name: poison, count: 1, role: poisoner}
      - {name: weak, count: 2, set: [model.warm_start_steps=50]}
    events:
      - {at_round: 20, action: kill9, node: honest-1}  # when honest-1 has logged round 20 (or at: seconds)
      - {at: 30, action: start, node: honest-1}      # restart: resumes from its checkpoint, same identity

Nodes are named ``<group>-<i>``; node k (over all groups, in order) gets ``seed=k`` unless the group sets
a seed. Unknown keys are rejected like in the node config.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from node.config import ConfigError, _format_validation_error


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)


class NodeGroup(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_]+$")
    count: int = Field(1, ge=1, le=64)
    set: list[str] = []
    """`--set` overrides for these nodes, after the scenario-wide ones."""
    role: Literal["honest", "poisoner", "forger", "replayer", "flooder", "garbage"] = "honest"
    seed: int | None = None
    """Seed of the first node of the group (the others count up); default: the node's index."""


class Event(_Strict):
    at: float | None = Field(None, ge=0)
    """Seconds after the simulation started."""
    at_round: int | None = Field(None, ge=1)
    """Instead of ``at``: when the named node has logged this round (robust to machine speed)."""
    action: Literal["stop", "kill9", "start", "restart"]
    """stop: SIGTERM (saves, exits 0); kill9: SIGKILL; start: start it again (resumes); restart: stop + start."""
    node: str

    @model_validator(mode="after")
    def _one_trigger(self) -> "Event":
        if (self.at is None) == (self.at_round is None):
            raise ValueError("an event needs exactly one of at (seconds) or at_round")
        return self


class Scenario(_Strict):
    name: str
    description: str = ""
    rounds: int | None = Field(None, ge=1)
    """Round budget of every node (nodes stop by themselves)."""
    duration_s: float | None = Field(None, gt=0)
    """Wall-clock budget; nodes still running then are stopped with SIGTERM."""
    timeout_s: float = Field(1800.0, gt=0)
    """Hard limit on the whole simulation."""
    bootstrap: bool = True
    """Start a `sapo bootstrap` peer first and join every node through it (else: through the first node)."""
    set: list[str] = []
    groups: list[NodeGroup] = Field(min_length=1)
    events: list[Event] = []

    @model_validator(mode="after")
    def _check(self) -> "Scenario":
        if self.rounds is None and self.duration_s is None:
            raise ValueError("set rounds (a round budget per node) or duration_s (a wall-clock budget)")
        names = {f"{g.name}-{i}" for g in self.groups for i in range(g.count)}
        if len({g.name for g in self.groups}) != len(self.groups):
            raise ValueError("groups[].name must be unique")
        for e in self.events:
            if e.node not in names:
                raise ValueError(f"events: unknown node {e.node!r}; nodes are {sorted(names)}")
        return self

    def nodes(self) -> list[tuple[str, NodeGroup, int]]:
        """(name, group, seed) for every node, in start order."""
        out, k = [], 0
        for g in self.groups:
            for i in range(g.count):
                seed = (g.seed + i) if g.seed is not None else k
                out.append((f"{g.name}-{i}", g, seed))
                k += 1
        return out


def load_scenario(path: str | Path, overrides: dict | None = None) -> Scenario:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"scenario file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"scenario {p} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"scenario {p} must be a mapping (name:, groups:, ...)")
    data.update(overrides or {})
    try:
        return Scenario.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, str(p), Scenario).replace("invalid config", "invalid scenario"))
