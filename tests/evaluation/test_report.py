"""Tables as papers print them, the comparison of runs (table + chart) and the comparison sheet."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from tests.conftest import real_photos
from vosr.evaluation.catalog import METRICS
from vosr.evaluation.compare import compare, load_run
from vosr.evaluation.report import SheetRow, bicubic_upscale, comparison_sheet
from vosr.evaluation.tables import best, markdown_table, run_table


def _summary(tmp_path, name: str, means: dict[str, float], **extra) -> str:
    folder = tmp_path / name
    folder.mkdir()
    summary = {"pred": f"/sr/{name}", "gt": "/set/HR", "scale": 4, "images": 3,
               "metrics": {k: {"mean": v, "std": 0.0, "count": 3} for k, v in means.items()}, **extra}
    (folder / "summary.json").write_text(json.dumps(summary))
    return str(folder)


def test_paper_format_arrows_decimals_and_best():
    assert [METRICS[m].header for m in ("psnr", "lpips", "niqe")] == ["PSNR↑", "LPIPS↓", "NIQE↓"]
    assert METRICS["psnr"].format(24.3149) == "24.31" and METRICS["niqe"].format(5.678) == "5.68"
    assert METRICS["lpips"].format(0.23456) == "0.2346" and METRICS["dists"].format(0.1) == "0.1000"
    assert METRICS["psnr"].format(float("inf")) == "inf" and METRICS["ssim"].format(None) == "-"
    runs = [{"psnr": 24.0, "lpips": 0.30, "niqe": 6.0}, {"psnr": 25.0, "lpips": 0.30004, "niqe": 7.0},
            {"psnr": 23.0}]
    assert best(runs, "psnr") == {1} and best(runs, "niqe") == {0}
    assert best(runs, "lpips") == {0, 1}  # equal at the printed 4 decimals: both marked
    table = markdown_table(["a", "b", "c"], runs).splitlines()
    assert table[0] == "| run | PSNR↑ | LPIPS↓ | NIQE↓ |"
    assert table[2] == "| a | 24.00 | **0.3000** | **6.00** |"
    assert table[3] == "| b | **25.00** | **0.3000** | 7.00 |"
    assert table[4] == "| c | 23.00 | - | - |"


def test_run_table_says_what_was_dropped():
    summary = {"pred": "/sr/x", "gt": None, "scale": 4, "images": 2, "metrics": {"niqe": {"mean": 8.8}},
               "dropped": {"psnr": "no --gt given"}}
    text = run_table(summary, "x")
    assert "| x | 8.80 |" in text and "without ground truth" in text
    assert "- psnr not computed: no --gt given" in text and "scikit-video" in text


def test_compare_writes_table_and_chart(tmp_path):
    a = _summary(tmp_path, "teacher", {"psnr": 24.5, "ssim": 0.71, "lpips": 0.25, "dists": 0.18, "niqe": 9.1})
    b = _summary(tmp_path, "student", {"psnr": 25.1, "ssim": 0.73, "lpips": 0.27, "dists": 0.17, "niqe": 9.6})
    table = compare([a, b], tmp_path / "cmp")
    assert "| teacher | 24.50 | 0.7100 | **0.2500** | 0.1800 | **9.10** |" in table
    assert "| student | **25.10** | **0.7300** | 0.2700 | **0.1700** | 9.60 |" in table
    assert table in (tmp_path / "cmp" / "table.md").read_text()
    with Image.open(tmp_path / "cmp" / "chart.png") as chart:
        pixels = np.asarray(chart.convert("RGB"))
    assert chart.width > 5 * 200 and pixels.std() > 10  # five panels, drawn
    assert "teacher" in compare([a, b], tmp_path / "cmp2", names=["teacher", "s"])
    with pytest.raises(ValueError, match="at least two"):
        compare([a], tmp_path / "x")
    with pytest.raises(ValueError, match="one per run"):
        compare([a, b], tmp_path / "x", names=["one"])
    with pytest.raises(FileNotFoundError, match="no summary.json"):
        load_run(tmp_path / "cmp")


def test_sheet_has_bicubic_column_and_captions(tmp_path):
    gt = real_photos()[1][:128, :160]
    lr = np.asarray(Image.fromarray(gt).resize((40, 32), Image.Resampling.BICUBIC))
    bicubic = bicubic_upscale(lr, gt.shape[:2])
    assert bicubic.shape == gt.shape
    assert np.array_equal(bicubic, np.asarray(Image.fromarray(lr).resize((160, 128), Image.Resampling.BICUBIC)))
    rows = [SheetRow("coffee", pred=gt[::-1].copy(), lr=lr, gt=gt, bicubic=bicubic,
                     values={"output": {"psnr": 20.0, "lpips": 0.5}, "bicubic": {"psnr": 25.0, "lpips": 0.4}}),
            SheetRow("no-lr", pred=gt, gt=gt)]  # a row without LR leaves those columns empty
    path = comparison_sheet(rows, tmp_path / "sheet.png", title="test sheet", panel=128)
    with Image.open(path) as img:
        sheet = np.asarray(img.convert("RGB"))
    assert sheet.shape[1] == 8 + 8 * (128 + 8)  # LR, bicubic, output, GT and their zooms
    lr_zoom = slice(8 + 4 * 136, 8 + 4 * 136 + 128)  # fifth column
    half = sheet.shape[0] // 2
    assert (sheet[:half, lr_zoom] != 255).any()  # first row: the LR zoom
    assert (sheet[half + 30:, lr_zoom] == 255).all()  # the row without LR leaves its columns blank, not shifted
