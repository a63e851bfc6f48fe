"""The ``fast`` backend (static KV cache; CUDA graphs on a GPU, eager on a CPU) against the ``hf`` loop."""

from __future__ import annotations

import copy
from collections import Counter

import pytest
import torch
from scipy.stats import chi2_contingency

from node.config import GenerationConfig, TrainConfig
from node.generator import make_generator
from node.generator.fast import FastGenerator
from node.generator.hf import HFGenerator
from node.model.embedded import EMBEDDED_MODELS, build_model, build_tokenizer
from node.rollout import RolloutGroup
from node.tasks import TaskRef, resolve
from node.trainer import Trainer

PROMPTS = ["Calculate 1 + 2.\n", "Calculate 31 - 17 and also think about it for a while, please.\n", "Hi\n"]


@pytest.fixture(scope="module")
def tiny():
    tok = build_tokenizer()
    model = build_model(EMBEDDED_MODELS["tiny"], tok, seed=0).eval()
    return model, tok


@pytest.mark.parametrize("temperature,top_k", [(1.0, 0), (0.7, 0), (1.0, 5)])
def test_fast_logprobs_match_trainer_forward(tiny, temperature, top_k):
    model, tok = tiny
    gcfg = GenerationConfig(backend="fast", max_new_tokens=14, temperature=temperature, top_k=top_k, batch_size=4)
    gen = make_generator(gcfg, model, tok)
    assert isinstance(gen, FastGenerator)
    outs = gen.generate(PROMPTS, n=3, seed=7)  # 9 rows in batches of 4: a partial last batch too
    assert [len(o) for o in outs] == [3, 3, 3]
    trainer = Trainer(model, tok, TrainConfig(), temperature, gcfg.max_prompt_tokens, gcfg.max_new_tokens)
    task = resolve(TaskRef.make("reasoning_gym", "basic_arithmetic", {}, 0, 0))
    groups = [RolloutGroup(task=task, prompt=p, completions=c, rewards=[0.0, 0.5, 1.0]) for p, c in zip(PROMPTS, outs)]
    seqs = trainer.sequences(groups)
    recomputed = trainer.sequence_logprobs(seqs)
    n = 0
    for seq, ref in zip(seqs, recomputed):
        assert len(seq.behaviour_logprobs) == len(ref) == len(seq.completion_ids)
        if top_k == 0:  # with top-k the behaviour distribution is renormalised over k tokens, not the trainer's
            assert seq.behaviour_logprobs == pytest.approx(ref, abs=2e-4)
        else:
            assert all(b >= r - 2e-4 for b, r in zip(seq.behaviour_logprobs, ref))
        n += len(ref)
    assert n > 20


def _first_tokens(gen, seed: int, reps: int = 150) -> Counter:
    outs = gen.generate(["Calculate 4 + 3.\n"] * reps, n=4, seed=seed)
    return Counter(c.token_ids[0] for grp in outs for c in grp)


def _chi2_p(a: Counter, b: Counter) -> float:
    keys = sorted(k for k in set(a) | set(b) if a[k] + b[k] >= 10)  # pool rare tokens
    table = [[a[k] for k in keys] + [sum(v for k, v in a.items() if k not in keys)],
             [b[k] for k in keys] + [sum(v for k, v in b.items() if k not in keys)]]
    if table[0][-1] + table[1][-1] == 0:
        table = [row[:-1] for row in table]
    return float(chi2_contingency(table)[1])


