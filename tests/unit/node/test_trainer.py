import copy

import pytest
import torch

from node.config import TrainConfig
from node.model.embedded import EMBEDDED_MODELS, build_model, build_tokenizer
from node.rollout import Completion, RolloutGroup
from node.tasks import TaskRef, resolve
from node.trainer import Trainer


@pytest.fixture()
def tiny():
    tok = build_tokenizer()
    return build_model(EMBEDDED_MODELS["tiny"], tok, seed=0), tok


def _groups():
    task = resolve(TaskRef.make("reasoning_gym", "basic_arithmetic", {}, 0, 0))
    texts = ["<answer>1</answer>", "<answer>22</answer>", "<answer>333</answer>", "nope"]
    local = RolloutGroup(task=task, prompt=task.question + "\n",
                         completions=[Completion(text=t) for t in texts], rewards=[1.0, 0.0, 0.0, 1.0])
    external = RolloutGroup(task=task, prompt=task.question + "\n", origin="peer-abc",
                            completions=[Completion(text=t) for t in reversed(texts)],
                            rewards=[0.0, 1.0, 1.0, 0.0])
    return [local, external]


def _grads(model, tok, micro):
    trainer = Trainer(model, tok, TrainConfig(micro_batch_size=micro, max_grad_norm=1e9, lr=1e-3), 1.0, 64, 16)
    # capture the accumulated gradient just before the optimizer step
    captured = {}
    orig = trainer.optimizer.step

    def spy(*a, **k):
        captured.update({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
        return orig(*a, **k)

    trainer.optimizer.step = spy
    stats = trainer.step(_groups())
    return captured, stats


def test_gradient_accumulation_equals_full_batch(tiny):
    model, tok = tiny
    g_full, s_full = _grads(copy.deepcopy(model), tok, micro=8)
    g_acc, s_acc = _grads(copy.deepcopy(model), tok, micro=3)
    assert s_full["loss"] == pytest.approx(s_acc["loss"], rel=1e-5, abs=1e-7)
    for name in g_full:
        torch.testing.assert_close(g_full[name], g_acc[name], rtol=1e-4, atol=1e-7)


def test_step_moves_weights_towards_rewarded_completions(tiny):
    model, tok = tiny
    task = resolve(TaskRef.make("reasoning_gym", "basic_arithmetic", {}, 0, 0))
    good, bad = "<answer>7</answer>", "<answer>9</answer>"
    group = RolloutGroup(task=task, prompt="Q\n", completions=[Completion(text=good), Completion(text=bad)] * 2,
                         rewards=[1.0, 0.0, 1.0, 0.0])
    trainer = Trainer(model, tok, TrainConfig(lr=1e-2), 1.0, 64, 16)
    seqs = trainer.sequences([group])
    before = [sum(x) for x in trainer.sequence_logprobs(seqs[:2])]
    for _ in range(3):
        trainer.step([group])
    after = [sum(x) for x in trainer.sequence_logprobs(seqs[:2])]
    assert after[0] > before[0] and after[1] < before[1]


def test_external_text_is_retokenised_with_eos(tiny):
    model, tok = tiny
    trainer = Trainer(model, tok, TrainConfig(), 1.0, 64, 16)
    seqs = trainer.sequences(_groups()[1:])
    assert len(seqs) == 4
    for s in seqs:
        assert s.behaviour_logprobs is None
        assert s.completion_ids[-1] == tok.eos_token_id


def test_zero_signal_batch_leaves_weights_unchanged(tiny):
    model, tok = tiny
    task = resolve(TaskRef.make("reasoning_gym", "basic_arithmetic", {}, 0, 0))
    group = RolloutGroup(task=task, prompt="Q\n", completions=[Completion(text="a"), Completion(text="b")],
                         rewards=[1.0, 1.0])
    before = copy.deepcopy(model.state_dict())
    Trainer(model, tok, TrainConfig(lr=1e-2, weight_decay=0.0), 1.0, 64, 16).step([group])
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k])


