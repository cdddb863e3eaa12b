"""The load test's short form: 50 triage requests from 16 concurrent clients against the real app, no error.

Runs experiments/reliability/load_test.py's own code (the full run, with the memory criterion, is
`python experiments/reliability/load_test.py`). Latency is not asserted: CI machines are shared and noisy.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO

LOAD_TEST = REPO / "experiments" / "reliability" / "load_test.py"


@pytest.fixture(scope="module")
def load_test():
    spec = importlib.util.spec_from_file_location("load_test", LOAD_TEST)
    module = importlib.util.module_from_spec(spec)
    sys.modules["load_test"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("load_test", None)


def test_50_requests_from_16_clients_all_succeed(load_test, tmp_path: Path):
    args = ["--requests", "50", "--clients", "16", "--memory-requests", "0", "--timeout-s", "300"]
    code = load_test.main([*args, "--no-progress", "--out", str(tmp_path)])
    summary = json.loads((tmp_path / "load_test.json").read_text())
    assert summary["errors"] == 0, summary["error_examples"]
    assert code == 0 and summary["passed"] is True
    assert summary["completed"] == 50
    # every response was checked by check_triage (well-formed card, probabilities, inline overlay) and counted
    assert sum(summary["levels"].values()) == 50 and set(summary["levels"]) <= {"routine", "refer", "urgent"}
    assert summary["latency_ms"]["p50"] > 0 and summary["rss_mib"]  # measured, not judged
    assert "| errors | 0 |" in (tmp_path / "load_test.md").read_text()


def test_check_triage_refuses_malformed_results(load_test):
    card = '<div data-level="refer">'
    raw = {"referral": {"level": "refer", "reasons": ["x"]}, "probabilities": {"a": 0.5, "b": 0.5}}
    label = {"confidences": [{}] * 5}
    good = (card, label, '<img src="data:image/webp;base64,AAAA"><div>Grad-CAM: ...</div>', "", raw)
    assert load_test.check_triage(good) == "refer"
    with pytest.raises(ValueError, match="no Grad-CAM overlay"):
        load_test.check_triage((card, label, "/gradio_api/file=/tmp/x.webp Grad-CAM", "", raw))
    with pytest.raises(ValueError, match="referral level"):
        load_test.check_triage((card, label, good[2], "", {**raw, "referral": {"level": "maybe"}}))
    with pytest.raises(ValueError, match="outputs"):
        load_test.check_triage(good[:4])
