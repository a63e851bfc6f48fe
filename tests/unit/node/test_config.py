from pathlib import Path

import pytest

from node.config import Config, ConfigError, load_config, parse_override

CONFIGS = sorted((Path(__file__).parents[3] / "configs").glob("*.yaml"))


def test_configs_dir_is_not_empty():
    names = {p.name for p in CONFIGS}
    assert {"local.yaml", "qwen2.5-0.5b.yaml", "qwen2.5-1.5b.yaml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_config_file_parses(path):
    cfg = load_config(path)
    assert isinstance(cfg, Config)


def test_local_yaml_is_the_builtin_default():
    assert load_config(Path(__file__).parents[3] / "configs" / "local.yaml") == Config()


def test_gpu_configs_name_hub_models():
    cfg = load_config(Path(__file__).parents[3] / "configs" / "qwen2.5-0.5b.yaml")
    assert cfg.model.name == "Qwen/Qwen2.5-0.5B-Instruct"
    assert not cfg.model.embedded


def test_unknown_key_names_field_and_alternatives():
    with pytest.raises(ConfigError) as e:
        load_config(overrides=["train.lrr=1e-4"])
    msg = str(e.value)
    assert "train.lrr" in msg and "unknown key" in msg and "lr" in msg


def test_unknown_top_level_key_in_file(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("trian:\n  lr: 1.0\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert "trian" in str(e.value) and "train" in str(e.value) and str(p) in str(e.value)


def test_bad_value_names_field_and_value():
    with pytest.raises(ConfigError) as e:
        load_config(overrides=["generation.group_size=1"])
    msg = str(e.value)
    assert "generation.group_size" in msg and "greater than or equal to 2" in msg and "got 1" in msg


def test_bad_type_names_field():
    with pytest.raises(ConfigError) as e:
        load_config(overrides=["train.lr=fast"])
    assert "train.lr" in str(e.value)


def test_task_config_must_not_carry_seed():
    with pytest.raises(ConfigError) as e:
        load_config(overrides=["tasks.mix=[{dataset: basic_arithmetic, config: {seed: 3}}]"])
    assert "tasks.mix[0]" in str(e.value) and "seed" in str(e.value)


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    lst = tmp_path / "list.yaml"
    lst.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(lst)


def test_override_precedence(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  lr: 0.5\nseed: 3\n")
    cfg = load_config(p, ["train.lr=0.25"], {"rounds": 7})
    assert cfg.train.lr == 0.25 and cfg.seed == 3 and cfg.rounds == 7


def test_model_shorthand_string():
    cfg = load_config(overrides=["model=Qwen/Qwen2.5-1.5B-Instruct", "model.lora.enabled=true"])
    assert cfg.model.name == "Qwen/Qwen2.5-1.5B-Instruct" and cfg.model.lora.enabled


@pytest.mark.parametrize("item,key,value", [
    ("a.b=3", "a.b", 3), ("x=1.0e-4", "x", 1e-4), ("flag=true", "flag", True), ("l=[1, 2]", "l", [1, 2]),
    ("s=hello world", "s", "hello world"), ("e=", "e", ""),
])
def test_parse_override_types(item, key, value):
    assert parse_override(item) == (key, value)


def test_parse_override_rejects_missing_equals():
    with pytest.raises(ConfigError, match="dotted.key=value"):
        parse_override("train.lr")


def test_sapo_batch_must_not_be_empty():
    with pytest.raises(ConfigError, match="local_groups"):
        load_config(overrides=["sapo.local_groups=0", "sapo.external_groups=0"])


def test_exponent_without_dot_still_sets_a_float():
    # YAML 1.1 reads 1e-4 as a string; the schema coerces numeric strings for float fields.
    assert load_config(overrides=["train.lr=1e-4"]).train.lr == 1e-4


def test_switching_transport_on_the_command_line_drops_the_other_backends_keys():
    local = Path(__file__).parents[3] / "configs" / "local.yaml"
    cfg = load_config(local, extra={"swarm.transport.type": "libp2p"})
    assert cfg.swarm.transport.type == "libp2p"
    assert cfg.swarm.transport.listen == ["/ip4/127.0.0.1/tcp/0"]  # shared keys kept
    with pytest.raises(ConfigError, match="window_s"):  # a file that mixes both is still an error
        load_config(overrides=["swarm.transport.type=libp2p", "swarm.transport.window_s=3"])


def test_transport_fields_without_a_type_mean_the_default_backend():
    cfg = load_config(None, ["swarm.transport.listen=[/ip4/127.0.0.1/tcp/31337]"])
    assert cfg.swarm.transport.type == "hivemind" and cfg.swarm.transport.listen == ["/ip4/127.0.0.1/tcp/31337"]
    cfg = load_config(None, extra={"swarm.transport.listen": ["/ip4/0.0.0.0/tcp/1"]})  # what `sapo bootstrap --listen` does
    assert cfg.swarm.transport.type == "hivemind"
