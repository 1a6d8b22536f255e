"""``vosr.evaluate compare``: several scored runs side by side, as a Markdown table and a bar chart.

A run is the ``--out`` folder of ``vosr.evaluate score`` (or its ``summary.json``). The table marks
the best value per column in bold; the chart has one panel per metric (titles carry the arrow), the
best bar drawn in a stronger colour with its value above every bar.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from vosr.evaluation.catalog import METRICS
from vosr.evaluation.tables import NIQE_NOTE, best, columns, markdown_table, means, write_text

logger = logging.getLogger(__name__)


def load_run(path: str | Path) -> dict[str, Any]:
    """The ``summary.json`` of a run folder (or the file itself); FileNotFoundError saying what to pass."""
    path = Path(path)
    file = path / "summary.json" if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"{path} has no summary.json; pass the --out folder of a 'vosr.evaluate score' run")
    try:
        return json.loads(file.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{file} is not valid JSON ({e}); re-run 'vosr.evaluate score'") from e


def bar_chart(labels: list[str], runs: list[dict[str, float]], path: str | Path) -> Path:
    """One bar panel per metric (runs as bars, best highlighted) written to ``path`` (PNG)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cols = columns(runs)
    if not cols:
        raise ValueError("the runs have no metric values to chart")
    fig = Figure(figsize=(max(3.0, 0.6 * len(labels) + 1.5) * len(cols), 3.6), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(cols), squeeze=False)[0]
    for ax, metric in zip(axes, cols):
        info, winners = METRICS[metric], best(runs, metric)
        values = [runs[i].get(metric, float("nan")) for i in range(len(runs))]
        colours = ["tab:orange" if i in winners else "tab:blue" for i in range(len(runs))]
        bars = ax.bar(range(len(runs)), values, color=colours)
        ax.bar_label(bars, labels=[info.format(v) for v in values], fontsize=8)
        ax.set_title(f"{info.header} ({'lower' if info.lower_is_better else 'higher'} is better)", fontsize=10)
        ax.set_xticks(range(len(runs)), labels, rotation=20, ha="right", fontsize=8)
        ax.margins(y=0.15)
    fig.suptitle("vosr.evaluate compare (best per metric in orange)", fontsize=11)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def compare(paths: list[str], out: str | Path, names: list[str] | None = None) -> str:
    """Write ``table.md`` and ``chart.png`` of the runs into ``out``; return the table (Markdown)."""
    if len(paths) < 2:
        raise ValueError("compare needs at least two runs (RUN_A RUN_B ...)")
    if names is not None and len(names) != len(paths):
        raise ValueError(f"--names has {len(names)} labels for {len(paths)} runs; give one per run")
    summaries = [load_run(p) for p in paths]
    labels = names or [Path(p).name if Path(p).is_dir() else Path(p).parent.name for p in paths]
    runs = [means(s) for s in summaries]
    table = markdown_table(labels, runs)
    notes = [f"- {label}: {s.get('images', 0)} images of {s.get('pred')}, GT {s.get('gt') or 'none'}"
             for label, s in zip(labels, summaries)]
    if len({(s.get("gt"), s.get("images")) for s in summaries}) > 1:
        notes.append("- the runs differ in ground truth or image count: their values are not directly comparable")
    if any("niqe" in r for r in runs):
        notes.append(f"- {NIQE_NOTE}")
    out = Path(out)
    write_text(out / "table.md", "# vosr.evaluate compare\n\n" + table + "\n\n**bold**: best per column\n\n"
               + "\n".join(notes) + "\n")
    bar_chart(labels, runs, out / "chart.png")
    logger.info("wrote %s and %s", out / "table.md", out / "chart.png")
    return table
