"""The exported-weights format and loading a pipeline from it."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from tests.export_helpers import build_model, make_export, tiny_config
from vosr.config import to_dict
from vosr.inference.pipeline import load_pipeline
from vosr.training.export import CONFIG_KEY, load_export, read_metadata, save_export


def test_roundtrip_keeps_tensors_config_and_extras(tmp_path):
    cfg = tiny_config("flow.sample_steps=7", "model.with_r=true")
    state = build_model(cfg).state_dict()
    path = save_export(tmp_path / "sub" / "ema.safetensors", state, cfg, {"step": "42"})
    loaded, loaded_cfg = load_export(path)
    assert set(loaded) == set(state)
    for key, value in state.items():
        assert torch.equal(loaded[key], value), key
    assert to_dict(loaded_cfg) == to_dict(cfg)
    meta = read_metadata(path)
    assert meta["step"] == "42" and json.loads(meta[CONFIG_KEY])["flow"]["sample_steps"] == 7
    assert [p.name for p in path.parent.iterdir()] == ["ema.safetensors"]  # no temporary left behind


def test_overwrite_is_atomic_replace(tmp_path):
    cfg = tiny_config()
    path = tmp_path / "m.safetensors"
    save_export(path, {"a": torch.zeros(2)}, cfg)
    save_export(path, {"a": torch.ones(2), "b": torch.ones(1)}, cfg)
    state, _ = load_export(path)
    assert torch.equal(state["a"], torch.ones(2)) and "b" in state
    assert len(list(tmp_path.iterdir())) == 1


def test_shared_storage_is_cloned(tmp_path):
    base = torch.arange(6.0)
    path = save_export(tmp_path / "m.safetensors", {"x": base, "y": base[:3]}, tiny_config())
    state, _ = load_export(path)
    assert torch.equal(state["y"], torch.arange(3.0))


def test_bad_extras_and_files(tmp_path):
    cfg = tiny_config()
    with pytest.raises(ValueError, match="reserved"):
        save_export(tmp_path / "m.safetensors", {"a": torch.zeros(1)}, cfg, {CONFIG_KEY: "x"})
    with pytest.raises(ValueError, match="strings"):
        save_export(tmp_path / "m.safetensors", {"a": torch.zeros(1)}, cfg, {"step": 3})
    with pytest.raises(FileNotFoundError):
        load_export(tmp_path / "missing.safetensors")
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    with pytest.raises(ValueError, match="not a readable"):
        load_export(corrupt)


def test_released_checkpoint_without_config_needs_one(tmp_path):
    cfg = tiny_config()
    released = tmp_path / "released.safetensors"
    save_file({k: v.contiguous() for k, v in build_model(cfg).state_dict().items()}, str(released))
    state, embedded = load_export(released)
    assert embedded is None and state
    with pytest.raises(ValueError, match="--config"):
        load_pipeline(released)
    pipe = load_pipeline(released, config="configs/tiny.yaml")
    assert pipe.scale == 4 and not pipe.model.cfg.with_r


def test_pipeline_from_export_with_overrides(tmp_path):
    path = make_export(tmp_path / "m.safetensors", "model.with_r=true")
    pipe = load_pipeline(path, overrides=["flow.sample_steps=3"])
    assert pipe.model.cfg.with_r and pipe.config.flow.sample_steps == 3
    one = pipe.sample_options(None, None, None)
    assert one.student and one.steps == 1 and one.guidance is None
    four = pipe.sample_options(4, None, None)  # the reference's chain of u(x, t_k, t_k+1), not Euler
    assert four.student and four.steps == 4
    for knobs in ((0.5, None), (None, 0.1)):
        with pytest.raises(ValueError, match="distilled student"):
            pipe.sample_options(None, *knobs)
    out = pipe.upscale(torch.rand(1, 3, 12, 20, generator=torch.Generator().manual_seed(0)))
    assert out.shape == (1, 3, 48, 80) and 0 <= out.min() and out.max() <= 1


def test_mismatched_weights_fail_loudly(tmp_path):
    path = make_export(tmp_path / "m.safetensors")
    with pytest.raises(KeyError, match="weights do not match"):
        load_pipeline(path, overrides=["model.hidden_size=32"])


def test_export_records_with_r_from_the_weights(tmp_path, caplog):
    """A student (r_embedder weights) exported from a run config that says model.with_r=false, as the
    distillation stage does, loads as a one-step model without a with_r warning."""
    student = build_model(tiny_config("model.with_r=true")).state_dict()
    path = save_export(tmp_path / "student" / "ema.safetensors", student, tiny_config())
    assert json.loads(read_metadata(path)[CONFIG_KEY])["model"]["with_r"] is True
    with caplog.at_level("WARNING"):
        pipe = load_pipeline(path.parent)  # a run folder: its ema.safetensors
    assert pipe.model.cfg.with_r and not [r for r in caplog.records if "using model.with_r" in r.getMessage()]
    teacher = save_export(tmp_path / "t.safetensors", build_model(tiny_config()).state_dict(),
                          tiny_config("model.with_r=true"))
    assert json.loads(read_metadata(teacher)[CONFIG_KEY])["model"]["with_r"] is False


def test_export_from_another_version_drops_unknown_config_keys(tmp_path, caplog):
    """Weights exported by a vosr with other (e.g. since removed) config keys still load, with a warning."""
    cfg = tiny_config()
    state = build_model(cfg).state_dict()
    data = to_dict(cfg)
    data["data"]["shuffle_buffer"] = 200  # a key an older vosr wrote
    data["retired_section"] = {"x": 1}
    path = tmp_path / "old.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path),
              metadata={CONFIG_KEY: json.dumps(data), "vosr_format": "1"})
    _, loaded = load_export(path)
    assert loaded is not None and loaded.model == cfg.model
    assert "data.shuffle_buffer" in caplog.text and "retired_section" in caplog.text
