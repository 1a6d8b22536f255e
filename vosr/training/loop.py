"""``run_training``: set up the world, resume, and step until done or preempted."""
from __future__ import annotations

import copy
import logging
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from vosr.config import ConfigError, RunConfig, save_yaml, to_dict
from vosr.data.errors import SkipLog
from vosr.data.stream import TrainStream, build_train_stream, to_unit
from vosr.runtime import distributed
from vosr.runtime.checkpoint import Checkpointer, checkpoint_identity, complete_checkpoints
from vosr.runtime.ema import is_zero3_partitioned
from vosr.runtime.engine import TrainEngine, seed_everything
from vosr.runtime.memory import GIB, MemoryPlan, PeakMeter
from vosr.runtime.perf import StepTimer, memory_stats, peak_flops
from vosr.runtime.preemption import EXIT_PREEMPTED, PreemptionFlag
from vosr.runtime.safeload import CheckpointError, write_error
from vosr.runtime.tracking import MetricsLogger, cut_metrics, setup_logging
from vosr.training.conditioning import Extras
from vosr.training.export import read_metadata, save_export
from vosr.training.guard import RunError, RunLock, check_identity, config_identity, remove_leftovers
from vosr.training.memory_plan import run_memory_plan
from vosr.training.preflight import derive_grad_accum
from vosr.training.setup import (
    FrozenParts,
    Objective,
    build_frozen_parts,
    make_generators,
    resolve_run_dir,
    setup_world,
)
from vosr.training.validation import Validator

logger = logging.getLogger(__name__)

BuildFn = Callable[[RunConfig, FrozenParts, torch.device], tuple[nn.Module, Objective]]
SKIPPED_FILE = "skipped.jsonl"
"""Every distinct bad sample of the run, one json line each: shard, key, kind, reason."""


@dataclass(kw_only=True)
class TrainState:
    """What the loop needs to carry on after a restart (saved as ``train`` in checkpoints)."""

    step: int = 0
    images: int = 0
    nonfinite: int = 0
    restart: int = 0
    wandb_id: str | None = None


@dataclass(kw_only=True)
class Run:
    """Everything one training run holds, handed between the loop's phases."""

    cfg: RunConfig
    info: distributed.WorldInfo
    device: torch.device
    run_dir: Path
    parts: FrozenParts
    engine: TrainEngine
    objective: Objective
    checkpointer: Checkpointer
    generators: dict[str, torch.Generator]
    state: TrainState
    metrics: MetricsLogger
    validator: Validator | None
    eval_model: nn.Module | None
    stream: TrainStream
    skips: SkipLog
    """Distinct skipped samples of the whole run, all ranks (filled on rank 0, from skipped.jsonl on resume)."""
    flag: PreemptionFlag
    """Preemption signals, installed by the entry point before any slow start-up."""
    memory_plan: MemoryPlan | None = None
    """The memory model's prediction for this rank (logged at start-up, and beside the measured peak)."""
    meter: PeakMeter | None = None
    """Measures the peak since just before the frozen parts were built; read at the first log step."""


def run_training(cfg: RunConfig, build: BuildFn, flag: PreemptionFlag | None = None) -> int:
    """Train ``cfg`` with the model/objective from ``build``; returns 0, ``EXIT_PREEMPTED`` or 2.

    ``flag``: the preemption handler the entry point installed first thing (a signal during the
    slow start-up is then recorded and the run exits 75 before its first step); installed here if None.
    A ``RunError``/``CheckpointError`` (run folder locked, config changed, damaged checkpoint, disk
    full) prints one line ``error: ...`` and returns 2.
    """
    own_flag = flag is None
    flag = PreemptionFlag().install() if flag is None else flag
    lock: RunLock | None = None
    rank = 0
    try:
        info, device = setup_world(cfg)
        rank = info.rank
        try:
            lock = _take_run_folder(cfg, info)
            run = _setup(cfg, build, info, device, flag)
            try:
                return _loop(run)
            finally:
                run.metrics.close()
        finally:
            if lock is not None:
                lock.release()
            distributed.destroy()
    except (RunError, CheckpointError, ConfigError) as err:
        _log_to_files(f"error: {err}")
        if rank == 0 or isinstance(err, CheckpointError):  # the others were told the same error by rank 0
            print(f"error: {err}", file=sys.stderr)
        return 2
    finally:
        if own_flag:
            flag.uninstall()


