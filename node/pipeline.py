"""The decoupled runtime (``runtime.mode: async``): a generator thread feeds the trainer through a bounded buffer.

Versions and staleness. The policy version is ``Trainer.steps``, the number of rounds trained so far;
round ``r`` is always trained by step ``v_train(r) = steps0 + (r - start_round)`` (one step per round). A
round generated with weights of version ``v_gen`` has staleness ``v_train(r) - v_gen``. Before generating
round ``r`` the generator needs ``v_gen >= v_train(r) - max_staleness``: it waits for the trainer to reach
that version, then copies its weights. So the bound holds by construction, and with ``max_staleness: 0``
every round is sampled from exactly the weights that train on it, which is what ``sync`` computes.

Weights move trainer -> generator as an in-place copy of the trainable parameters (``Generator.sync_weights``)
under ``Trainer.update_lock``, taken while the optimizer changes the weights; no reload, no allocation. On
CUDA the generator runs on its own stream, ordered against the trainer's around each copy.

The exchange (publish, sample) and everything that writes the run dir stay on the main (trainer) thread;
the generator thread owns a copy of the model and of the tokenizer (HF fast tokenizers are not safe to
share between threads).
"""

from __future__ import annotations

import copy
import queue
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass

import torch

from node.rollout import RolloutGroup


@dataclass
class GeneratedRound:
    round_idx: int
    groups: list[RolloutGroup]
    gen_s: float
    gen_tokens: int
    version: int
    """Policy version (trainer steps) of the weights that sampled this round."""
    wait_s: float = 0.0
    """Time the generator waited for the staleness bound before this round."""
    sync_s: float = 0.0
    """Time spent copying weights before this round (0 when none were copied)."""


class AsyncPipeline:
    """Owns the generator thread; the node's main loop calls :meth:`next_round` and :meth:`trained`."""

    def __init__(self, node, start_round: int, last_round: int | None):
        from node.generator import make_generator

        self.node = node
        rt = node.cfg.runtime
        self.max_staleness = rt.max_staleness
        self.sync_every = rt.weight_sync_every
        self.start_round = start_round
        self.last_round = last_round
        self.steps0 = node.trainer.steps
        self.trainer = node.trainer
        self.trainer.update_lock = threading.Lock()
        self.tokenizer = copy.deepcopy(node.tokenizer)
        if node.generator.model is not node.model:
            # The node's generator already samples from its own weights (vLLM's engine, the fast backend's
            # bf16 copy): the thread can use it, the main thread never generates in async mode.
            self.generator = node.generator
            self.generator.tokenizer = self.tokenizer
            if hasattr(self.generator, "sleep_between_rounds"):
                self.generator.sleep_between_rounds = False  # the engine generates while the trainer steps
            self.generator.sync_weights(node.model)
        else:
            self.generator = make_generator(node.cfg.generation, node.model, self.tokenizer,
                                            node.cfg.train.precision, private_weights=True)
        self.version = self.trainer.steps
        self._trainer_version = self.trainer.steps
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._failure: BaseException | None = None
        self._queue: queue.Queue = queue.Queue(maxsize=rt.buffer_rounds)
        cuda = next(node.model.parameters()).device.type == "cuda"
        self._stream = torch.cuda.Stream() if cuda else None
        # On a CPU the two threads share the cores: split them (both sides default to all cores otherwise and
        # oversubscribe, which measured 0.67x of sync on 2 cores). The trainer keeps the larger half.
        total = self._total_threads = torch.get_num_threads()
        self._threads = total
        self._main_threads = total
        if not cuda:
            self._threads = rt.generator_threads or max(1, total // 2)
            self._main_threads = max(1, total - self._threads)
            torch.set_num_threads(self._main_threads)
        self._thread = threading.Thread(target=self._run, name="sapo-generator", daemon=True)

    # ------------------------------------------------------------------ trainer side
    def start(self) -> None:
        self._thread.start()

    def next_round(self, poll_s: float = 0.2) -> tuple[GeneratedRound, float] | None:
        """The next generated round and how long the trainer waited for it; None once stopped."""
        t0 = time.perf_counter()
        while not self._stop.is_set():
            try:
                return self._queue.get(timeout=poll_s), time.perf_counter() - t0
            except queue.Empty:
                if self._failure is not None:
                    raise RuntimeError(f"generator thread failed: {self._failure!r}") from self._failure
                if not self._thread.is_alive():
                    return None
        return None

    def trained(self, version: int) -> None:
        """The trainer finished a step; ``version`` is its new ``steps``."""
        with self._cond:
            self._trainer_version = version
            self._cond.notify_all()

    def depth(self) -> int:
        return self._queue.qsize()

    def close(self, timeout: float = 60.0) -> None:
        self._stop.set()
        torch.set_num_threads(self._total_threads)
        with self._cond:
            self._cond.notify_all()
        while True:  # unblock a generator waiting to put
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    # ------------------------------------------------------------------ generator side
    def _sync(self) -> float:
        t0 = time.perf_counter()
        with self.trainer.update_lock:
            if self._stream is not None:
                self._stream.wait_stream(torch.cuda.default_stream())
            self.generator.sync_weights(self.node.model)
            self.version = self.trainer.steps
            if self._stream is not None:
                # The trainer's next optimizer step must not overwrite weights still being copied.
                torch.cuda.default_stream().wait_stream(self._stream)
        return time.perf_counter() - t0

    def _run(self) -> None:
        try:
            # OpenMP's thread count is per thread: without this the generator thread uses the library
            # default instead of the node's ``threads``, which also changes float reduction order.
            torch.set_num_threads(self._threads)
            stream_ctx = torch.cuda.stream(self._stream) if self._stream is not None else nullcontext()
            with stream_ctx:
                r = self.start_round
                while not self._stop.is_set() and (self.last_round is None or r <= self.last_round):
                    need = self.steps0 + (r - self.start_round) - self.max_staleness
                    t0 = time.perf_counter()
                    with self._cond:
                        while self._trainer_version < need and not self._stop.is_set():
                            self._cond.wait(0.5)
                        latest = self._trainer_version
                    if self._stop.is_set():
                        break
                    wait_s = time.perf_counter() - t0
                    sync_s = 0.0
                    if self.version < need or latest - self.version >= self.sync_every:
                        sync_s = self._sync()
                    n = self.node.cfg.sapo.local_groups + self.node.cfg.sapo.external_groups
                    groups, gen_s, tokens = self.node.make_groups(r, n, generator=self.generator,
                                                                  tokenizer=self.tokenizer, version=self.version)
                    if self._stream is not None:
                        self._stream.synchronize()
                    item = GeneratedRound(r, groups, gen_s, tokens, self.version, wait_s, sync_s)
                    while not self._stop.is_set():
                        try:
                            self._queue.put(item, timeout=0.2)
                            break
                        except queue.Full:
                            continue
                    r += 1
        except BaseException as exc:  # raised on the trainer thread by next_round once the buffer is empty
            self._failure = exc
