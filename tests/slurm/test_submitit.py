"""vosr.launch: validation before submission, and submitit runs of the tiny teacher on the local cluster."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.slurm.conftest import SlurmCluster
from vosr import launch
from vosr.config import ConfigError
from vosr.runtime.submit import rendezvous_addr

CPU_RES = launch.Resources(nodes=1, gpus_per_node=0, tasks_per_node=2, cpus_per_task=1, time_min=120)
CPU_FLAGS = ["--gpus-per-node", "0", "--tasks-per-node", "2", "--cpus-per-task", "1", "--time", "120"]


def tiny_overrides(shards: list[Path], run_dir: Path, steps: int, every: int) -> list[str]:
    return [f"data.train=[{{shards: {shards[0].parent}}}]", f"optim.max_steps={steps}",
            f"checkpoint.every_steps={every}", "data.num_workers=0", "log.wandb_mode=offline",
            "log.progress=false", f"run_dir={run_dir}"]


def _queue_size() -> int:
    out = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True, check=True)
    return len(out.stdout.split())


def test_build_argv_fixes_config_and_run_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    argv = launch.build_argv("teacher", "configs/tiny.yaml", ["optim.lr=2e-4"])
    assert argv[0] == "--config" and Path(argv[1]).is_absolute() and argv[2] == "optim.lr=2e-4"
    assert re.fullmatch(rf"run_dir={re.escape(str(tmp_path))}/runs/tiny-\d{{8}}-\d{{6}}", argv[3]), argv
    argv = launch.build_argv("teacher", "configs/tiny.yaml", ["run_dir=mine", "seed=3"])
    assert argv[2:] == ["seed=3", f"run_dir={tmp_path / 'mine'}"]


@pytest.mark.parametrize("stage, extra, key", [
    ("teacher", ["optim.lr=-1"], "optim.lr"),
    ("teacher", ["optim.no_such_key=1"], "no_such_key"),
    ("distill", ["stage=distill"], "distill.teacher"),
    ("distill", ["distill.teacher=x.safetensors"], "stage=teacher"),
    ("teacher", ["--bogus"], "--bogus"),
])
def test_bad_config_fails_before_submitting(slurm_cluster: SlurmCluster, tmp_path: Path, stage: str,
                                            extra: list[str], key: str, capsys: pytest.CaptureFixture) -> None:
    before, folder = _queue_size(), tmp_path / "submitit"
    rc = launch.main([stage, "--config", "configs/tiny.yaml", *extra, *CPU_FLAGS, "--folder", str(folder)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert err.startswith("error: ") and "nothing submitted" in err and key in err, err
    assert not folder.exists() and _queue_size() == before


def test_build_argv_errors_name_the_problem() -> None:
    with pytest.raises(FileNotFoundError, match="--config"):
        launch.build_argv("teacher", "configs/missing.yaml", [])
    with pytest.raises(ConfigError, match="optim.lr"):
        launch.build_argv("teacher", "configs/tiny.yaml", ["optim.lr=-1"])
    with pytest.raises(ValueError, match="--config is required"):
        launch.build_argv("distill", None, [])


def test_dry_run_submits_nothing(photo_shards: list[Path], tmp_path: Path) -> None:
    folder = tmp_path / "submitit"
    argv = ["teacher", "--config", "configs/tiny.yaml", "seed=1", f"data.train=[{{shards: {photo_shards[0].parent}}}]",
            "--dry-run", "--folder", str(folder)]
    assert launch.main(argv) == 0
    assert not folder.exists()


def test_submitit_runs_tiny_teacher(slurm_cluster: SlurmCluster, photo_shards: list[Path], tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    rc = launch.main(["teacher", "--config", "configs/tiny.yaml", *tiny_overrides(photo_shards, run_dir, 4, 2),
                      *CPU_FLAGS, "--folder", str(tmp_path / "submitit"), "--wait"])
    assert rc == 0
    assert (run_dir / "checkpoints" / "step_00000004" / "complete.json").is_file()
    assert (run_dir / "ema.safetensors").is_file()


def test_rendezvous_addr_falls_back_to_node_addr(slurm_cluster: SlurmCluster) -> None:
    assert rendezvous_addr("localhost") == "localhost"  # a host name is used as is
    assert rendezvous_addr("vosr-n1") == "127.0.0.1"  # a NodeName that does not resolve
    assert rendezvous_addr("no-such-node-xyz") == "no-such-node-xyz"  # unknown to both: left to fail loudly


def test_submitit_teacher_spans_two_nodes(slurm_cluster: SlurmCluster, photo_shards: list[Path],
                                         tmp_path: Path) -> None:
    """Two real Slurm nodes, one rank each; the ranks meet at the first node's NodeAddr, not its name."""
    run_dir = tmp_path / "run"
    res = launch.Resources(nodes=2, gpus_per_node=0, tasks_per_node=1, cpus_per_task=1, time_min=120,
                           partition="multinode")
    argv = launch.build_argv("teacher", "configs/tiny.yaml", tiny_overrides(photo_shards, run_dir, 4, 2))
    job = launch.submit("teacher", argv, res, cluster="slurm", folder=tmp_path / "submitit")
    assert job.results() == [0, 0]
    info = slurm_cluster.wait(job.job_id)
    assert (info["NodeList"], info["NumNodes"]) == ("vosr-n[1-2]", "2"), info
    logs = Path(job.task(1).paths.stderr).read_text()  # rank 1's own log
    assert re.search(r"rank 1/2 on \S+ \(node 1\), master 127\.0\.0\.1:", logs), logs[-4000:]
    assert (run_dir / "checkpoints" / "step_00000004" / "complete.json").is_file()


