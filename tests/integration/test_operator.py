"""Operator experience with real `sapo` processes: the metrics endpoint of a live node, json logs, `sapo status`,
`sapo health` and `sapo report`."""

import json
import signal
import urllib.error
import urllib.request

import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from node.observe import METRIC_NAMES
from node.report import DPI, FIGSIZE
from tests.integration.helpers import FAST, SOLO, metrics, run_sapo, start_sapo, stop, wait_for

pytestmark = pytest.mark.slow


def _node_json(run_dir):
    try:
        return json.loads((run_dir / "node.json").read_text())
    except (FileNotFoundError, ValueError):
        return {}


def _scrape(url):
    """{sample name: (labels, value)} plus the announced family names (under "families")."""
    with urllib.request.urlopen(url, timeout=5) as resp:
        text = resp.read().decode()
    fams = list(text_string_to_metric_families(text))
    out = {s.name: (s.labels, s.value) for fam in fams for s in fam.samples}
    out["families"] = {f.name + ("_total" if f.type == "counter" else "") for f in fams}
    return out


def test_live_node_serves_metrics_logs_json_and_answers_status_and_health(tmp_path):
    run_dir = tmp_path / "node"
    proc = start_sapo("run", "--run-dir", str(run_dir), *FAST, "--set", "metrics.port=0",
                      "--set", "logging.format=json", "--set", f"logging.file={tmp_path / 'node.log'}",
                      "--set", "checkpoint.every_rounds=2", log=tmp_path / "stdout.log")
    try:
        wait_for(lambda: len(metrics(run_dir)) >= 3, 180, what="three rounds")
        info = _node_json(run_dir)
        assert info["pid"] == proc.pid and info["peer_id"].startswith("12D3KooW")
        url = info["metrics_url"]
        assert url.startswith("http://127.0.0.1:") and not url.startswith("http://127.0.0.1:0/")
        s = _scrape(url)
        assert set(METRIC_NAMES) <= s["families"]  # sapo_rejected_total has no sample until a rejection
        assert s["sapo_info"][0]["peer_id"] == info["peer_id"] and s["sapo_info"][0]["swarm_id"] == "sapo-local"
        assert s["sapo_round"][1] >= 3 and 0.0 <= s["sapo_reward_mean"][1] <= 1.0
        assert s["sapo_gen_tokens_per_second"][1] > 0 and s["sapo_train_tokens_per_second"][1] > 0
        assert s["sapo_staleness"][1] == 0 and s["sapo_peers"][1] == 0
        assert 0 <= s["sapo_checkpoint_age_seconds"][1] < 120 and s["sapo_checkpoint_round"][1] >= 2

        health = run_sapo("health", str(run_dir))
        assert health.returncode == 0, health.stdout + health.stderr
        assert health.stdout.startswith("ok:")
        for target in (str(run_dir), url):
            st = run_sapo("status", target)
            assert st.returncode == 0, st.stderr
            assert info["peer_id"] in st.stdout.replace("\n", "") or info["peer_id"][:40] in st.stdout
            assert "running" in st.stdout

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    finally:
        stop(proc)

    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(url, timeout=2)
    after = run_sapo("health", str(run_dir))
    assert after.returncode == 1 and "stopped" in after.stderr
    lines = [json.loads(x) for x in (tmp_path / "node.log").read_text().splitlines()]
    assert all(set(x) == {"time", "level", "msg", "peer_id", "round"} for x in lines)
    rounds = [x for x in lines if x["msg"].startswith("round ")]
    assert len(rounds) >= 3
    assert all(x["peer_id"] == info["peer_id"] for x in rounds)
    assert [x["round"] for x in rounds] == [int(x["msg"].split("|")[0].split()[1]) for x in rounds]
    assert any(x["msg"].startswith("metrics at http://127.0.0.1:") for x in lines)


def test_status_and_report_of_a_finished_solo_run(tmp_path):
    run_dir = tmp_path / "solo"
    out = run_sapo("run", "--run-dir", str(run_dir), "--rounds", "3", *SOLO, "--set", "metrics.port=0")
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"sapo status {run_dir}" in out.stdout and "sapo report" in out.stdout
    assert "metrics at http://127.0.0.1:" in out.stdout
    info = _node_json(run_dir)
    assert info["stopped_at"] >= info["started_at"] and info["addrs"] == []

    st = run_sapo("status", str(run_dir))
    assert st.returncode == 0, st.stderr
    assert "clean exit" in st.stdout and "round 3, saved" in st.stdout and "3 rounds" in st.stdout

    png = tmp_path / "reward.png"
    rep = run_sapo("report", str(run_dir), str(run_dir), "--out", str(png), "--labels", "a,b")
    assert rep.returncode == 0, rep.stderr
    with Image.open(png) as im:
        assert im.size == (int(FIGSIZE[0] * DPI), int(FIGSIZE[1] * DPI))
