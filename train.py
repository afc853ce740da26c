"""Train one dense or MoE transformer; the Hydra entry point.

    python train.py                                  # tiny MoE on the embedded corpus, CPU
    python train.py model=dense_tiny optim.lr=1e-3   # any field can be overridden
    python train.py +experiment=fit_grid             # the Fitting paradigm's LR grid + fit
    python train.py +experiment=compare              # Fitting vs Transfer at a held-out target

Reads top to bottom: compose and validate the config -> build (data, model, hardware,
optimizer, resume) -> the loop -> finish (summary, checkpoint, sweep rows). Everything heavier
lives in `training/` as named functions; docs/architecture.md maps the packages.
"""
from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from lrscale.data import TokenLoader, build_corpus, val_batches
from lrscale.models import Transformer
from lrscale.optim import GroupLR, build_optimizer, build_schedule
from lrscale.parametrization import build_parametrization, format_param_table, init_weights, param_table
from lrscale.training import distributed, interrupt
from lrscale.training.branches import DecayBranches
from lrscale.training.checkpoint import find_checkpoint, load_checkpoint, remove_checkpoint, save_checkpoint
from lrscale.training.config import Config, register_configs, to_object
from lrscale.training.errors import one_line_errors
from lrscale.training.hardware import apply_hardware, mfu, peak_flops, setup_torch
from lrscale.training.io import read_jsonl, write_json
from lrscale.training.loop import StepContext, TrainState, divergence_flag, evaluate, moe_stats, train_step
from lrscale.training.metrics import MetricsLogger, progress
from lrscale.training.probes import run_probes, snapshot_weights, summarize_probes
from lrscale.training.results_table import record_rows
from lrscale.training.rundir import RunIdentity, identify, write_run_metadata
from lrscale.training.runlock import RunLock
from lrscale.training.summary import RunSummary, finished_summary, write_summary

register_configs()


def say(world: distributed.World, msg: str) -> None:
    """Console messages come from rank 0 only."""
    if world.is_main:
        print(f"[train] {msg}", file=sys.stderr)


def run(dcfg: DictConfig) -> dict:
    """Train (or resume, or skip if already finished) the run that `dcfg` describes; its summary.

    Holds the run directory's lock throughout (a second process on it is refused). On SIGTERM,
    SIGINT, SIGUSR1 or SIGUSR2 it finishes the step, checkpoints, marks the run `interrupted`
    and raises `interrupt.Interrupted` (exit code 128 + signal number)."""
    cfg: Config = to_object(dcfg)  # every group is validated here, before any data or model is built
    world = distributed.init(cfg.hardware)
    ident = distributed.on_main(lambda: identify(dcfg), world)  # rank 0 decides, all ranks agree
    lock = RunLock(ident.dir)
    distributed.on_main(lock.acquire, world)  # one writer per run: rank 0 holds it for every rank
    try:
        done = distributed.on_main(lambda: finished_summary(ident, cfg.run.resume), world)
        if done is not None:
            say(world, f"{ident.dir} already finished ({done['status']}); skipping")
            return done
        job = build(cfg, dcfg, world, ident)
        with interrupt.graceful_stop() as stop:  # a signal only sets a flag, read at each step boundary
            train(job, stop)
            summary = finish(job, stop)
        stop.exit()  # a signal seen: hand it to a launcher's handler if any, then exit 128 + signum
        return summary
    finally:
        lock.release()


@dataclass
class Job:
    """Everything one run needs, built once."""
    cfg: Config
    world: distributed.World
    ident: RunIdentity
    loader: TokenLoader
    val: list
    core: Transformer                 # the model itself: parameters, probes, checkpoints
    ctx: StepContext                  # what a step needs: the wrapped model, optimizer, schedule, ...
    branches: DecayBranches
    logger: MetricsLogger
    state: TrainState
    peak_tflops: float                # what MFU divides by
    tokens_per_step: int
    fingerprint: dict                 # which corpus and tokenizer
    saved_at: int | None              # the step the newest checkpoint holds


