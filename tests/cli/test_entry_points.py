"""Every command a user types: fast --help (no torch before parsing), help on every option, usage lines
that name the command as typed, and user errors as one line with exit status 2."""
from __future__ import annotations

import argparse
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

# module -> how a user starts it (what its usage line must show)
ENTRY_POINTS = {
    "vosr.train": "python -m vosr.train",
    "vosr.distill": "python -m vosr.distill",
    "vosr.infer": "python -m vosr.infer",
    "vosr.evaluate": "python -m vosr.evaluate",
    "vosr.launch": "python -m vosr.launch",
    "data_tools.pack": "python data_tools/pack.py",
    "data_tools.preview": "python data_tools/preview.py",
    "data_tools.photos": "python data_tools/photos.py",
}
HELP_PROBE = """
import runpy, sys
sys.argv = [{path!r}, "--help"]
try:
    runpy.{run}({target!r}, run_name="__main__")
except SystemExit as e:
    assert e.code in (0, None), e.code
print("TORCH_IMPORTED=" + str("torch" in sys.modules), file=sys.stderr)
"""


def _parsers(module: str, monkeypatch: pytest.MonkeyPatch) -> list[argparse.ArgumentParser]:
    """The parser(s) ``module.main(["--help"])`` builds: the real parse, spied on, plus any subcommand parsers."""
    seen: list[argparse.ArgumentParser] = []
    original = argparse.ArgumentParser.parse_known_args

    def spy(self, *args, **kwargs):
        seen.append(self)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_known_args", spy)
    with pytest.raises(SystemExit) as done:
        importlib.import_module(module).main(["--help"])
    assert done.value.code in (0, None)
    subs = [p for parser in seen for a in parser._actions if isinstance(a, argparse._SubParsersAction)
            for p in a.choices.values()]
    return seen + subs


@pytest.mark.parametrize("module", sorted(ENTRY_POINTS))
def test_help_answers_before_any_heavy_import(module: str) -> None:
    if module.startswith("data_tools."):
        path = str(REPO / (module.replace(".", "/") + ".py"))
        code = HELP_PROBE.format(path=path, run="run_path", target=path)
    else:
        code = HELP_PROBE.format(path=module, run="run_module", target=module)
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"usage: {ENTRY_POINTS[module]}" in done.stdout, done.stdout[:400]
    assert "TORCH_IMPORTED=False" in done.stderr, f"{module} --help imports torch before parsing"


@pytest.mark.parametrize("module", sorted(ENTRY_POINTS))
def test_every_option_has_help_and_usage_names_the_command(module: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for parser in _parsers(module, monkeypatch):
        assert parser.prog.startswith(ENTRY_POINTS[module]), parser.prog
        undocumented = [a.option_strings or a.dest for a in parser._actions
                        if not isinstance(a, argparse._HelpAction) and not a.help]
        assert not undocumented, f"{parser.prog}: options without help: {undocumented}"
        text = parser.format_help()
        assert "``" not in text, f"{parser.prog} --help shows raw double backticks"
        assert parser.description, f"{parser.prog} has no description"


def test_cli_choices_are_the_libraries() -> None:
    """The CLIs name their choices without importing torch; they must stay the libraries' lists."""
    import torch

    from vosr import evaluate, infer
    from vosr.evaluation import evalsets, metrics
    from vosr.inference import colorfix

    assert infer.COLOR_FIXES == colorfix.COLOR_FIXES
    assert all(isinstance(getattr(torch, name), torch.dtype) for name in infer.DTYPE_NAMES.values())
    assert evaluate.ALL_METRICS == metrics.ALL_METRICS
    assert evaluate.PROTOCOLS == evalsets.PROTOCOLS


def test_photos_usage_shows_the_argument_it_asks_for(capsys: pytest.CaptureFixture) -> None:
    from data_tools import photos

    with pytest.raises(SystemExit) as done:
        photos.main([])
    err = capsys.readouterr().err
    assert done.value.code == 2 and "usage: python data_tools/photos.py [-h] [--out OUT] which" in err, err
    assert "required: which" in err, err


def _user_error_cases(tmp_path: Path) -> list[tuple[str, list[str], str]]:
    tiny, tiny_distill = str(REPO / "configs" / "tiny.yaml"), str(REPO / "configs" / "tiny_distill.yaml")
    return [
        ("vosr.train", ["--config", tiny, "optim.lrr=1"], "optim.lrr"),
        ("vosr.train", ["--config", tiny_distill], "stage=distill"),
        ("vosr.train", ["--config", str(tmp_path / "missing.yaml")], "missing.yaml"),
        ("vosr.distill", ["--config", tiny_distill, f"distill.teacher={tmp_path}"], "distill.teacher"),
        ("vosr.infer", ["-c", str(tmp_path), "-i", str(REPO / "README.md"), "-o", str(tmp_path / "o")],
         "ema.safetensors"),
        ("vosr.evaluate", ["score", "--pred", str(tmp_path / "none"), "--out", str(tmp_path / "r")], "none"),
        ("vosr.launch", ["teacher", "--config", str(tmp_path / "missing.yaml"), "--dry-run"], "missing.yaml"),
        ("data_tools.preview", ["--shards", str(tmp_path / "none"), "--out", str(tmp_path / "p.png")], "none"),
    ]


@pytest.mark.parametrize("case", range(8))
def test_user_error_is_one_line_and_exit_status_2(case: int, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    module, argv, named = _user_error_cases(tmp_path)[case]
    try:
        rc = importlib.import_module(module).main(argv)
    except SystemExit as done:
        rc = done.code
    err = capsys.readouterr().err.strip()
    assert rc == 2, (module, argv, err)
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and named in err, err


def test_config_error_from_the_shell_has_no_traceback_unless_debug() -> None:
    argv = [sys.executable, "-m", "vosr.train", "--config", "configs/tiny.yaml", "optim.lrr=1"]
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.startswith("error: unknown config key optim.lrr"), done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    debug = subprocess.run([*argv, "--debug"], cwd=REPO, capture_output=True, text=True)
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "ConfigError" in debug.stderr
