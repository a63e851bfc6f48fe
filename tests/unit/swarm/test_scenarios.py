from pathlib import Path

import pytest

from node.config import ConfigError, load_config
from swarm.sim.scenario import load_scenario

SCENARIOS = sorted((Path(__file__).parents[3] / "configs" / "sim").glob("*.yaml"))


def test_example_scenarios_exist():
    names = {p.stem for p in SCENARIOS}
    assert {"smoke", "churn", "adversarial", "heterogeneous", "sapo"} <= names


@pytest.mark.parametrize("path", SCENARIOS, ids=lambda p: p.name)
def test_every_scenario_parses_and_its_node_overrides_are_valid(path):
    sc = load_scenario(path)
    for name, group, seed in sc.nodes():
        extra = [] if group.role == "honest" else [f"adversary.role={group.role}"]
        load_config(overrides=[*sc.set, *group.set, *extra, f"seed={seed}"])


def test_scenario_errors_name_the_field(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text("name: x\ngroups: [{name: a}]\n")
    with pytest.raises(ConfigError, match="rounds"):
        load_scenario(p)
    p.write_text("name: x\nrounds: 2\ngroups: [{name: a, role: wizard}]\n")
    with pytest.raises(ConfigError, match="groups\\[0\\].role"):
        load_scenario(p)


def test_node_names_and_seeds():
    from swarm.sim.scenario import Scenario

    sc = Scenario.model_validate({"name": "x", "rounds": 1, "groups": [
        {"name": "a", "count": 2}, {"name": "b", "count": 2, "seed": 50}]})
    assert [(n, s) for n, _, s in sc.nodes()] == [("a-0", 0), ("a-1", 1), ("b-0", 50), ("b-1", 51)]