def _log_to_files(message: str) -> None:
    """``message`` into ``log.txt`` only: the console gets it once, as the ``error:`` line."""
    record = logger.makeRecord(logger.name, logging.ERROR, __file__, 0, message, None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def _take_run_folder(cfg: RunConfig, info: distributed.WorldInfo) -> RunLock | None:
    """Lock the run folder (rank 0), remove a killed run's leftovers and check the config identity of the
    checkpoint to resume, all before any heavy work; every rank raises the same ``RunError``."""
    run_dir = resolve_run_dir(cfg, info.rank)
    lock, error = None, None
    if info.is_main:
        try:
            lock = RunLock(run_dir).acquire()
            setup_logging(run_dir, info.rank)  # the folder is ours now: log.txt may be written
            if lock.took_over:
                logger.warning("%s", lock.took_over)
            remove_leftovers(run_dir)
            folder = _resume_folder(cfg, run_dir)
            if folder is not None:
                check_identity(checkpoint_identity(folder), config_identity(to_dict(cfg)), folder,
                               cfg.checkpoint.allow_config_change)
        except RunError as err:
            error = err
    error = distributed.broadcast_object(error)
    if error is not None:
        if lock is not None:
            lock.release()
        raise error
    return lock


def _resume_folder(cfg: RunConfig, run_dir: Path) -> Path | None:
    """The checkpoint a resume would start from (newest complete, unverified), for the identity check."""
    if cfg.checkpoint.resume == "none":
        return None
    if cfg.checkpoint.resume != "auto":
        return Path(cfg.checkpoint.resume)
    found = complete_checkpoints(run_dir / "checkpoints")
    return found[-1] if found else None


def _setup(cfg: RunConfig, build: BuildFn, info: distributed.WorldInfo, device: torch.device,
           flag: PreemptionFlag) -> Run:
    run_dir = resolve_run_dir(cfg, info.rank)
    setup_logging(run_dir, info.rank)
    if info.is_main:
        save_yaml(cfg, run_dir / "config.yaml")
    note = derive_grad_accum(cfg, info.world_size)  # a no-op after vosr.train's own preflight
    if cfg.engine.global_batch_size is not None:
        logger.info("global batch %d (engine.global_batch_size, fixed) = data.batch_size %d x gradient "
                    "accumulation %d x world size %d: the accumulation (and, on many ranks, the micro-batch) "
                    "follows from the global batch and the world size%s", cfg.engine.global_batch_size,
                    cfg.data.batch_size, cfg.optim.grad_accum, info.world_size, f" ({note})" if note else "")
    # Before any heavy work: a data source that gives no sample fails here, in one line naming it.
    try:
        stream = build_train_stream(cfg.data, rank=info.rank, world_size=info.world_size, seed=cfg.seed)
    except (ValueError, FileNotFoundError) as err:
        raise RunError(str(err)) from err
    seed_everything(cfg.seed, info.rank)
    generators = make_generators(cfg, info.rank, device)
    meter = PeakMeter(device).start()
    parts = build_frozen_parts(cfg, device)
    model, objective = build(cfg, parts, device)
    plan = run_memory_plan(cfg, model, parts, world_size=info.world_size, device=device, rank=info.rank)
    logger.info("memory model per rank (ZeRO-%d, world %d, %s): %s", cfg.engine.zero_stage, info.world_size,
                cfg.engine.precision, plan.describe())
    validate = cfg.data.val is not None and cfg.log.val_every > 0
    eval_model = copy.deepcopy(model).requires_grad_(False).eval() if validate and info.is_main else None
    engine = TrainEngine(model, cfg.engine, cfg.optim, micro_batch=cfg.data.batch_size, world=info, device=device)
    checkpointer = Checkpointer(run_dir / "checkpoints", cfg.checkpoint.keep_latest, info.rank)
    state = _resume(cfg, engine, checkpointer, generators, stream)
    skips = SkipLog()
    if info.is_main:
        cut_metrics(run_dir / "metrics.jsonl", state.step)  # steps after the checkpoint are redone, identically
        skips.load(run_dir / SKIPPED_FILE)
    metrics = MetricsLogger(cfg.log, run_dir=run_dir, rank=info.rank, run_id=state.wandb_id, name=cfg.name or cfg.stage,
                            config=to_dict(cfg))
    state.wandb_id = distributed.broadcast_object(metrics.run_id)
    validator = Validator(cfg, parts, device, run_dir) if validate and info.is_main else None
    return Run(cfg=cfg, info=info, device=device, run_dir=run_dir, parts=parts, engine=engine, objective=objective,
               checkpointer=checkpointer, generators=generators, state=state, metrics=metrics, validator=validator,
               eval_model=eval_model, stream=stream, skips=skips, flag=flag, memory_plan=plan, meter=meter)


def _resume(cfg: RunConfig, engine: TrainEngine, checkpointer: Checkpointer,
            generators: dict[str, torch.Generator], stream: TrainStream) -> TrainState:
    """Load the checkpoint to resume from, if any, and put the data stream at its saved position."""
    if cfg.checkpoint.resume == "none":
        return TrainState()
    folder = checkpointer.latest() if cfg.checkpoint.resume == "auto" else Path(cfg.checkpoint.resume)
    if folder is None:
        logger.info("no checkpoint to resume from: starting at step 0")
        return TrainState()
    saved = checkpointer.load(engine, folder, generators)
    known = {f.name for f in fields(TrainState)}
    state = TrainState(**{k: v for k, v in saved["train"].items() if k in known})
    state.restart += 1
    exact = saved["data_stream"] is not None and stream.load_state_dict(saved["data_stream"])
    if not exact:
        stream.reseed(state.restart)
    where = "at its saved position" if exact else f"reseeded (restart {state.restart})"
    logger.info("resumed from %s at step %d (restart %d, %d images seen); data stream %s", folder, state.step,
                state.restart, state.images, where)
    return state


def _loop(run: Run) -> int:
    cfg, state, info = run.cfg, run.state, run.info
    flag = run.flag
    if distributed.any_rank(flag.requested, run.device):  # a signal during start-up: nothing new to save
        logger.warning("preempted (%s) during start-up at step %d: exiting for requeue",
                       flag.signal_name or "another rank", state.step)
        return EXIT_PREEMPTED
    data = iter(run.stream)
    timer, window = StepTimer(), defaultdict(float)
    if run.meter is not None:
        run.meter.mark()  # what the first steps allocate, apart from imports and set-up
    bar = tqdm(initial=state.step, total=cfg.optim.max_steps, disable=not (info.is_main and cfg.log.progress),
               desc=cfg.stage, dynamic_ncols=True)
    try:
        while state.step < cfg.optim.max_steps:
            for key, value in _train_step(run, data, timer).items():
                window[key] += value
            window["_n"] += 1
            bar.update(1)
            if state.step % cfg.log.every_steps == 0 or state.step == cfg.optim.max_steps:
                _log(run, window, timer, bar)
                window.clear()
            if cfg.log.val_every and state.step % cfg.log.val_every == 0:
                _validate(run)
            preempted = distributed.any_rank(flag.requested, run.device)
            if preempted or state.step % cfg.checkpoint.every_steps == 0 or state.step == cfg.optim.max_steps:
                _save(run)
            if preempted:
                logger.warning("preempted (%s) at step %d: checkpoint saved, exiting for requeue",
                               flag.signal_name or "another rank", state.step)
                return EXIT_PREEMPTED
    finally:
        bar.close()
    _redo_stale_exports(run)
    logger.info("finished %d steps; weights in %s", state.step, run.run_dir / "ema.safetensors")
    return 0


def _train_step(run: Run, data, timer: StepTimer) -> dict[str, float]:
    """One optimizer step over ``grad_accum`` finite micro-batches; returns summed loss stats."""
    cfg, state, engine = run.cfg, run.state, run.engine
    totals: dict[str, float] = defaultdict(float)
    done = 0
    while done < cfg.optim.grad_accum:
        t0 = time.perf_counter()
        batch = next(data)
        hr = to_unit(batch["hr"].to(run.device, non_blocking=True))  # uint8 over the bus, normalised on the device
        timer.add_data(time.perf_counter() - t0)
        z_hq, z_lq, sem, lr_up, scores = run.parts.encode_batch(hr, run.generators["degradation"],
                                                                autocast=engine.autocast)
        extra = {"extras": Extras(lr_up=lr_up, scores=scores)} if run.objective.uses_extras else {}
        with engine.autocast():
            loss, stats = run.objective.loss(engine.forward_model(), z_hq, z_lq, sem, run.generators["objective"],
                                             **extra)
        if distributed.any_rank(not bool(torch.isfinite(loss)), run.device):
            state.nonfinite += 1
            logger.warning("non-finite loss at step %d (%d so far): micro-batch skipped", state.step, state.nonfinite)
            if state.nonfinite > cfg.optim.max_nonfinite:
                raise RuntimeError(f"{state.nonfinite} non-finite losses > optim.max_nonfinite="
                                   f"{cfg.optim.max_nonfinite}; lower optim.lr or check the data")
            continue
        engine.backward_step(loss)
        for key, value in stats.items():
            totals[key] += float(value) / cfg.optim.grad_accum
        done += 1
    state.step += 1
    state.images += cfg.data.batch_size * cfg.optim.grad_accum * run.info.world_size
    return dict(totals)


def _log_skips(run: Run) -> dict[str, float]:
    """Gather the ranks' new distinct skipped samples; rank 0 appends them to skipped.jsonl. Returns the run's
    distinct counts per kind (meaningful on rank 0, which logs them)."""
    new = [rec for recs in distributed.all_gather_object(run.stream.take_skips()) for rec in recs]
    if run.info.is_main:
        SkipLog.append(run.run_dir / SKIPPED_FILE, run.skips.add(new))
    return {f"data/skipped_{k}": float(v) for k, v in run.skips.counts().items()}


def _log(run: Run, window: dict[str, float], timer: StepTimer, bar: tqdm) -> None:
    cfg, info = run.cfg, run.info
    n = max(window.pop("_n", 1.0), 1.0)
    scalars = distributed.all_reduce_mean({(k if "/" in k else f"loss/{k}"): v / n for k, v in window.items()},
                                         run.device)
    per_rank_images = int(n) * cfg.data.batch_size * cfg.optim.grad_accum
    perf = timer.report(per_rank_images, run.objective.flops_per_image, peak_flops(run.device))
    perf["perf/images_per_s"] *= info.world_size
    scalars.update(perf)
    scalars.update(memory_stats(run.device))
    scalars.update(_log_skips(run))
    scalars.update({"optim/lr": run.engine.lr, "optim/nonfinite_steps": float(run.state.nonfinite),
                    "progress/images": float(run.state.images)})
    grad_norm = run.engine.grad_norm()
    if grad_norm is not None:
        scalars["optim/grad_norm"] = grad_norm
    if run.meter is not None and run.memory_plan is not None:  # the first log step: prediction beside the peak
        scalars.update(_memory_report(run))
        run.meter = None
    run.metrics.log(scalars, run.state.step)
    loss_key = next((k for k in scalars if k.startswith("loss/")), None)
    if info.is_main:
        bar.set_postfix(loss=f"{scalars[loss_key]:.4f}" if loss_key else "-",
                        img_s=f"{scalars['perf/images_per_s']:.1f}")
        logger.info("step %d %s", run.state.step, " ".join(f"{k}={v:.4g}" for k, v in sorted(scalars.items())))


def _memory_report(run: Run) -> dict[str, float]:
    """The memory model beside the measured peak: in all, since before the frozen parts were built, and what the
    first steps allocated (since just before them; on the CPU this one is free of import and set-up noise)."""
    plan, meter = run.memory_plan, run.meter
    steps_pred = plan.allocated_by_steps(optimizer_state_exists=run.state.restart > 0)
    total, steps = meter.peak(), meter.since_mark()
    logger.info("memory per rank: predicted %.4g GiB, measured peak %.4g GiB; first steps: predicted %.4g GiB, "
                "measured %.4g GiB (ratio %.3f); measured as %s", plan.total / GIB, total / GIB, steps_pred / GIB,
                steps / GIB, steps / steps_pred if steps_pred else float("nan"), meter.method)
    return {"memory/predicted(GiB)": plan.total / GIB, "memory/measured_peak(GiB)": total / GIB,
            "memory/steps_predicted(GiB)": steps_pred / GIB, "memory/steps_measured(GiB)": steps / GIB}


def _gather_ema(run: Run) -> dict[str, torch.Tensor]:
    """The full EMA weights on rank 0 (empty on the others): collective only when the EMA is sharded (ZeRO-3,
    or bf16 mode's flat master EMA), where the partitions are gathered to rank 0 alone; otherwise the other
    ranks copy nothing."""
    module = run.engine.module
    if is_zero3_partitioned(module) or getattr(run.engine.ema, "sharded", False):
        return run.engine.ema.full_state_dict(module, dst=0)
    return run.engine.ema.full_state_dict(module) if run.info.is_main else {}


def _gather_raw(run: Run) -> dict[str, torch.Tensor]:
    if is_zero3_partitioned(run.engine.module) or run.engine.master_weights_separate or run.info.is_main:
        return run.engine.full_state_dict()  # collective in the first two cases
    return {}


def _validate(run: Run) -> None:
    if run.cfg.data.val is None:  # nothing to validate: no gather (the same on every rank)
        return
    weights = _gather_ema(run)
    if run.validator is not None and run.eval_model is not None:
        run.eval_model.load_state_dict(weights)
        run.eval_model.to(run.device)
        with run.engine.autocast():
            scalars, grid_path, grid = run.validator.run(run.eval_model, run.objective, run.state.step)
        run.eval_model.to("cpu")
        run.metrics.log(scalars, run.state.step)
        run.metrics.log_image("val/grid", grid, run.state.step, caption="LR | outputs | HR")
        logger.info("validation at step %d: %s (grid %s)", run.state.step,
                    " ".join(f"{k}={v:.4g}" for k, v in scalars.items()), grid_path)
    del weights
    distributed.barrier()


def _exports(run: Run) -> dict[str, Callable[[Run], dict[str, torch.Tensor]]]:
    exports: dict[str, Callable[[Run], dict[str, torch.Tensor]]] = {}
    if run.cfg.checkpoint.export_ema:
        exports["ema.safetensors"] = _gather_ema
    if run.cfg.checkpoint.export_raw:
        exports["model.safetensors"] = _gather_raw
    return exports


def _write_export(run: Run, name: str, gather: Callable[[Run], dict[str, torch.Tensor]]) -> None:
    weights = gather(run)
    error = None
    if run.info.is_main:
        try:
            save_export(run.run_dir / name, weights, run.cfg, extra={"step": str(run.state.step)})
        except (OSError, RuntimeError) as err:
            error = str(write_error(run.run_dir / name, err))
    del weights
    error = distributed.broadcast_object(error)
    if error is not None:
        raise CheckpointError(error)


def _save(run: Run) -> None:
    state = {"train": asdict(run.state), "config": to_dict(run.cfg), "identity": config_identity(to_dict(run.cfg))}
    run.checkpointer.save(run.engine, run.state.step, state, run.generators, data_state=run.stream.state_dict())
    for name, gather in _exports(run).items():
        _write_export(run, name, gather)


def export_step(path: Path) -> int | None:
    """The step recorded in an export's metadata (None when missing or unreadable)."""
    try:
        return int(read_metadata(path)["step"])
    except (OSError, KeyError, ValueError, FileNotFoundError):
        return None
    except Exception:  # a torn safetensors header
        return None


def _redo_stale_exports(run: Run) -> None:
    """Rewrite an export that does not hold the last step (a run killed during its final export)."""
    if run.state.step == 0:
        return
    stale = None
    if run.info.is_main:
        stale = [name for name in _exports(run) if export_step(run.run_dir / name) != run.state.step]
    for name in distributed.broadcast_object(stale):
        logger.warning("%s does not hold step %d (killed during its export?): writing it again", name,
                       run.state.step)
        _write_export(run, name, _exports(run)[name])
