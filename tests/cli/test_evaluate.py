"""``python -m vosr.evaluate``: make-set (both protocols), score (paired and no-reference), compare, help, errors."""
from __future__ import annotations

import argparse
import csv
import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.export_helpers import make_export, photo
from vosr.data.degrade import downsample_bicubic
from vosr.evaluate import build_parser, main
from vosr.evaluation.evalsets import image_seed
from vosr.evaluation.metrics import lpips_unavailable_reason, unavailable_reason
from vosr.images import to_tensor, to_uint8
from vosr.infer import main as infer_main


@pytest.fixture
def hr_dir(tmp_path) -> Path:
    folder = tmp_path / "hr"
    folder.mkdir()
    Image.fromarray(photo(0, 100, 120, 20, 150)).save(folder / "astronaut.png")
    Image.fromarray(photo(1, 90, 70, 150, 200)).save(folder / "coffee.png")
    Image.fromarray(photo(3, 140, 96, 100, 100)).save(folder / "rocket.jpg", quality=95)
    (folder / "broken.png").write_bytes(b"not a png")
    return folder


def _img(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img)


def test_make_set_bicubic(tmp_path, hr_dir):
    out = tmp_path / "set"
    assert main(["make-set", "--hr", str(hr_dir), "--out", str(out), "--protocol", "bicubic", "--crop", "64"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert [e["name"] for e in manifest["images"]] == ["astronaut", "coffee", "rocket"]
    assert manifest["skipped"][0]["file"] == "broken.png"
    hr = _img(out / "HR" / "coffee.png")
    assert hr.shape == (64, 64, 3)
    assert np.array_equal(hr, photo(1, 90, 70, 150, 200)[13:77, 3:67])  # centre crop
    expected = to_uint8(downsample_bicubic(to_tensor(hr), 4))
    assert np.array_equal(_img(out / "LR" / "coffee.png"), expected)


def test_make_set_realesrgan_is_seeded_per_image(tmp_path, hr_dir):
    runs = {}
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        out = tmp_path / name
        assert main(["make-set", "--hr", str(hr_dir), "--out", str(out), "--seed", str(seed), "--crop", "64"]) == 0
        runs[name] = {p.name: _img(p) for p in sorted((out / "LR").iterdir())}
    assert set(runs["a"]) == {"astronaut.png", "coffee.png", "rocket.png"}
    assert all(v.shape == (16, 16, 3) for v in runs["a"].values())
    assert all(np.array_equal(runs["a"][k], runs["b"][k]) for k in runs["a"])
    assert any(not np.array_equal(runs["a"][k], runs["c"][k]) for k in runs["a"])
    assert image_seed(7, 0) != image_seed(7, 1) and image_seed(7, 0) == image_seed(7, 0)
    with pytest.raises(SystemExit):
        main(["make-set", "--hr", str(hr_dir), "--out", str(tmp_path / "x"), "--protocol", "nearest"])
    assert main(["make-set", "--hr", str(hr_dir), "--out", str(tmp_path / "x"), "--scale", "2"]) == 2


def test_score_paired_writes_csv_json_table_and_sheet(tmp_path, hr_dir):
    data = tmp_path / "set"
    assert main(["make-set", "--hr", str(hr_dir), "--out", str(data), "--protocol", "bicubic", "--crop", "64"]) == 0
    ckpt = make_export(tmp_path / "m.safetensors")
    pred = tmp_path / "pred"
    assert infer_main(["-c", str(ckpt), "-i", str(data / "LR"), "-o", str(pred), "--steps", "2"]) == 0
    report = tmp_path / "report"
    assert main(["score", "--pred", str(pred), "--gt", str(data / "HR"), "--lr", str(data / "LR"),
                 "--out", str(report), "--device", "cpu", "--metrics", "psnr", "ssim", "lpips", "dists", "niqe",
                 "musiq"]) == 0
    with (report / "per_image.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["name"] for r in rows] == ["astronaut", "coffee", "rocket"]
    summary = json.loads((report / "summary.json").read_text())
    assert summary["images"] == 3
    assert 5 < summary["metrics"]["psnr"]["mean"] < 40 and -1 < summary["metrics"]["ssim"]["mean"] < 1
    if lpips_unavailable_reason() is None:
        assert 0 < summary["metrics"]["lpips"]["mean"] < 1.5
    if unavailable_reason("dists") is None:
        assert 0 < summary["metrics"]["dists"]["mean"] < 1
    assert "larger than 193x193" in summary["dropped"]["niqe"]  # 64-pixel outputs: too small for NIQE
    assert "musiq" in summary["metrics"] or "put musiq_koniq_ckpt-e95806b9.pth at" in summary["dropped"]["musiq"]
    table = (report / "table.md").read_text()
    assert "| run | PSNR↑ | SSIM↑ |" in table and "- niqe not computed" in table
    sheet = _img(report / "comparison.png")
    assert sheet.ndim == 3 and sheet.shape[0] > 3 * 256 and sheet.shape[1] > 8 * 256  # 3 rows, 8 panels


def test_score_gt_vs_itself_and_no_reference_mode(tmp_path, hr_dir):
    data = tmp_path / "set"
    assert main(["make-set", "--hr", str(hr_dir), "--out", str(data), "--protocol", "bicubic", "--crop", "64"]) == 0
    pred = tmp_path / "pred"
    pred.mkdir()
    for path in (data / "HR").iterdir():
        img = _img(path).astype(np.int16)
        noisy = np.clip(img + np.random.default_rng(0).integers(-3, 4, img.shape), 0, 255).astype(np.uint8)
        Image.fromarray(noisy).save(pred / path.name)
    Image.fromarray(photo(2, 40, 40)).save(pred / "orphan.png")  # no GT: only no-reference metrics
    report = tmp_path / "r"
    assert main(["score", "--pred", str(pred), "--gt", str(data / "HR"), "--out", str(report),
                 "--metrics", "psnr", "ssim", "--device", "cpu", "--sheet-rows", "2"]) == 0
    summary = json.loads((report / "summary.json").read_text())
    assert summary["metrics"]["psnr"]["count"] == 3 and summary["metrics"]["psnr"]["mean"] > 38
    assert (report / "comparison.png").is_file()
    nr = tmp_path / "nr"
    assert main(["score", "--pred", str(pred), "--out", str(nr), "--metrics", "psnr", "niqe",
                 "--device", "cpu"]) == 0
    summary = json.loads((nr / "summary.json").read_text())
    assert "psnr" not in summary["metrics"] and summary["images"] == 4
    assert summary["dropped"]["psnr"].startswith("no --gt given")
    assert main(["score", "--pred", str(tmp_path / "nothing"), "--out", str(nr)]) == 2


def test_dropped_metrics_are_said_in_one_line(tmp_path, caplog):
    pred = tmp_path / "p"
    pred.mkdir()
    Image.fromarray(photo(0, 64, 64)).save(pred / "a.png")
    with caplog.at_level(logging.WARNING):
        assert main(["score", "--pred", str(pred), "--out", str(tmp_path / "r"), "--metrics", "psnr", "ssim",
                     "lpips", "musiq", "--sheet-rows", "0"]) == 0
    lines = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    assert len(lines) == 1 and "\n" not in lines[0]
    assert "psnr, ssim, lpips: no --gt given" in lines[0]
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert set(summary["dropped"]) == {"psnr", "ssim", "lpips"} | set(summary["unavailable"])


def test_compare_two_scored_folders(tmp_path, capsys):
    gt, sharp, soft = tmp_path / "gt", tmp_path / "sharp", tmp_path / "soft"
    for folder in (gt, sharp, soft):
        folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        img = photo(i, 64, 64).astype(np.int16)
        for folder, noise in ((gt, 0), (sharp, 2), (soft, 20)):
            noisy = np.clip(img + rng.integers(-noise, noise + 1, img.shape), 0, 255).astype(np.uint8)
            Image.fromarray(noisy).save(folder / f"{i}.png")
    for name in ("sharp", "soft"):
        assert main(["score", "--pred", str(tmp_path / name), "--gt", str(gt), "--out", str(tmp_path / f"r_{name}"),
                     "--metrics", "psnr", "ssim", "--sheet-rows", "0"]) == 0
    capsys.readouterr()
    out = tmp_path / "cmp"
    assert main(["compare", str(tmp_path / "r_sharp"), str(tmp_path / "r_soft"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    sharp_row = next(line for line in printed.splitlines() if line.startswith("| r_sharp"))
    assert sharp_row.count("**") == 4  # best PSNR and best SSIM, in bold
    assert (out / "table.md").is_file() and _img(out / "chart.png").ndim == 3
    assert main(["compare", str(tmp_path / "r_sharp"), str(tmp_path / "nothing"), "--out", str(out)]) == 2


def test_help_and_user_errors(capsys):
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert set(subparsers.choices) == {"score", "make-set", "compare"}
    for name, sub in subparsers.choices.items():
        assert sub.description, name
        for action in sub._actions:
            assert action.help and action.help != argparse.SUPPRESS, (name, action.dest)
    with pytest.raises(SystemExit) as exit_info:
        main(["score", "--pred", "x"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and len(err.strip().splitlines()) == 1 and "--out" in err


def test_score_size_mismatch_is_skipped_not_cropped(tmp_path):
    pred, gt = tmp_path / "p", tmp_path / "g"
    pred.mkdir()
    gt.mkdir()
    Image.fromarray(photo(0, 64, 64)).save(pred / "a.png")
    Image.fromarray(photo(0, 60, 64)).save(gt / "a.png")
    report = tmp_path / "r"
    assert main(["score", "--pred", str(pred), "--gt", str(gt), "--out", str(report), "--metrics", "psnr",
                 "--sheet-rows", "0"]) == 0
    summary = json.loads((report / "summary.json").read_text())
    assert summary["metrics"] == {} and not (report / "comparison.png").exists()
