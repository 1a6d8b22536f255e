"""slurm/train_teacher.sh and slurm/distill.sh on a real local Slurm cluster.

The mechanics (srun ranks, USR1 trap → forward → save → exit 75 → requeue → resume) are proven
with a small stand-in entry point that uses the trainer's own PreemptionFlag; the real teacher
run (2 ranks, ZeRO-2 on CPU) is then checked end to end, with and without preemption.
"""
from __future__ import annotations

import re
import stat
import sys
from pathlib import Path

from tests.slurm.conftest import CPU_FLAGS, REPO, SlurmCluster, job_env

# Stand-in for `python -m vosr.train`: the sbatch script runs `$VOSR_PYTHON -m MODULE --config C run_dir=D ...`.
STANDIN = '''#!{python}
import os, sys, time
from pathlib import Path
from vosr.runtime.preemption import EXIT_PREEMPTED, PreemptionFlag

args = sys.argv[1:]
module = args[args.index("-m") + 1]
over = dict(a.split("=", 1) for a in args if "=" in a and not a.startswith("-"))
run_dir, steps = Path(over["run_dir"]), int(over.get("steps", "4"))
# seconds per step; a requeued run may go faster ("restart_step_s") so it ends before its own time limit
step_s = float(over.get("restart_step_s" if int(os.environ.get("SLURM_RESTART_COUNT", "0")) else "step_s", "0.25"))
rank = int(os.environ["SLURM_PROCID"])
run_dir.mkdir(parents=True, exist_ok=True)
ckpt = run_dir / f"ckpt_rank{{rank}}.txt"
(run_dir / f"env_rank{{rank}}.txt").write_text(
    f"{{module}} {{os.environ['MASTER_ADDR']}} {{os.environ['MASTER_PORT']}} {{os.environ['SLURM_NTASKS']}}")
step = int(ckpt.read_text()) if ckpt.exists() else 0
if not int(os.environ.get("SLURM_RESTART_COUNT", "0")):
    time.sleep(float(over.get("start_s", "0")))  # a slow start-up: no handler yet
if step:
    print(f"rank {{rank}} resumed from step {{step}}", flush=True)
flag = PreemptionFlag().install()
while step < steps:
    time.sleep(step_s)
    step += 1
    if step % 2 == 0 or flag.requested:
        ckpt.write_text(str(step))
    if flag.requested:
        print(f"rank {{rank}} preempted ({{flag.signal_name}}) at step {{step}}", flush=True)
        sys.exit(EXIT_PREEMPTED)
(run_dir / f"done_rank{{rank}}").write_text(str(step))
'''


def _standin(tmp_path: Path) -> dict[str, str]:
    script = tmp_path / "standin.py"
    script.write_text(STANDIN.format(python=sys.executable))
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return {**job_env(), "VOSR_PYTHON": str(script)}


