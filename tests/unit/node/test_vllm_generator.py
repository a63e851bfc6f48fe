"""The vLLM backend against a fake engine (vLLM cannot run here: no GPU, and none installed).

The fake mimics the parts of vLLM's offline API the backend uses (``LLM.generate`` with ``TokensPrompt``
inputs and per-prompt ``SamplingParams``, ``RequestOutput.outputs[i].token_ids / logprobs /
finish_reason``, ``collective_rpc`` into a worker extension, ``sleep`` / ``wake_up``) and samples from a
real tiny model with the HF backend's sampler, so the adapter's translation both ways is checked: what it
asks for, how it reads the answer, when weights move and that they arrive.
"""

from __future__ import annotations

import copy
import types
from dataclasses import dataclass, field

import pytest
import torch

from node.config import GenerationConfig, TrainConfig, VllmConfig
from node.generator.hf import filter_logits
from node.generator.vllm import VLLMGenerator, WeightLoader, export_weights
from node.model.embedded import EMBEDDED_MODELS, build_model, build_tokenizer
from node.rollout import RolloutGroup
from node.tasks import TaskRef, resolve
from node.trainer import Trainer


@dataclass
class FakeSamplingParams:
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    max_tokens: int = 16
    logprobs: int | None = None
    seed: int | None = None
    stop_token_ids: list = field(default_factory=list)
    detokenize: bool = True


@dataclass
class Logprob:
    logprob: float


@dataclass
class CompletionOutput:
    token_ids: list
    logprobs: list | None
    finish_reason: str


@dataclass
class RequestOutput:
    outputs: list


class FakeEngine:
    """Samples with a real model, the way vLLM does with ``logprobs_mode="processed_logprobs"``."""

    def __init__(self, model):
        self.model = copy.deepcopy(model).eval()
        self.calls: list[str] = []
        self.state = "awake"  # awake | asleep
        self.weights_ok = True
        self.kv_ok = True
        self.requests: list = []
        # The worker extension is mixed into vLLM's worker: a worker with a model runner.
        self.worker = type("Worker", (WeightLoader,), {})()
        self.worker.model_runner = types.SimpleNamespace(model=types.SimpleNamespace(load_weights=self._load))
        self.loaded_names: list[str] = []

    def _load(self, weights):
        params = dict(self.model.named_parameters())
        with torch.no_grad():
            for name, t in weights:
                params[name].copy_(t)  # KeyError = a name vLLM would not know
                self.loaded_names.append(name)
        self.weights_ok = True

    def collective_rpc(self, method, args=()):
        self.calls.append(f"rpc:{method}")
        assert self.state == "awake", "weights loaded into a sleeping engine"
        return [getattr(self.worker, method)(*args)]

    def sleep(self, level=1):
        self.calls.append(f"sleep:{level}")
        self.state = "asleep"
        self.kv_ok = False
        if level == 2:
            self.weights_ok = False

    def wake_up(self, tags=None):
        self.calls.append(f"wake:{','.join(tags) if tags else 'all'}")
        if tags is None or "kv_cache" in tags:
            self.kv_ok = True
        if tags is None or "kv_cache" in tags or "weights" in tags:
            self.state = "awake"

    @torch.no_grad()
    def generate(self, prompts, params, use_tqdm=True):
        assert use_tqdm is False
        assert self.state == "awake" and self.kv_ok, "generate while asleep"
        assert self.weights_ok, "generate with discarded weights (level-2 sleep and no reload)"
        self.calls.append("generate")
        self.requests.append((prompts, params))
        out = []
        for prompt, sp in zip(prompts, params):
            gen = torch.Generator().manual_seed(sp.seed)
            outs = []
            for _ in range(sp.n):
                ids = list(prompt["prompt_token_ids"])
                toks, lps, reason = [], [], "length"
                for _ in range(sp.max_tokens):
                    logits = self.model(input_ids=torch.tensor([ids])).logits[0, -1]
                    scores = filter_logits((logits / sp.temperature)[None], max(sp.top_k, 0), sp.top_p)
                    logp = torch.log_softmax(scores, -1)[0]
                    t = int(torch.multinomial(logp.exp(), 1, generator=gen))
                    toks.append(t)
                    lps.append({t: Logprob(float(logp[t]))})
                    ids.append(t)
                    if t in sp.stop_token_ids:
                        reason = "stop"
                        break
                outs.append(CompletionOutput(toks, lps if sp.logprobs is not None else None, reason))
            out.append(RequestOutput(outs))
        return out


API = types.SimpleNamespace(SamplingParams=FakeSamplingParams, TokensPrompt=lambda **kw: dict(kw), LLM=None)
PROMPTS = ["Calculate 1 + 2.\n", "Calculate 5 - 3.\n"]


@pytest.fixture()
def tiny():
    tok = build_tokenizer()
    return build_model(EMBEDDED_MODELS["tiny"], tok, seed=0).eval(), tok


def _gen(model, tok, sleep=True, **gkw):
    cfg = GenerationConfig(backend="vllm", max_new_tokens=10, vllm=VllmConfig(enable_sleep_mode=sleep), **gkw)
    engine = FakeEngine(model)
    return VLLMGenerator(model, tok, cfg, engine=engine, api=API), engine


