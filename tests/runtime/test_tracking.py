"""The metrics sink: wandb offline resumes by id; a wandb that cannot start never stops training."""
from __future__ import annotations

import json
import re

from vosr.config import LogConfig
from vosr.runtime.tracking import MetricsLogger


def test_wandb_that_cannot_start_degrades_to_jsonl(tmp_path, monkeypatch):
    # Real failure, no mock: online mode with no API key anywhere (empty HOME, no netrc).
    for var in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_SERVICE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "home" / ".config"))
    sink = MetricsLogger(LogConfig(wandb_mode="online"), run_dir=tmp_path, rank=0, run_id="abc123", name="t",
                         config={})
    assert not sink.enabled and sink.run_id == "abc123"
    sink.log({"loss/flow": 0.5}, step=1)
    sink.close()
    assert json.loads((tmp_path / "metrics.jsonl").read_text()) == {"step": 1, "loss/flow": 0.5}


def test_offline_run_resumes_by_id(tmp_path):
    first = MetricsLogger(LogConfig(wandb_mode="offline"), run_dir=tmp_path, rank=0, run_id=None, name="t", config={})
    run_id = first.run_id
    first.log({"loss/flow": 1.0}, step=1)
    first.close()
    second = MetricsLogger(LogConfig(wandb_mode="offline"), run_dir=tmp_path, rank=0, run_id=run_id, name="t",
                           config={})
    assert second.enabled and second.run_id == run_id
    second.close()
    # wandb names a second directory of the same id in the same second "<...>-<id>-1".
    same_id = re.compile(rf"offline-run-\d{{8}}_\d{{6}}-{run_id}(-\d+)?")
    run_dirs = [p.name for p in (tmp_path / "wandb").iterdir() if same_id.fullmatch(p.name)]
    assert len(run_dirs) == 2, run_dirs