def test_sbatch_runs_ranks_to_completion(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    env, log, run_dir = _standin(tmp_path), tmp_path / "slurm-%j.out", tmp_path / "run"
    job = slurm_cluster.sbatch([*CPU_FLAGS, f"--output={log}", "slurm/distill.sh", "configs/tiny.yaml",
                                f"run_dir={run_dir}", "steps=2"], env=env)
    info = slurm_cluster.wait(job, Path(str(log).replace("%j", job)))
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", info
    for rank in (0, 1):
        assert (run_dir / f"done_rank{rank}").read_text() == "2"
        module, addr, port, ntasks = (run_dir / f"env_rank{rank}.txt").read_text().split()
        assert (module, ntasks, int(port)) == ("vosr.distill", "2", 20000 + int(job) % 20000)


def test_sbatch_default_run_dir_is_per_job(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    env = {**_standin(tmp_path), "VOSR_RUNS": str(tmp_path / "runs")}
    log = tmp_path / "slurm-%j.out"
    # Submitted from elsewhere: the script still finds slurm/stage.sh through the job record.
    job = slurm_cluster.sbatch([*CPU_FLAGS, f"--output={log}", str(REPO / "slurm" / "train_teacher.sh"),
                                "configs/tiny.yaml", "steps=2"], env=env, cwd=tmp_path)
    info = slurm_cluster.wait(job, Path(str(log).replace("%j", job)))
    assert info["JobState"] == "COMPLETED", info
    assert (tmp_path / "runs" / f"tiny-{job}" / "done_rank0").exists()


def test_sbatch_usr1_saves_requeues_and_resumes(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    env, run_dir = _standin(tmp_path), tmp_path / "run"
    log = tmp_path / "slurm-%j.out"
    job = slurm_cluster.sbatch([*CPU_FLAGS, f"--output={log}", "slurm/train_teacher.sh", "configs/tiny.yaml",
                                f"run_dir={run_dir}", "steps=40"], env=env)
    log = Path(str(log).replace("%j", job))
    slurm_cluster.wait_for(lambda: (run_dir / "ckpt_rank1.txt").exists(), "the first checkpoint")
    slurm_cluster.signal_batch(job, "USR1")
    _check_saved_requeued_resumed(slurm_cluster.wait(job, log), log, run_dir, steps=40)


def _check_saved_requeued_resumed(info: dict[str, str], log: Path, run_dir: Path, steps: int) -> None:
    """One USR1: both stand-in ranks saved, the job requeued once, resumed at the saved step and finished."""
    text = log.read_text()
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", (info, text)
    assert int(info["Restarts"]) == 1, text
    assert "received USR1: forwarding to srun" in text and "requeueing job" in text, text
    saved = [int(s) for s in re.findall(r"rank 0 preempted \(SIGUSR1\) at step (\d+)", text)]
    assert len(saved) == 1 and 0 < saved[0] < steps, text
    assert f"rank 0 resumed from step {saved[0]}" in text and "rank 1 resumed from step" in text, text
    assert all((run_dir / f"done_rank{r}").read_text() == str(steps) for r in (0, 1))


def test_time_limit_signal_saves_requeues_and_resumes(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    """The real thing, no scancel: a 3-minute job whose ``--signal=B:USR1@170`` fires before its time limit.

    Its 1000 steps need 250 s, so only the time-limit signal can end the first run in time (Slurm sends
    it 30-60 s after the start, late enough for a loaded machine to have started the ranks); the
    requeued run goes fast and has its own 3 minutes to finish.
    """
    env, run_dir = _standin(tmp_path), tmp_path / "run"
    log = tmp_path / "slurm-%j.out"
    flags = [f for f in CPU_FLAGS if not f.startswith("--time")] + ["--time=3", "--signal=B:USR1@150"]
    job = slurm_cluster.sbatch([*flags, f"--output={log}", "slurm/train_teacher.sh", "configs/tiny.yaml",
                                f"run_dir={run_dir}", "steps=1000", "restart_step_s=0.002"], env=env)
    log = Path(str(log).replace("%j", job))
    _check_saved_requeued_resumed(slurm_cluster.wait(job, log), log, run_dir, steps=1000)


def test_signal_during_start_up_requeues(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    """USR1 before the ranks have a handler kills them by the signal; the job is requeued all the same."""
    env, run_dir = _standin(tmp_path), tmp_path / "run"
    log = tmp_path / "slurm-%j.out"
    job = slurm_cluster.sbatch([*CPU_FLAGS, f"--output={log}", "slurm/train_teacher.sh", "configs/tiny.yaml",
                                f"run_dir={run_dir}", "steps=4", "start_s=60"], env=env)
    log = Path(str(log).replace("%j", job))
    slurm_cluster.wait_for(lambda: all((run_dir / f"env_rank{r}.txt").exists() for r in (0, 1)), "the ranks")
    slurm_cluster.signal_batch(job, "USR1")
    info = slurm_cluster.wait(job, log)
    text = log.read_text()
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", (info, text)
    assert int(info["Restarts"]) == 1 and "still starting" in text, text
    assert all((run_dir / f"done_rank{r}").read_text() == "4" for r in (0, 1))


def test_sbatch_needs_a_config(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    log = tmp_path / "slurm-%j.out"
    job = slurm_cluster.sbatch([*CPU_FLAGS, f"--output={log}", "slurm/train_teacher.sh"], env=_standin(tmp_path))
    info = slurm_cluster.wait(job, Path(str(log).replace("%j", job)))
    assert info["JobState"] == "FAILED" and info["ExitCode"] == "2:0", info
    assert "usage: sbatch" in Path(str(log).replace("%j", job)).read_text()


def tiny_args(shards: list[Path], run_dir: Path, steps: int, every: int, workers: int = 0) -> list[str]:
    """configs/tiny.yaml (2 ranks, ZeRO-2 on CPU) on the photo shards."""
    return ["configs/tiny.yaml", f"data.train=[{{shards: {shards[0].parent}}}]", f"optim.max_steps={steps}",
            f"checkpoint.every_steps={every}", f"data.num_workers={workers}", "log.wandb_mode=offline",
            "log.progress=false", f"run_dir={run_dir}"]


def test_teacher_sbatch_trains_checkpoints_and_exports(slurm_cluster: SlurmCluster, photo_shards: list[Path],
                                                       tmp_path: Path) -> None:
    run_dir, log = tmp_path / "run", tmp_path / "slurm-%j.out"
    job = slurm_cluster.sbatch([*CPU_FLAGS, f"--output={log}", "slurm/train_teacher.sh",
                                *tiny_args(photo_shards, run_dir, steps=6, every=3)])
    log = Path(str(log).replace("%j", job))
    info = slurm_cluster.wait(job, log)
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", log.read_text()[-4000:]
    assert not slurm_cluster.in_queue(job)
    for step in (3, 6):
        ckpt = run_dir / "checkpoints" / f"step_{step:08d}"
        assert (ckpt / "complete.json").is_file() and (ckpt / "rng_rank00001.pt").is_file()
    assert (run_dir / "ema.safetensors").stat().st_size > 0
    assert "finished 6 steps" in log.read_text()


def test_teacher_sbatch_spans_two_nodes(slurm_cluster: SlurmCluster, photo_shards: list[Path],
                                       tmp_path: Path) -> None:
    """Two real Slurm nodes (the `multinode` partition's vosr-n1, vosr-n2), one rank each.

    The node names do not resolve; the ranks meet at the first node's NodeAddr.
    """
    run_dir, log = tmp_path / "run", tmp_path / "slurm-%j.out"
    flags = ["--partition=multinode", "--nodes=2", "--ntasks-per-node=1", "--gpus-per-node=0",
             "--cpus-per-task=1", "--mem=0", "--time=120"]
    job = slurm_cluster.sbatch([*flags, f"--output={log}", "slurm/train_teacher.sh",
                                *tiny_args(photo_shards, run_dir, steps=4, every=2)])
    log = Path(str(log).replace("%j", job))
    info = slurm_cluster.wait(job, log)
    text = log.read_text()
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", text[-4000:]
    assert (info["NodeList"], info["NumNodes"], info["NumTasks"]) == ("vosr-n[1-2]", "2", "2"), info
    assert "nodes vosr-n[1-2], master 127.0.0.1:" in text, text[-4000:]
    ckpt = run_dir / "checkpoints" / "step_00000004"
    assert (ckpt / "complete.json").is_file() and (ckpt / "rng_rank00001.pt").is_file()
    assert "finished 4 steps" in text


def test_teacher_sbatch_preempted_saves_requeues_and_resumes(slurm_cluster: SlurmCluster, photo_shards: list[Path],
                                                             tmp_path: Path) -> None:
    run_dir, log, steps = tmp_path / "run", tmp_path / "slurm-%j.out", 100
    # One loader worker per rank: signals reach every process of the step, workers included.
    job = slurm_cluster.sbatch([*CPU_FLAGS, f"--output={log}", "slurm/train_teacher.sh",
                                *tiny_args(photo_shards, run_dir, steps=steps, every=5, workers=1)])
    log = Path(str(log).replace("%j", job))
    first = run_dir / "checkpoints" / "step_00000005" / "complete.json"
    slurm_cluster.wait_for(first.is_file, "the first checkpoint")
    slurm_cluster.signal_batch(job, "USR1")  # what --signal=B:USR1@180 does before the time limit
    info = slurm_cluster.wait(job, log)
    text = log.read_text()
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", text[-4000:]
    assert int(info["Restarts"]) == 1, text[-4000:]
    saved = re.findall(r"\[rank0\] vosr.training.loop: preempted \(SIGUSR1\) at step (\d+): checkpoint saved", text)
    assert len(saved) == 1 and 5 <= int(saved[0]) < steps, text[-4000:]
    assert re.search(rf"resumed from \S+step_{int(saved[0]):08d} at step {saved[0]} \(restart 1", text), text[-4000:]
    assert "requeueing job" in text and f"finished {steps} steps" in text
    assert (run_dir / "checkpoints" / f"step_{steps:08d}" / "complete.json").is_file()