def test_requests_ask_for_processed_logprobs_per_prompt_seeds_and_eos(tiny):
    model, tok = tiny
    gen, engine = _gen(model, tok, top_k=0, temperature=0.9)
    outs = gen.generate(PROMPTS, n=3, seed=42)
    assert [len(o) for o in outs] == [3, 3]
    prompts, params = engine.requests[0]
    assert [p["prompt_token_ids"] for p in prompts] == [tok(p, add_special_tokens=False)["input_ids"] for p in PROMPTS]
    assert all(sp.n == 3 and sp.logprobs == 0 and sp.max_tokens == 10 and sp.temperature == 0.9 for sp in params)
    assert all(sp.top_k == -1 for sp in params)  # 0 (off) in our config is -1 for vLLM
    assert params[0].seed != params[1].seed  # prompts do not share sampling noise
    assert all(tok.eos_token_id in sp.stop_token_ids for sp in params)
    again = _gen(model, tok, top_k=0, temperature=0.9)[0].generate(PROMPTS, n=3, seed=42)
    assert [c.token_ids for g in outs for c in g] == [c.token_ids for g in again for c in g]  # seeded


def test_completions_and_behaviour_logprobs_match_the_trainer(tiny):
    model, tok = tiny
    gen, _ = _gen(model, tok, max_prompt_tokens=64)
    outs = gen.generate(PROMPTS, n=4, seed=1)
    for grp in outs:
        for c in grp:
            assert len(c.token_ids) == len(c.logprobs) <= 10
            if c.finished:
                assert c.token_ids[-1] == tok.eos_token_id
            assert "<eos>" not in c.text
    assert gen.tokens_generated == sum(len(c.token_ids) for g in outs for c in g)
    trainer = Trainer(model, tok, TrainConfig(), 1.0, 64, 10)
    task = resolve(TaskRef.make("reasoning_gym", "basic_arithmetic", {}, 0, 0))
    groups = [RolloutGroup(task=task, prompt=p, completions=c, rewards=[0, 1, 0, 1]) for p, c in zip(PROMPTS, outs)]
    seqs = trainer.sequences(groups)
    for seq, ref in zip(seqs, trainer.sequence_logprobs(seqs)):
        assert seq.behaviour_logprobs == pytest.approx(ref, abs=2e-4)


def test_sync_mode_sleeps_and_reloads_new_weights_before_generating(tiny):
    model, tok = tiny
    trainer_model = copy.deepcopy(model)
    gen, engine = _gen(trainer_model, tok, sleep=True)
    gen.generate(PROMPTS, 2, seed=0)
    # first generate: the (possibly resumed) policy weights go in first; then the engine sleeps
    assert engine.calls == ["rpc:load_policy_weights", "generate", "sleep:2"]
    with torch.no_grad():  # the trainer steps while the engine sleeps
        for p in trainer_model.parameters():
            p.add_(0.01)
    gen.sync_weights(trainer_model)
    assert engine.calls[-1] == "sleep:2"  # nothing pushed into a sleeping engine
    gen.generate(PROMPTS, 2, seed=0)
    assert engine.calls[3:] == ["wake:weights", "rpc:load_policy_weights", "wake:kv_cache", "generate", "sleep:2"]
    for (n1, p1), (n2, p2) in zip(engine.model.named_parameters(), trainer_model.named_parameters()):
        assert n1 == n2 and torch.equal(p1, p2)  # in place, every weight
    assert gen.weight_pushes == 2


def test_async_mode_pushes_immediately_and_never_sleeps(tiny):
    model, tok = tiny
    trainer_model = copy.deepcopy(model)
    gen, engine = _gen(trainer_model, tok, sleep=False)
    gen.generate(PROMPTS, 2, seed=0)
    with torch.no_grad():
        trainer_model.lm_head.weight.mul_(1.5)
    gen.sync_weights(trainer_model)  # the pipeline calls this under the trainer's update lock
    assert engine.calls == ["rpc:load_policy_weights", "generate", "rpc:load_policy_weights"]
    assert torch.equal(engine.model.lm_head.weight, trainer_model.lm_head.weight)


def test_lora_weights_are_merged_and_named_like_the_base_model(tiny):
    peft = pytest.importorskip("peft")
    model, tok = tiny
    lora = peft.get_peft_model(copy.deepcopy(model), peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"],
                                                                       task_type="CAUSAL_LM"))
    with torch.no_grad():
        for n, p in lora.named_parameters():
            if "lora_B" in n:
                p.normal_()  # a non-zero adapter
    merged_ref = copy.deepcopy(lora).merge_and_unload()
    pairs, undo = export_weights(lora)
    names = [n for n, _ in pairs]
    assert names == [n for n, _ in model.named_parameters()]  # plain HF names, no lora_ / base_layer
    for (n, t), (n2, p2) in zip(pairs, merged_ref.named_parameters()):
        torch.testing.assert_close(t, p2)
    undo()
    q = dict(lora.get_base_model().named_parameters())["model.layers.0.self_attn.q_proj.base_layer.weight"]
    torch.testing.assert_close(q, dict(model.named_parameters())["model.layers.0.self_attn.q_proj.weight"])


def test_missing_vllm_is_a_clear_error(tiny, monkeypatch):
    import builtins

    real = builtins.__import__

    def no_vllm(name, *a, **k):
        if name.startswith("vllm"):
            raise ImportError("no vllm")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_vllm)
    model, tok = tiny
    with pytest.raises(RuntimeError, match=r"pip install 'sapo-swarm\[vllm\]'"):
        VLLMGenerator(model, tok, GenerationConfig(backend="vllm"))