def test_multiple_epochs_report_clipping(tiny):
    model, tok = tiny
    trainer = Trainer(model, tok, TrainConfig(lr=5e-2, epochs_per_round=4), 1.0, 64, 16)
    stats = trainer.step(_groups())
    assert stats["clip_low_frac"] + stats["clip_high_frac"] > 0


def test_external_positive_only_zeroes_negative_external_advantages(tiny):
    model, tok = tiny
    trainer = Trainer(model, tok, TrainConfig(), 1.0, 64, 16, external_positive_only=True)
    local, external = _groups()
    advs_local = [s.advantage for s in trainer.sequences([local])]
    advs_ext = [s.advantage for s in trainer.sequences([external])]
    assert min(advs_local) < 0  # local groups keep plain GRPO advantages
    assert min(advs_ext) == 0.0 and max(advs_ext) > 0


def _local_group_with_behaviour(tok, shift: float):
    """A local group whose recorded behaviour logprobs are the trainer's own minus ``shift`` per token."""
    task = resolve(TaskRef.make("reasoning_gym", "basic_arithmetic", {}, 0, 0))
    texts = ["<answer>1</answer>", "<answer>22</answer>", "x", "<answer>4</answer>"]
    comps = []
    for t in texts:
        ids = tok(t, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        comps.append(Completion(text=t, token_ids=ids, logprobs=[0.0] * len(ids)))
    return RolloutGroup(task=task, prompt="Q\n", completions=comps, rewards=[1.0, 0.0, 0.0, 1.0])


@pytest.mark.parametrize("mode,shift,expect_ess,expect_trunc,expect_mask", [
    ("tis", 0.0, 1.0, 0.0, 0.0),       # behaviour == pi_old: weights all 1
    ("tis", 1.0, 1.0, 1.0, 0.0),       # rho = e > 2: every token truncated to 2 (constant weights: ESS 1)
    ("mask", 1.0, None, 0.0, 1.0),     # rho = e outside [0.5, 2]: every token masked
    ("mask", 0.2, 1.0, 0.0, 0.0),      # rho = e^0.2 = 1.22 inside the band
])
def test_trainer_applies_off_policy_correction(tiny, mode, shift, expect_ess, expect_trunc, expect_mask):
    model, tok = tiny
    trainer = Trainer(model, tok, TrainConfig(off_policy=mode, tis_cap=2.0, lr=1e-3), 1.0, 64, 16)
    group = _local_group_with_behaviour(tok, shift)
    seqs = trainer.sequences([group])
    own = trainer.sequence_logprobs(seqs)
    for c, lp in zip(group.completions, own):
        c.logprobs = [x - shift for x in lp]  # behaviour policy assigned these tokens less mass
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    stats = trainer.step([group])
    assert stats["behaviour_tokens"] == sum(len(c.token_ids) for c in group.completions)
    assert stats["behaviour_log_ratio_abs"] == pytest.approx(shift, abs=2e-4)
    assert stats["tis_truncated_frac"] == pytest.approx(expect_trunc)
    assert stats["tis_masked_frac"] == pytest.approx(expect_mask)
    moved = any(not torch.equal(before[n], p) for n, p in model.named_parameters())
    if mode == "mask" and expect_mask == 1.0:
        assert stats["loss"] == 0.0 and not moved  # nothing left to learn from
    else:
        assert stats["tis_ess"] == pytest.approx(expect_ess, abs=1e-4) and moved


def test_external_groups_get_weight_one(tiny):
    model, tok = tiny
    trainer = Trainer(model, tok, TrainConfig(off_policy="mask"), 1.0, 64, 16)
    stats = trainer.step(_groups())  # text-only completions: no behaviour logprobs at all
    assert stats["behaviour_tokens"] == 0 and stats["tis_masked_frac"] == 0.0 and stats["loss"] != 0.0
