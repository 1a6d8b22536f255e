"""CPU seconds (user + system, of the child process) that ``--help`` of every entry point takes.

    python benchmarks/cli_help.py            # 3 runs each, prints the best and the worst

CPU time, not wall time, so a busy machine shifts the figures little; the baseline line is a bare
``python -c pass`` of the same interpreter.
"""
from __future__ import annotations

import resource
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COMMANDS = {
    "python -c pass": ["-c", "pass"],
    **{f"python -m vosr.{m} --help": ["-m", f"vosr.{m}", "--help"]
       for m in ("train", "distill", "infer", "evaluate", "launch")},
    **{f"python data_tools/{s} --help": [f"data_tools/{s}", "--help"] for s in ("pack.py", "preview.py", "photos.py")},
}


def cpu_seconds(args: list[str]) -> float:
    """User + system CPU seconds of one ``python ARGS`` run."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run([sys.executable, *args], cwd=REPO, stdout=subprocess.DEVNULL, check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main(repeats: int = 3) -> None:
    for name, args in COMMANDS.items():
        times = sorted(cpu_seconds(args) for _ in range(repeats))
        print(f"{name:40s} {times[0]:6.2f} s CPU (worst {times[-1]:.2f})")


if __name__ == "__main__":
    main()
