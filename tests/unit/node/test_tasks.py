import json
import subprocess
import sys

import pytest

from node.config import Config
from node.tasks import TaskError, TaskMix, TaskRef, extract_answer, resolve, score
from node.tasks.reasoning_gym import SAPO_DATASETS

REFS = [TaskRef.make("reasoning_gym", name, {}, seed=11, index=idx)
        for name in SAPO_DATASETS for idx in (0, 12345)]


def _fingerprint(refs):
    return [[r.key, resolve(r).question, resolve(r).answer] for r in refs]


def test_nine_sapo_datasets_resolve():
    for ref in REFS:
        task = resolve(ref)
        assert task.question and task.ref == ref


def test_rederivation_is_identical_in_a_fresh_process():
    code = (
        "import json,sys\n"
        "from node.tasks import TaskRef, resolve\n"
        "refs=[TaskRef(**d) for d in json.loads(sys.stdin.read())]\n"
        "print(json.dumps([[r.key, resolve(r).question, resolve(r).answer] for r in refs]))\n"
    )
    payload = json.dumps([r.__dict__ for r in REFS])
    out = subprocess.run([sys.executable, "-c", code], input=payload, capture_output=True, text=True,
                         check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == _fingerprint(REFS)


def test_reference_answer_scores_one_and_junk_scores_zero():
    for name in ("basic_arithmetic", "base_conversion", "calendar_arithmetic", "fraction_simplification"):
        task = resolve(TaskRef.make("reasoning_gym", name, {}, seed=5, index=3))
        assert score(task, f"<answer>{task.answer}</answer>") == 1.0
        assert score(task, "<answer>definitely wrong</answer>") < 0.1
        assert score(task, f"{task.answer}") == 0.0  # no tags, no answer


def test_config_is_canonical():
    a = TaskRef.make("reasoning_gym", "basic_arithmetic", {"max_terms": 2, "min_terms": 2}, 1, 0)
    b = TaskRef.make("reasoning_gym", "basic_arithmetic", {"min_terms": 2, "max_terms": 2}, 1, 0)
    assert a == b and a.key == b.key
    assert resolve(a).question == resolve(b).question


def test_nodes_with_adjacent_seeds_ask_disjoint_questions():
    # reasoning-gym derives item i from seed + i, so (seed 1, index 1) == (seed 2, index 0); the task mix
    # hashes the node seed so that neighbouring nodes do not ask the same questions shifted by one.
    a = TaskRef.make("reasoning_gym", "basic_arithmetic", {}, 1, 1)
    b = TaskRef.make("reasoning_gym", "basic_arithmetic", {}, 2, 0)
    assert resolve(a).question == resolve(b).question
    mixes = [TaskMix(Config().tasks.mix, seed=s) for s in (0, 1, 2)]
    keys = [{(r.seed + r.index, r.config) for rnd in range(20) for r in m.refs_for_round(rnd, 8)}
            for m in mixes]
    assert not (keys[0] & keys[1]) and not (keys[1] & keys[2])


@pytest.mark.parametrize("ref", [
    TaskRef.make("reasoning_gym", "no_such_dataset", {}, 1, 0),
    TaskRef.make("reasoning_gym", "basic_arithmetic", {"no_such_knob": 1}, 1, 0),
    TaskRef.make("reasoning_gym", "basic_arithmetic", {}, 1, -1),
    TaskRef.make("elsewhere", "basic_arithmetic", {}, 1, 0),
])
def test_underivable_reference_raises_task_error(ref):
    with pytest.raises(TaskError):
        resolve(ref)


@pytest.mark.parametrize("text,expected", [
    ("<answer>42</answer>", "42"),
    ("reasoning... <answer> -7 </answer>", "-7"),
    ("<answer>1</answer> then <answer>2</answer>", "2"),  # the last complete pair wins
    ("<answer>3</answer><answer>4", "3"),  # an unclosed tag is ignored
    ("<answer>multi\nline</answer>", "multi\nline"),
    ("no tags here", None),
    ("<ANSWER>5</ANSWER>", None),  # case-sensitive
    ("<answer></answer>", ""),
])
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_task_mix_is_stateless_and_seeded():
    mix = TaskMix(Config().tasks.mix, seed=3)
    assert mix.refs_for_round(7, 4) == TaskMix(Config().tasks.mix, seed=3).refs_for_round(7, 4)
    assert mix.refs_for_round(7, 4) != mix.refs_for_round(8, 4)
    assert mix.refs_for_round(7, 4) != TaskMix(Config().tasks.mix, seed=4).refs_for_round(7, 4)
    assert len({r.index for r in mix.refs_for_round(7, 4)}) == 4


def test_task_mix_weights():
    cfg = Config.model_validate({"tasks": {"mix": [
        {"dataset": "basic_arithmetic", "weight": 3.0}, {"dataset": "base_conversion", "weight": 1.0}]}})
    mix = TaskMix(cfg.tasks.mix, seed=0)
    names = [r.dataset for rnd in range(100) for r in mix.refs_for_round(rnd, 8)]
    frac = names.count("basic_arithmetic") / len(names)
    assert 0.68 < frac < 0.82