def build(cfg: Config, dcfg: DictConfig, world: distributed.World, ident: RunIdentity) -> Job:
    """Data -> model -> hardware -> optimizer -> a fresh start or the newest checkpoint."""
    device = setup_torch(cfg.hardware, cfg.model)  # also checks the kernels against device and dtype
    corpus = build_corpus(cfg.data)
    if corpus.vocab_size > cfg.model.vocab_size:
        raise ValueError(f"tokenizer has {corpus.vocab_size} tokens but model.vocab_size={cfg.model.vocab_size}; "
                         "raise model.vocab_size (or data.tokenizer.vocab_size)")
    T, B = cfg.model.seq_len, cfg.train.batch_size
    loader = TokenLoader(corpus.train, T, B, seed=cfg.train.seed, rank=world.rank, world_size=world.size)
    val = distributed.rank_rows(val_batches(corpus.val, T, B, cfg.train.eval_batches), world)

    param = build_parametrization(cfg.parametrization, cfg.model)
    core = Transformer(cfg.model, param, cfg.hardware.attention_backend, cfg.hardware.expert_backend)
    init_weights(core, param, seed=cfg.train.seed)
    core.to(device)
    table = param_table(core, param)
    hw = apply_hardware(core, cfg.hardware, world, device)  # checkpointing -> compile -> DDP/FSDP
    optimizer = build_optimizer(core, table, cfg.optim, B * T, cfg.train.steps * B * T, fused=hw.fused_optimizer)
    schedule = GroupLR(optimizer, build_schedule(cfg.schedule, cfg.train.steps))
    ctx = StepContext(hw.model, core, optimizer, schedule, hw.autocast, device, cfg.train.micro_batch_size,
                      cfg.optim.grad_clip)
    peak = peak_flops(device)  # the nominal GPU peak, or the measured CPU matmul rate

    logger = MetricsLogger(ident.dir, cfg.logging, OmegaConf.to_container(dcfg, resolve=True), ident.name,
                           enabled=world.is_main)
    state, ckpt = TrainState(), distributed.on_main(lambda: find_checkpoint(ident.dir), world)
    if ckpt is not None:  # verified first: a damaged checkpoint is an error here, never trained from
        state = load_checkpoint(ckpt, core, optimizer, loader, world)
        logger.truncate_after(state.step)
        say(world, f"resumed {ident.dir} at step {state.step}")
    elif world.is_main:
        logger.reset()  # a fresh start: rows left by an attempt that crashed before its first checkpoint go
        write_run_metadata(ident.dir, dcfg, corpus.fingerprint, table)
        write_json(ident.dir / "peak_flops.json", peak)
        if cfg.logging.print_param_table:
            print(format_param_table(table), file=sys.stderr)
    counts = cfg.model.param_counts()
    say(world, f"{ident.name}: N total {counts['n_total']:,} active {counts['n_active']:,} non-embedding "
        f"{counts['n_active_nonembed']:,}; {cfg.train.steps} steps x {B * T} tokens on {world.size} rank(s); "
        f"run dir {ident.dir}")
    return Job(cfg, world, ident, loader, val, core, ctx, DecayBranches.plan(cfg.schedule, cfg.train.steps, B * T),
               logger, state, peak["peak_tflops"], B * T, corpus.fingerprint, state.step if ckpt is not None else None)


