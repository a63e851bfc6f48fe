"""The Prometheus exporter (real HTTP on 127.0.0.1 port 0), NodeObserver's node.json, and the node logger."""

import json
import logging
import os
import time
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from node.config import load_config
from node.logs import NodeLog, set_context, setup_logging
from node.observe import METRIC_NAMES, Exporter, NodeObserver, local_url, merge_node_json, read_node_json


def _row(r: int, **kw) -> dict:
    row = {"round": r, "reward_mean": 0.25 + 0.01 * r, "loss": -0.01 * r, "local_groups": 6, "external_groups": 2,
           "gen_tokens_per_s": 1000.0 + r, "train_tokens_per_s": 2000.0 + r, "round_s": 0.1,
           "policy_version": r, "admitted": 3 * r, "rejected": {"bad_signature": r, "stale": 1}, "peers": 2,
           "bytes_in": 100 * r, "bytes_out": 50 * r, "published": 4 * r, "time": time.time(),
           "transport_events": {"fetch_failed": r}}
    row.update(kw)
    return row


def _scrape(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as resp:
        assert resp.status == 200
        text = resp.read().decode()
    out: dict = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def _one(samples: dict, name: str, **labels) -> float:
    hits = [v for lab, v in samples[name] if all(lab.get(k) == x for k, x in labels.items())]
    assert len(hits) == 1, (name, labels, samples.get(name))
    return hits[0]


def test_exporter_serves_documented_names_with_row_values():
    exp = Exporter({"peer_id": "12D3KooWtest", "model": "embedded:tiny", "swarm_id": "s1"})
    url = exp.start("127.0.0.1", 0)
    try:
        assert url.startswith("http://127.0.0.1:") and not url.startswith("http://127.0.0.1:0/")
        before = _scrape(url)
        assert "sapo_info" in before and "sapo_round" not in before  # no round yet: no made-up zeros
        for r in (1, 2, 3):
            exp.update(_row(r))
        exp.checkpoint_saved(2, time.time() - 30)
        s = _scrape(url)
        for name in METRIC_NAMES:
            assert name in s, name
        assert _one(s, "sapo_info", peer_id="12D3KooWtest", model="embedded:tiny", swarm_id="s1") == 1
        assert _one(s, "sapo_round") == 3
        assert _one(s, "sapo_reward_mean") == pytest.approx(0.28)
        assert _one(s, "sapo_loss") == pytest.approx(-0.03)
        assert _one(s, "sapo_gen_tokens_per_second") == 1003 and _one(s, "sapo_train_tokens_per_second") == 2003
        assert _one(s, "sapo_groups", kind="local") == 6 and _one(s, "sapo_groups", kind="external") == 2
        assert _one(s, "sapo_admitted_total") == 9 and _one(s, "sapo_published_total") == 12
        assert _one(s, "sapo_rejected_total", reason="bad_signature") == 3
        assert _one(s, "sapo_rejected_total", reason="stale") == 1
        assert _one(s, "sapo_peers") == 2
        assert _one(s, "sapo_bytes_total", direction="in") == 300 and _one(s, "sapo_bytes_total", direction="out") == 150
        assert _one(s, "sapo_staleness") == 0  # sync mode
        assert _one(s, "sapo_transport_events_total", kind="fetch_failed") == 3
        assert _one(s, "sapo_checkpoint_round") == 2
        assert 29 <= _one(s, "sapo_checkpoint_age_seconds") < 60
        assert time.time() - _one(s, "sapo_last_round_timestamp_seconds") < 60
        assert "process_resident_memory_bytes" in s or os.name != "posix"
    finally:
        exp.stop()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(url, timeout=2)


def test_two_exporters_in_one_process_do_not_share_values():
    a, b = Exporter({"peer_id": "A"}), Exporter({"peer_id": "B"})
    ua, ub = a.start("127.0.0.1", 0), b.start("127.0.0.1", 0)
    try:
        assert ua != ub
        a.update(_row(5))
        b.update(_row(7, loss=float("nan"), rejected={}))
        sa, sb = _scrape(ua), _scrape(ub)
        assert _one(sa, "sapo_round") == 5 and _one(sb, "sapo_round") == 7
        assert _one(sb, "sapo_loss") != _one(sb, "sapo_loss")  # NaN passes through, never a crash
        assert "sapo_rejected_total" not in sb
        assert _one(sa, "sapo_info", peer_id="A") == 1 and _one(sb, "sapo_info", peer_id="B") == 1
    finally:
        a.stop()
        b.stop()


def test_local_url_maps_wildcards_to_loopback():
    assert local_url("0.0.0.0", 9100) == "http://127.0.0.1:9100/metrics"
    assert local_url("::", 9100) == "http://[::1]:9100/metrics"
    assert local_url("10.0.0.5", 1) == "http://10.0.0.5:1/metrics"


def test_observer_writes_metrics_url_to_node_json_and_stops(tmp_path):
    cfg = load_config(None, ["swarm.enabled=false", "metrics.port=0"])
    merge_node_json(tmp_path, {"addrs": ["/ip4/1.2.3.4/tcp/1/p2p/stale"], "pid": 1})  # from an older run
    lines = []
    obs = NodeObserver(cfg, tmp_path, exchange=None, log=lines.append)
    try:
        info = read_node_json(tmp_path)
        assert info["pid"] == os.getpid() and info["addrs"] == [] and info["peer_id"] is None
        url = info["metrics_url"]
        assert url.startswith("http://127.0.0.1:") and f"metrics at {url}" in lines
        obs.round_started(1)
        obs.update(_row(1))
        obs.checkpoint_saved(1)
        s = _scrape(url)
        assert _one(s, "sapo_round") == 1 and _one(s, "sapo_checkpoint_age_seconds") < 30
    finally:
        obs.close()
    assert read_node_json(tmp_path)["stopped_at"] >= info["started_at"]
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(url, timeout=2)


def test_observer_without_port_serves_nothing(tmp_path):
    cfg = load_config(None, ["swarm.enabled=false"])
    obs = NodeObserver(cfg, tmp_path, log=lambda m: None)
    obs.update(_row(1))
    obs.close()
    assert read_node_json(tmp_path)["metrics_url"] is None


def test_json_logs_carry_peer_id_and_round(tmp_path, capsys):
    class Cfg:
        format, level, file = "json", "info", str(tmp_path / "node.log")

    log = NodeLog(setup_logging(Cfg()))
    try:
        log("starting")
        set_context(log, peer_id="12D3KooWabc")
        set_context(log, round=7)
        log("round 7 done")
        log.warning("slow peer")
    finally:
        setup_logging(None)  # back to the text console; closes the file handler
    out = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    in_file = [json.loads(x) for x in (tmp_path / "node.log").read_text().splitlines()]
    assert out == in_file and len(out) == 3
    assert set(out[0]) == {"time", "level", "msg", "peer_id", "round"}
    assert out[0]["peer_id"] is None and out[0]["round"] is None
    assert out[1] == {**out[1], "msg": "round 7 done", "peer_id": "12D3KooWabc", "round": 7, "level": "info"}
    assert out[2]["level"] == "warning" and out[2]["time"].endswith("Z")


def test_text_logs_keep_console_lines_and_file_gets_context(tmp_path, capsys):
    class Cfg:
        format, level, file = "text", "info", str(tmp_path / "node.log")

    log = NodeLog(setup_logging(Cfg()), peer_id="12D3KooWxyz0123456789", round=3)
    try:
        log("round     3 | reward 0.500")
        log("hidden", level=logging.DEBUG)
    finally:
        setup_logging(None)
    assert capsys.readouterr().out == "round     3 | reward 0.500\n"
    line = (tmp_path / "node.log").read_text().strip()
    assert "INFO" in line and "[12D3KooWxyz0... r3] round     3 | reward 0.500" in line


def test_set_context_on_a_plain_callable_is_a_no_op():
    set_context(print, peer_id="x", round=1)
