import json

from node.model.embedded import build_tokenizer, embedded_dir, ensure_embedded


def test_tokenizer_roundtrip_and_answer_tags_are_single_tokens():
    tok = build_tokenizer()
    text = "Calculate -5 + 8.\n<answer>3</answer>"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text
    assert len(tok("<answer>", add_special_tokens=False)["input_ids"]) == 1
    assert tok.eos_token_id is not None and tok.pad_token_id is not None
    assert tok.pad_token_id != tok.eos_token_id


def test_cache_is_built_once_and_rebuilt_when_corrupt(tmp_path, monkeypatch):
    monkeypatch.setenv("SAPO_CACHE_DIR", str(tmp_path))
    messages = []
    path = ensure_embedded("tiny", 2, log=messages.append)
    assert path == embedded_dir("tiny", 2) and (path / "manifest.json").is_file()
    manifest = json.loads((path / "manifest.json").read_text())
    assert "model.safetensors" in manifest["files"]
    built = len(messages)
    assert ensure_embedded("tiny", 2, log=messages.append) == path
    assert len(messages) == built  # cache hit: nothing rebuilt
    weights = path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10] + b"0123456789")
    ensure_embedded("tiny", 2, log=messages.append)
    assert any("integrity" in m for m in messages)
    assert json.loads((path / "manifest.json").read_text())["files"]["model.safetensors"] == \
        manifest["files"]["model.safetensors"]  # deterministic rebuild gives the same bytes


def test_unknown_variant_has_clear_error():
    import pytest

    with pytest.raises(ValueError, match="embedded:tiny"):
        ensure_embedded("huge", 1)