def train(job: Job, stop: interrupt.StopRequest) -> None:
    """The loop: decay branches due at this step, one optimizer step, then logging, probes,
    evaluation and checkpoints at their intervals. Stops on divergence or a signal.

    The step's losses stay on the device; they are read (one host sync) when the loop logs,
    evaluates or checkpoints, which is also when divergence is acted on (a flag the device
    keeps): a diverged run stops within `logging.log_every` steps of the first bad loss."""
    cfg, state, ctx, world = job.cfg, job.state, job.ctx, job.world
    bar = progress(cfg.train.steps, state.step, cfg.logging.progress and world.is_main)
    t_start, wall0 = time.perf_counter(), state.wall_time_s
    t_log, steps_since_log, bad = t_start, 0, None
    for step in range(state.step, cfg.train.steps):
        if stop.requested(world) or not job.branches.run_due(  # every rank agrees (an all-reduce under torchrun)
                step, ctx, job.loader, job.val, state, cfg.train.divergence_factor,
                lambda: stop.requested(world), job.logger.log):
            state.status = "interrupted"  # a branch cut short is redone from its fork on resume
            break
        probe_now = cfg.train.probe_every and (step + 1) % cfg.train.probe_every == 0
        weights0 = snapshot_weights(job.core) if probe_now else None  # probe/update_rel: W before this step
        x, y = job.loader.batch(step)
        m = train_step(ctx, x, y, step)
        state.advance(m["loss"], job.tokens_per_step)
        flag = divergence_flag(m["loss"], state.initial_loss, cfg.train.divergence_factor)
        bad, steps_since_log = flag if bad is None else bad | flag, steps_since_log + 1
        eval_now = state.step % cfg.train.eval_every == 0 or state.step == cfg.train.steps
        ckpt_now = cfg.train.ckpt_every and state.step % cfg.train.ckpt_every == 0 and state.step < cfg.train.steps
        if state.step % cfg.logging.log_every == 0 or state.step == cfg.train.steps or eval_now or ckpt_now:
            if bool(bad):  # the host reads the device here, and only here
                state.status = "diverged"
                say(world, f"diverged by step {state.step}: loss {float(m['loss']):.4g}")
                break
            now = time.perf_counter()
            tokens_per_s = steps_since_log * job.tokens_per_step / (now - t_log)
            t_log, steps_since_log = now, 0
            job.logger.log({"step": state.step, "tokens": state.tokens, "train_loss": float(m["loss"]),
                            "aux_loss": float(m["aux_loss"]), "lr": ctx.optimizer.defaults["lr"] * m["lr_factor"],
                            "grad_norm": float(m["grad_norm"]), "tokens_per_s": tokens_per_s,
                            **mfu(tokens_per_s, cfg.model.flops_per_token(), job.peak_tflops, world.size),
                            **moe_stats(m["moe_stats"])})
            bar.set_postfix(loss=f"{float(m['loss']):.3f}", val=f"{state.last_val_loss or math.nan:.3f}",
                            tok_s=f"{tokens_per_s:.0f}")
        if probe_now:
            with distributed.unsharded(job.core):  # probes read weights directly
                job.logger.log({"step": state.step, **run_probes(job.core, x, ctx, weights0)})
        if eval_now:
            state.record_eval(evaluate(ctx.model, job.val, ctx.device, ctx.autocast))
            job.logger.log({"step": state.step, "tokens": state.tokens, "val_loss": state.last_val_loss})
        bar.update(1)
        state.wall_time_s = wall0 + time.perf_counter() - t_start
        if ckpt_now:
            save_checkpoint(job.ident.dir, job.core, ctx.optimizer, job.loader, state, world)  # collective
            job.saved_at = state.step
    bar.close()
    state.wall_time_s = wall0 + time.perf_counter() - t_start


def finish(job: Job, stop: interrupt.StopRequest) -> dict:
    """Write summary.json (which marks the run done), keep or drop the checkpoint, record the
    sweep rows; an interrupted run keeps a checkpoint of its last step and records nothing."""
    cfg, state, world, run_dir = job.cfg, job.state, job.world, job.ident.dir
    if state.status == "running":
        state.status = "completed"
    interrupted = state.status == "interrupted"
    summary = RunSummary.of_run(cfg, job.ident, state, planned_steps=job.branches.planned_steps,
                                peak_lr=job.ctx.optimizer.defaults["lr"], tokens_per_step=job.tokens_per_step,
                                fingerprint=job.fingerprint)
    keep = interrupted or (cfg.run.keep_checkpoint and state.status == "completed")
    if keep and state.step > 0 and job.saved_at != state.step:
        save_checkpoint(run_dir, job.core, job.ctx.optimizer, job.loader, state, world)
    if world.is_main:
        summary.stability = summarize_probes(read_jsonl(run_dir / "metrics.jsonl"))
        summary.interrupted_by = interrupt.signal_name(stop.signum) if interrupted else None
        write_summary(run_dir, summary.to_dict())  # first: the summary is what marks the run done
        if not keep:
            remove_checkpoint(run_dir)
        if cfg.sweep.enabled and not interrupted:  # an interrupted run measured nothing: no rows
            record_rows(Path(cfg.sweep.dir), summary.to_dict())
    job.logger.close()
    if interrupted:
        kept = f"checkpoint saved in {run_dir / 'checkpoint'}" if state.step else "nothing trained yet"
        say(world, f"interrupted by {summary.interrupted_by} at step {state.step}/{cfg.train.steps}; {kept}. "
            f"Rerun the same command to resume from step {state.step}")
    else:
        say(world, f"{state.status}: final val loss {summary.final_val_loss}, {state.wall_time_s:.0f} s, "
            f"summary in {run_dir / 'summary.json'}")
    distributed.barrier()  # ranks leave together: torchrun stops the others when one exits non-zero
    return summary.to_dict()


@hydra.main(config_path="configs", config_name="train", version_base="1.3")
def main(dcfg: DictConfig) -> dict:
    with one_line_errors(say_error):
        if dcfg.sweep.enabled:
            from lrscale.training.sweep_job import run_sweep_job
            return run_sweep_job(run, dcfg)  # a crash is recorded as a data point and the sweep goes on
        return run(dcfg)


def say_error(msg: str) -> None:
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"[train] {msg}", file=sys.stderr)


if __name__ == "__main__":
    main()
