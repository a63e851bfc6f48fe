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


def test_a_crash_between_the_two_renames_of_a_resave_loses_nothing(tmp_path):
    model, opt = _model_and_opt(0)
    save_checkpoint(tmp_path, 4, model, opt)
    save_checkpoint(tmp_path, 5, model, opt, {"mark": "old"})
    root = tmp_path / "checkpoints"
    # a re-save of round 5 was killed after moving the old copy aside, before its new copy took the name
    (root / "round-000005").rename(root / ".old-round-000005-99999")
    (root / ".tmp-round-000005-99999").mkdir()
    assert latest_checkpoint(tmp_path) == root / ".old-round-000005-99999"
    assert load_checkpoint(latest_checkpoint(tmp_path), model, opt)["mark"] == "old"
    save_checkpoint(tmp_path, 6, model, opt, keep=2)  # the next save puts the old copy back and cleans up
    assert sorted(p.name for p in root.iterdir()) == ["round-000005", "round-000006"]


def test_a_full_disk_raises_disk_full_and_leaves_no_partial_checkpoint(tmp_path, monkeypatch):
    import node.checkpoint as ck

    model, opt = _model_and_opt(0)
    good = save_checkpoint(tmp_path, 3, model, opt)

    def write_half_then_fail(tmp, *args):
        (tmp / "model.safetensors").write_bytes(b"\0" * 1000)
        # what torch.save's C++ writer raises when the disk fills (the errno is lost on the way)
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 1758272 vs 1758160")

    monkeypatch.setattr(ck, "_write_files", write_half_then_fail)
    monkeypatch.setattr(ck, "_no_space_left", lambda path: True)
    with pytest.raises(ck.DiskFullError) as info:
        save_checkpoint(tmp_path, 6, model, opt)
    assert str(info.value).startswith("disk full: no space left on device while writing checkpoint ")
    assert str(tmp_path / "checkpoints" / ".tmp-round-000006-") in str(info.value)
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["round-000003"]
    assert latest_checkpoint(tmp_path) == good
    message = ck.disk_full_message(info.value, tmp_path)
    assert f"the newest complete checkpoint {good} is intact" in message and "run the same command" in message

    # the same failure with free space left is not a full disk: it propagates as it was, still cleaned up
    monkeypatch.setattr(ck, "_no_space_left", lambda path: False)
    with pytest.raises(RuntimeError, match="enforce fail"):
        save_checkpoint(tmp_path, 6, model, opt)
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["round-000003"]
    # an errno anywhere in the chain is enough (safetensors reports "No space left on device (os error 28)")
    try:
        try:
            raise OSError(28, "No space left on device")
        except OSError as exc:
            raise RuntimeError("writer failed") from exc
    except RuntimeError as exc:
        assert ck._caused_by_full_disk(exc)
    assert not ck._caused_by_full_disk(RuntimeError("boom"))