def test_fast_samples_follow_the_hf_distribution(tiny):
    """Two-sample chi-square on the first sampled token (600 draws each, different seeds)."""
    model, tok = tiny
    peaked = copy.deepcopy(model)  # a random model is near-uniform; sharpen it so the test has power
    with torch.no_grad():
        peaked.lm_head.weight.mul_(2.5)
    hf = HFGenerator(peaked, tok, GenerationConfig(max_new_tokens=2, batch_size=64))
    fast = FastGenerator(peaked, tok, GenerationConfig(backend="fast", max_new_tokens=2, batch_size=64))
    a, b = _first_tokens(hf, seed=1), _first_tokens(fast, seed=2)
    assert len(a) > 5  # a real distribution, not a point mass
    assert _chi2_p(a, b) > 0.001
    # The test has power: a slightly different sampling distribution (temperature 0.8) is told apart.
    cold = FastGenerator(peaked, tok, GenerationConfig(backend="fast", max_new_tokens=2, batch_size=64,
                                                       temperature=0.8))
    assert _chi2_p(a, _first_tokens(cold, seed=3)) < 1e-6


def test_fast_with_private_weights_follows_sync_weights(tiny):
    model, tok = tiny
    trainer_model = copy.deepcopy(model)
    gen = FastGenerator(trainer_model, tok, GenerationConfig(backend="fast", max_new_tokens=6), private_weights=True)
    assert gen.model is not trainer_model
    before = gen.generate(PROMPTS, 2, seed=3)
    with torch.no_grad():
        for p in trainer_model.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    assert [c.token_ids for g in gen.generate(PROMPTS, 2, seed=3) for c in g] == \
        [c.token_ids for g in before for c in g]  # still the old weights
    gen.sync_weights(trainer_model)
    after = gen.generate(PROMPTS, 2, seed=3)
    assert [c.token_ids for g in after for c in g] != [c.token_ids for g in before for c in g]
    for (n1, p1), (n2, p2) in zip(gen.model.named_parameters(), trainer_model.named_parameters()):
        assert n1 == n2 and torch.equal(p1, p2)


def test_fast_cpu_runs_without_graphs(tiny):
    model, tok = tiny
    gen = FastGenerator(model, tok, GenerationConfig(backend="fast", cuda_graphs=True))
    assert gen.use_graphs is False  # a CPU falls back to the eager static-cache loop
    out = gen.generate(["Hi\n"], 2, seed=0)
    assert len(out[0]) == 2 and gen.tokens_generated > 0


# ---------------------------------------------------------------- on a GPU (skipped without CUDA)
@pytest.mark.gpu
def test_fast_cuda_graph_logprobs_match_trainer(tiny):
    model, tok = tiny
    model = copy.deepcopy(model).cuda()
    gcfg = GenerationConfig(backend="fast", max_new_tokens=16, batch_size=8)
    gen = FastGenerator(model, tok, gcfg, precision="fp32")
    outs = gen.generate(PROMPTS, n=3, seed=11)
    assert gen.use_graphs and gen.graph_failures == 0 and any(s.graph is not None for s in gen._slots.values())
    trainer = Trainer(model, tok, TrainConfig(precision="fp32"), 1.0, gcfg.max_prompt_tokens, gcfg.max_new_tokens)
    task = resolve(TaskRef.make("reasoning_gym", "basic_arithmetic", {}, 0, 0))
    groups = [RolloutGroup(task=task, prompt=p, completions=c, rewards=[0.0, 0.5, 1.0]) for p, c in zip(PROMPTS, outs)]
    seqs = trainer.sequences(groups)
    for seq, ref in zip(seqs, trainer.sequence_logprobs(seqs)):
        assert seq.behaviour_logprobs == pytest.approx(ref, abs=1e-3)


@pytest.mark.gpu
def test_fast_cuda_graph_samples_follow_the_hf_distribution(tiny):
    model, tok = tiny
    peaked = copy.deepcopy(model).cuda()
    with torch.no_grad():
        peaked.lm_head.weight.mul_(2.5)
    hf = HFGenerator(peaked, tok, GenerationConfig(max_new_tokens=2, batch_size=64), precision="fp32")
    fast = FastGenerator(peaked, tok, GenerationConfig(backend="fast", max_new_tokens=2, batch_size=64),
                         precision="fp32")
    assert _chi2_p(_first_tokens(hf, seed=1), _first_tokens(fast, seed=2)) > 0.001
    assert fast.use_graphs and fast.graph_failures == 0