def test_submitit_preemption_saves_requeues_and_resumes(slurm_cluster: SlurmCluster, photo_shards: list[Path],
                                                        tmp_path: Path) -> None:
    run_dir, steps = tmp_path / "run", 100
    argv = launch.build_argv("teacher", "configs/tiny.yaml", tiny_overrides(photo_shards, run_dir, steps, 5))
    job = launch.submit("teacher", argv, CPU_RES, cluster="slurm", folder=tmp_path / "submitit")
    first = run_dir / "checkpoints" / "step_00000005" / "complete.json"
    slurm_cluster.wait_for(first.is_file, "the first checkpoint")
    # What submitit asks Slurm for before the time limit: USR2 to every task of the job.
    subprocess.run(["scancel", "--signal=USR2", job.job_id], check=True)
    assert job.results()[0] == 0
    info = slurm_cluster.wait(job.job_id)
    text = Path(job.paths.stderr).read_text() + Path(job.paths.stdout).read_text()
    assert int(info["Restarts"]) == 1, text
    saved = re.findall(r"\[rank0\] vosr.training.loop: preempted \(SIGUSR2\) at step (\d+): checkpoint saved", text)
    assert len(saved) == 1, text
    assert re.search(rf"resumed from \S+step_{int(saved[0]):08d} at step {saved[0]} \(restart 1", text), text
    assert (run_dir / "checkpoints" / f"step_{steps:08d}" / "complete.json").is_file()


def test_submitit_pack_passes_its_arguments_through(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    from PIL import Image

    from tests.conftest import real_photos

    src, out = tmp_path / "photos", tmp_path / "shards"
    src.mkdir()
    for i, photo in enumerate(real_photos()[:3]):
        Image.fromarray(photo[:128, :128, :3]).save(src / f"p{i}.png")
    rc = launch.main(["pack", "--cpus-per-task", "1", "--time", "120", "--folder", str(tmp_path / "submitit"),
                      "--wait", "--", str(src), "--out", str(out), "--max-samples", "2", "--no-progress"])
    assert rc == 0
    assert sorted(p.name for p in out.glob("*.tar")) == ["shard-000000.tar", "shard-000001.tar"]
