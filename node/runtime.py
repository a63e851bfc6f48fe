"""The node's main loop: generate -> reward -> share -> train, once per round.

``runtime.mode: sync`` runs the steps in turn; ``async`` runs generation (steps 1-3) on a generator thread,
a bounded number of rounds ahead of the trainer and within a staleness bound (node/pipeline.py); steps 4-6
stay here. Both write the same metrics rows.

Round r (1-based):
1. the task mix names ``I + J`` questions (stateless in r, so a resume asks the same ones);
2. the generator samples G completions per question (seeded by (seed, r));
3. each completion is rewarded by the task's own verifier;
4. the groups are handed to the exchange (``publish``) and up to J external groups come back (``sample``);
5. the batch is I local groups + the external ones, topped up with local groups when fewer than J arrived;
6. one GRPO step; metrics.jsonl gets a row; every ``checkpoint.every_rounds`` an atomic checkpoint.

SIGINT/SIGTERM finish the current round, save a checkpoint and return 0; a second signal aborts at once.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import time
from pathlib import Path

import torch

from node.checkpoint import (disk_full_message, is_disk_full, latest_checkpoint, load_checkpoint,
                             save_checkpoint)
from node.config import Config, dump_config
from node.logs import set_context as set_log_context
from node.metrics import MetricsLog, progress_line
from node.rollout import RolloutGroup
from node.tasks import TaskMix, resolve, score


def derive_seed(*parts) -> int:
    digest = hashlib.sha256("/".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


class Node:
    def __init__(self, cfg: Config, run_dir: Path, log=print, exchange=None):
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.log = log
        self.exchange = exchange
        self._stop = False
        self._signals = 0
        self.observer = None  # node/observe.py: log context, Prometheus endpoint, node.json

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        from node.generator import make_generator
        from node.model import load_policy, prompt_text, resolve_device, resolve_dtype
        from node.trainer import Trainer

        cfg = self.cfg
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "config.yaml").write_text(dump_config(cfg))
        torch.set_num_threads(cfg.threads or os.cpu_count() or 1)
        torch.manual_seed(cfg.seed)
        self.device = resolve_device(cfg.device)
        dtype = resolve_dtype(cfg.model.dtype, self.device)
        self.model, self.tokenizer = load_policy(cfg.model, self.device, dtype, log=self.log)
        self.prompt_text = prompt_text
        self.generator = make_generator(cfg.generation, self.model, self.tokenizer, cfg.train.precision)
        self.trainer = Trainer(self.model, self.tokenizer, cfg.train, cfg.generation.temperature,
                               cfg.generation.max_prompt_tokens, cfg.generation.max_new_tokens,
                               external_positive_only=cfg.sapo.external_advantages == "positive")
        self.mix = TaskMix(cfg.tasks.mix, cfg.task_seed)
        if self.exchange is None:
            self.exchange = self._make_exchange()
        self.metrics = MetricsLog(self.run_dir)
        self.start_round = 1
        ckpt = latest_checkpoint(self.run_dir)
        if ckpt is not None:
            state = load_checkpoint(ckpt, self.model, self.trainer.optimizer)
            self.start_round = int(state["round"]) + 1
            self.trainer.steps = int(state.get("trainer_steps", state["round"]))
            self.metrics.truncate_after(int(state["round"]))
            self.log(f"resumed from {ckpt} at round {self.start_round}")
            self.generator.sync_weights(self.model)  # a generator with its own weights copied them before
        from node.observe import NodeObserver

        self.observer = NodeObserver(cfg, self.run_dir, self.exchange, log=self.log)

    def _make_exchange(self):
        cfg = self.cfg
        if not cfg.swarm.enabled:
            from swarm.exchange import SoloExchange

            return SoloExchange()
        from swarm.admission import Admission
        from swarm.exchange import SwarmExchange, identity_path, make_transport, write_node_json
        from swarm.identity import load_or_create
        from swarm.sampler import ExternalPool

        key_path = identity_path(cfg.swarm, self.run_dir)
        identity, created = load_or_create(key_path)
        set_log_context(self.log, peer_id=identity.peer_id)
        self.log(f"identity {identity.peer_id} ({'new key' if created else 'key'} at {key_path})")
        transport = make_transport(cfg.swarm, identity)
        transport.start()
        try:
            info = write_node_json(self.run_dir, identity, transport, cfg.swarm)
            admission = Admission(
                cfg.swarm.admission, cfg.swarm.swarm_id, identity.peer_id, self.mix.allowed(),
                prompt_for=lambda task: self.prompt_text(self.tokenizer, task.question, cfg.tasks.system_prompt),
                own_configs=self.mix.own_configs(),
            )
            args = (cfg.swarm, identity, transport, admission, ExternalPool(cfg.swarm.pool))
            if cfg.adversary.role != "none":  # test-only hostile variant for the simulation harness
                from swarm.sim.adversary import HostileExchange

                exchange = HostileExchange(*args, seed=cfg.seed, log=self.log, role=cfg.adversary.role,
                                           flood_factor=cfg.adversary.flood_factor)
                self.log(f"ADVERSARY: this node plays '{cfg.adversary.role}' (test-only)")
            else:
                exchange = SwarmExchange(*args, seed=cfg.seed, log=self.log)
        except BaseException:
            transport.stop()
            raise
        peers = cfg.swarm.initial_peers
        self.log(f"swarm '{cfg.swarm.swarm_id}' via {cfg.swarm.transport.type}: "
                 + (f"joined through {len(peers)} peer(s)" if peers else "first node of a new swarm"))
        for addr in info["addrs"]:
            self.log(f"  join this node with: sapo run --peers {addr}")
        return exchange

    # ------------------------------------------------------------------ signals
    def _on_signal(self, signum, frame) -> None:
        self._signals += 1
        if self._signals > 1:
            raise KeyboardInterrupt
        self._stop = True
        self.log(f"{signal.Signals(signum).name}: finishing this round, then saving (signal again to abort)")

    def request_stop(self) -> None:
        self._stop = True

    # ------------------------------------------------------------------ one round
    def make_groups(self, round_idx: int, n: int, generator=None, tokenizer=None,
                    version: int | None = None) -> tuple[list[RolloutGroup], float, int]:
        """Generate and score round ``round_idx``'s ``n`` local groups (with the node's own generator unless
        the async pipeline passes its thread's generator, tokenizer and weights version)."""
        cfg = self.cfg
        generator = generator or self.generator
        tokenizer = tokenizer or self.tokenizer
        refs = self.mix.refs_for_round(round_idx, n)
        tasks = [resolve(r) for r in refs]
        prompts = [self.prompt_text(tokenizer, t.question, cfg.tasks.system_prompt) for t in tasks]
        t0 = time.perf_counter()
        before = generator.tokens_generated
        outs = generator.generate(prompts, cfg.generation.group_size,
                                  seed=derive_seed(cfg.seed, "gen", round_idx))
        gen_s = time.perf_counter() - t0
        version = self.trainer.steps if version is None else version
        groups = []
        for task, prompt, comps in zip(tasks, prompts, outs):
            groups.append(RolloutGroup(
                task=task, prompt=prompt, completions=comps,
                rewards=[score(task, c.text) for c in comps], origin="local",
                policy_version=version, model_id=cfg.model.name,
            ))
        return groups, gen_s, generator.tokens_generated - before

    def run_round(self, round_idx: int) -> dict:
        """One synchronous round: generate with the current weights, then train."""
        t_round = time.perf_counter()
        n = self.cfg.sapo.local_groups + self.cfg.sapo.external_groups
        groups, gen_s, gen_tokens = self.make_groups(round_idx, n)
        row = self.train_round(round_idx, groups, gen_s, gen_tokens, t_round)
        self.generator.sync_weights(self.model)  # no-op unless the generator holds its own weights (vLLM)
        return row

    def train_round(self, round_idx: int, groups: list[RolloutGroup], gen_s: float, gen_tokens: int,
                    t_round: float, pipeline: dict | None = None) -> dict:
        """Share this round's groups, take external ones, train one step and build the metrics row."""
        cfg = self.cfg
        n_local, n_ext = cfg.sapo.local_groups, cfg.sapo.external_groups
        version_now = self.trainer.steps
        self.exchange.publish(groups, round_idx)
        external = self.exchange.sample(n_ext, round_idx) if n_ext else []
        rng = random.Random(derive_seed(cfg.seed, "pick", round_idx))
        take = n_local + (n_ext - len(external))
        local = groups if take >= len(groups) else rng.sample(groups, take)
        batch = local + external
        stats = self.trainer.step(batch)
        rewards = [r for g in groups for r in g.rewards]
        lengths = [len(c.token_ids or []) for g in groups for c in g.completions]
        by_ds: dict[str, list[float]] = {}
        for g in groups:
            by_ds.setdefault(g.task.ref.dataset, []).extend(g.rewards)
        row = {
            "round": round_idx,
            "reward_mean": sum(rewards) / len(rewards),
            "local_groups": len(local),
            "external_groups": len(external),
            "external_shortfall": n_ext - len(external),
            "loss": stats["loss"],
            "gen_tokens_per_s": gen_tokens / gen_s if gen_s > 0 else 0.0,
            "train_tokens_per_s": stats["train_tokens"] / stats["train_s"] if stats.get("train_s") else 0.0,
            "round_s": time.perf_counter() - t_round,
            "gen_s": gen_s,
            "train_s": stats.get("train_s", 0.0),
            "groups_with_signal": sum(g.has_signal for g in batch),
            "completion_tokens_mean": sum(lengths) / max(1, len(lengths)),
            "finished_frac": sum(c.finished for g in groups for c in g.completions) / max(1, len(lengths)),
            "grad_norm": stats.get("grad_norm", 0.0),
            "clip_low_frac": stats.get("clip_low_frac", 0.0),
            "clip_high_frac": stats.get("clip_high_frac", 0.0),
            "policy_version": self.trainer.steps,
            "staleness": max((version_now - g.policy_version for g in local), default=0),
            "tis_ess": stats.get("tis_ess", 1.0),
            "tis_truncated_frac": stats.get("tis_truncated_frac", 0.0),
            "tis_masked_frac": stats.get("tis_masked_frac", 0.0),
            "behaviour_log_ratio_abs": stats.get("behaviour_log_ratio_abs", 0.0),
            # async pipeline (zeros in sync mode): generator wait for the staleness bound, trainer wait for
            # a generated round, weight copy time, rounds queued when this one was taken.
            "gen_wait_s": 0.0,
            "train_wait_s": 0.0,
            "weight_sync_s": 0.0,
            "buffer_depth": 0,
            "reward_by_dataset": {k: sum(v) / len(v) for k, v in sorted(by_ds.items())},
            "time": time.time(),
        }
        if pipeline:
            row.update(pipeline)
        row.update(self.exchange.stats())
        return row

    # ------------------------------------------------------------------ main loop
    def save(self, round_idx: int) -> Path:
        return save_checkpoint(self.run_dir, round_idx, self.model, self.trainer.optimizer,
                               {"trainer_steps": self.trainer.steps, "model": self.cfg.model.name},
                               keep=self.cfg.checkpoint.keep)

    def run(self) -> int:
        cfg = self.cfg
        old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        pipeline = None
        try:
            self.setup()
            last_saved = self.start_round - 1
            r = self.start_round
            if cfg.rounds is not None and r > cfg.rounds:
                self.log(f"run already reached round {cfg.rounds}; raise --rounds to train further")
                return 0
            if cfg.runtime.mode == "async":
                from node.pipeline import AsyncPipeline

                pipeline = AsyncPipeline(self, r, cfg.rounds)
                pipeline.start()
                self.log(f"async pipeline: staleness <= {cfg.runtime.max_staleness}, weights every "
                         f"{cfg.runtime.weight_sync_every} step(s), buffer {cfg.runtime.buffer_rounds} round(s)")
            while not self._stop and (cfg.rounds is None or r <= cfg.rounds):
                if pipeline is None:
                    self.observer.round_started(r)
                    row = self.run_round(r)
                else:
                    t_round = time.perf_counter()
                    got = pipeline.next_round()
                    if got is None:
                        break
                    item, train_wait = got
                    assert item.round_idx == r, (item.round_idx, r)
                    self.observer.round_started(r)
                    depth = pipeline.depth()
                    row = self.train_round(r, item.groups, item.gen_s, item.gen_tokens, t_round, pipeline={
                        "gen_wait_s": item.wait_s, "train_wait_s": train_wait,
                        "weight_sync_s": item.sync_s, "buffer_depth": depth,
                    })
                    pipeline.trained(self.trainer.steps)
                self.metrics.append(row)
                self.observer.update(row)
                if r % cfg.metrics.log_every == 0 or r == cfg.rounds:
                    self.log(progress_line(row))
                if r % cfg.checkpoint.every_rounds == 0:
                    self.save(r)
                    self.observer.checkpoint_saved(r)
                    last_saved = r
                r += 1
            if r - 1 > last_saved:
                path = self.save(r - 1)
                self.observer.checkpoint_saved(r - 1)
                self.log(f"saved {path}")
            return 0
        except OSError as exc:  # disk full in the run dir: a clear message and exit 1, not a traceback
            if not is_disk_full(exc):
                raise
            self.log(f"error: {disk_full_message(exc, self.run_dir)}")
            return 1
        finally:
            if pipeline is not None:
                pipeline.close()
            if self.observer is not None:
                self.observer.close()
            if self.exchange is not None:
                self.exchange.close()
            for s, h in old.items():
                signal.signal(s, h)
