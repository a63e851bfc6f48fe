import pytest
import torch

from node.config import GenerationConfig, TrainConfig
from node.generator.hf import HFGenerator, filter_logits
from node.model.embedded import EMBEDDED_MODELS, build_model, build_tokenizer
from node.rollout import RolloutGroup
from node.tasks import TaskRef, resolve
from node.trainer import Trainer


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    tok = build_tokenizer()
    model = build_model(EMBEDDED_MODELS["tiny"], tok, seed=0).eval()
    return model, tok


PROMPTS = ["Calculate 1 + 2.\n", "Calculate 31 - 17 and also think about it for a while.\n", "Hi\n"]


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_generator_logprobs_match_trainer_forward(tiny, temperature):
    model, tok = tiny
    gcfg = GenerationConfig(group_size=3, max_new_tokens=12, temperature=temperature, batch_size=5)
    gen = HFGenerator(model, tok, gcfg)
    outs = gen.generate(PROMPTS, n=3, seed=123)
    assert [len(o) for o in outs] == [3, 3, 3]
    trainer = Trainer(model, tok, TrainConfig(), temperature, gcfg.max_prompt_tokens, gcfg.max_new_tokens)
    task = resolve(TaskRef.make("reasoning_gym", "basic_arithmetic", {}, 0, 0))
    groups = [RolloutGroup(task=task, prompt=p, completions=c, rewards=[0.0, 0.5, 1.0])
              for p, c in zip(PROMPTS, outs)]
    seqs = trainer.sequences(groups)
    recomputed = trainer.sequence_logprobs(seqs)
    n_tokens = 0
    for seq, ref in zip(seqs, recomputed):
        assert len(seq.behaviour_logprobs) == len(ref) == len(seq.completion_ids)
        assert seq.behaviour_logprobs == pytest.approx(ref, abs=2e-4)
        n_tokens += len(ref)
    assert n_tokens > 9  # something was actually sampled


def test_sampling_is_seeded(tiny):
    model, tok = tiny
    gen = HFGenerator(model, tok, GenerationConfig(group_size=2, max_new_tokens=8))
    a = gen.generate(PROMPTS, 4, seed=1)
    b = gen.generate(PROMPTS, 4, seed=1)
    c = gen.generate(PROMPTS, 4, seed=2)
    ids = lambda o: [x.token_ids for grp in o for x in grp]  # noqa: E731
    assert ids(a) == ids(b) and ids(a) != ids(c)


def test_completions_stop_at_eos_and_text_excludes_it(tiny):
    model, tok = tiny
    gen = HFGenerator(model, tok, GenerationConfig(group_size=2, max_new_tokens=40))
    for grp in gen.generate(PROMPTS, 8, seed=0):
        for c in grp:
            assert len(c.token_ids) == len(c.logprobs) <= 40
            if c.finished:
                assert c.token_ids[-1] == tok.eos_token_id and tok.eos_token_id not in c.token_ids[:-1]
            else:
                assert len(c.token_ids) == 40
            assert "<eos>" not in c.text
            assert all(lp <= 0.0 for lp in c.logprobs)


def test_filter_logits_top_k_and_top_p():
    scores = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    k2 = filter_logits(scores, top_k=2, top_p=1.0)
    assert torch.isinf(k2[0, 2:]).all() and torch.isfinite(k2[0, :2]).all()
    p = filter_logits(scores, top_k=0, top_p=0.7)  # 0.5 < 0.7, 0.5+0.3 >= 0.7: keep two
    assert torch.isfinite(p[0, :2]).all() and torch.isinf(p[0, 2:]).all()
    p1 = filter_logits(scores, top_k=0, top_p=0.4)  # the top token always stays
    assert torch.isfinite(p1[0, 0]) and torch.isinf(p1[0, 1:]).all()


def test_top_k_behaviour_logprobs_are_renormalised(tiny):
    model, tok = tiny
    gen = HFGenerator(model, tok, GenerationConfig(group_size=2, max_new_tokens=6, top_k=1))
    for grp in gen.generate(PROMPTS[:1], 3, seed=0):
        for c in grp:  # top-1 sampling is greedy: every behaviour logprob is log 1 = 0
            assert c.logprobs == pytest.approx([0.0] * len(c.logprobs), abs=1e-6)
