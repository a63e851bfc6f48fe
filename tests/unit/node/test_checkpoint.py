import json

import pytest
import torch

from node.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint, save_checkpoint
from node.model.embedded import EMBEDDED_MODELS, build_model, build_tokenizer


def _model_and_opt(seed):
    tok = build_tokenizer()
    model = build_model(EMBEDDED_MODELS["tiny"], tok, seed=seed)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    # one step so the optimizer has state
    model(input_ids=torch.tensor([[5, 6, 7]])).logits.sum().backward()
    opt.step()
    return model, opt


def test_roundtrip_restores_weights_optimizer_and_rng(tmp_path):
    model, opt = _model_and_opt(0)
    torch.manual_seed(42)
    path = save_checkpoint(tmp_path, 7, model, opt, {"trainer_steps": 7})
    expected_next = torch.rand(3)
    other, other_opt = _model_and_opt(1)
    torch.manual_seed(0)
    state = load_checkpoint(path, other, other_opt)
    assert state["round"] == 7 and state["trainer_steps"] == 7
    for (k, v), (_, w) in zip(model.state_dict().items(), other.state_dict().items()):
        torch.testing.assert_close(v, w)
    s1, s2 = opt.state_dict()["state"], other_opt.state_dict()["state"]
    for k in s1:
        torch.testing.assert_close(s1[k]["exp_avg"], s2[k]["exp_avg"])
    torch.testing.assert_close(torch.rand(3), expected_next)  # the RNG stream continues where it was


def test_keep_latest_and_ignore_partial_writes(tmp_path):
    model, opt = _model_and_opt(0)
    for r in (1, 2, 3, 4):
        save_checkpoint(tmp_path, r, model, opt, keep=2)
    assert [r for r, _ in list_checkpoints(tmp_path)] == [3, 4]
    # a crashed writer leaves a temp dir and a round dir without state.json: neither counts
    (tmp_path / "checkpoints" / ".tmp-round-000009-1").mkdir()
    (tmp_path / "checkpoints" / "round-000010").mkdir()
    assert latest_checkpoint(tmp_path).name == "round-000004"


def test_saving_the_same_round_twice_replaces_it(tmp_path):
    model, opt = _model_and_opt(0)
    save_checkpoint(tmp_path, 5, model, opt, {"mark": 1})
    save_checkpoint(tmp_path, 5, model, opt, {"mark": 2})
    path = latest_checkpoint(tmp_path)
    assert json.loads((path / "state.json").read_text())["mark"] == 2
    assert len(list((tmp_path / "checkpoints").iterdir())) == 1


def test_lora_checkpoint_holds_only_adapters(tmp_path):
    peft = pytest.importorskip("peft")
    tok = build_tokenizer()
    base = build_model(EMBEDDED_MODELS["tiny"], tok, seed=0)
    model = peft.get_peft_model(base, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    path = save_checkpoint(tmp_path, 1, model, opt)
    from safetensors.torch import load_file

    keys = set(load_file(str(path / "model.safetensors")))
    assert keys and all("lora_" in k for k in keys)
    load_checkpoint(path, model, opt)
