"""Train one dense or MoE transformer; the Hydra entry point.

    python train.py                                  # tiny MoE on the embedded corpus, CPU
    python train.py model=dense_tiny optim.lr=1e-3   # any field can be overridden
    python train.py +experiment=fit_grid             # the Fitting paradigm's LR grid + fit

Reads top to bottom: compose config -> data -> model -> optimizer -> loop. Everything
heavier lives in `training/` as named functions.
"""
from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from lrscale.data import TokenLoader, build_corpus, val_batches
from lrscale.models import Transformer
from lrscale.optim import GroupLR, build_optimizer, build_schedule, horizon_lr, wsd
from lrscale.parametrization import build_parametrization, format_param_table, init_weights, param_table
from lrscale.training import distributed, interrupt
from lrscale.training.config import Config, register_configs, to_object
from lrscale.training.errors import one_line_errors
from lrscale.training.checkpoint import find_checkpoint, load_checkpoint, remove_checkpoint, save_checkpoint
from lrscale.training.hardware import apply_compile, autocast, fused_optimizer, mfu, peak_flops, setup_torch
from lrscale.training.io import read_jsonl, write_json
from lrscale.training.loop import StepContext, TrainState, diverged, evaluate, moe_stats, run_decay_branch, train_step
from lrscale.training.metrics import MetricsLogger, progress
from lrscale.training.probes import run_probes, snapshot_weights, summarize_probes
from lrscale.training.rundir import config_hash, run_dir_for, write_run_metadata
from lrscale.training.runlock import RunLock
from lrscale.training.summary import branch_plan, existing_summary, make_summary, record_sweep_rows

register_configs()


def say(world: distributed.World, msg: str) -> None:
    """Console messages come from rank 0 only."""
    if world.is_main:
        print(f"[train] {msg}", file=sys.stderr)


def run(dcfg: DictConfig) -> dict:
    """Train (or resume, or skip if already finished) the run that `dcfg` describes.

    Holds the run directory's lock throughout (a second process on it is refused). On
    SIGTERM, SIGINT, SIGUSR1 or SIGUSR2 it finishes the step, checkpoints, marks the run
    `interrupted` and raises `interrupt.Interrupted` (exit code 128 + signal number)."""
    cfg: Config = to_object(dcfg)
    world = distributed.init(cfg.hardware)
    run_dir = distributed.on_main(lambda: run_dir_for(dcfg), world)  # rank 0 decides, all ranks agree
    lock = RunLock(run_dir)
    distributed.on_main(lock.acquire, world)  # one writer per run: rank 0 holds it for every rank
    try:
        return _run_locked(dcfg, cfg, world, run_dir)
    finally:
        lock.release()


def _run_locked(dcfg: DictConfig, cfg: Config, world: distributed.World, run_dir: Path) -> dict:
    done = distributed.on_main(lambda: existing_summary(run_dir, cfg.run.resume, config_hash(dcfg)), world)
    if done is not None:
        say(world, f"{run_dir} already finished ({done['status']}); skipping")
        return done

    # ---- data ------------------------------------------------------------------------
    device = setup_torch(cfg.hardware, cfg.model)  # also checks the kernels against device and dtype
    corpus = build_corpus(cfg.data)
    if corpus.vocab_size > cfg.model.vocab_size:
        raise ValueError(f"tokenizer has {corpus.vocab_size} tokens but model.vocab_size={cfg.model.vocab_size}; "
                         "raise model.vocab_size (or data.tokenizer.vocab_size)")
    T, B = cfg.model.seq_len, cfg.train.batch_size
    loader = TokenLoader(corpus.train, T, B, seed=cfg.train.seed, rank=world.rank, world_size=world.size)
    val = distributed.rank_rows(val_batches(corpus.val, T, B, cfg.train.eval_batches), world)
    tokens_per_step = B * T

    # ---- model, parametrization, optimizer --------------------------------------------
    param = build_parametrization(cfg.parametrization, cfg.model)
    core = Transformer(cfg.model, param, cfg.hardware.attention_backend, cfg.hardware.expert_backend)
    init_weights(core, param, seed=cfg.train.seed)
    core.to(device)
    table = param_table(core, param)
    model = distributed.wrap(apply_compile(core, cfg.hardware), cfg.hardware, world)
    # After wrapping: FSDP2 replaces the parameters by sharded DTensors (same names, same table).
    optimizer = build_optimizer(core, table, cfg.optim, tokens_per_step, cfg.train.steps * tokens_per_step,
                                fused=fused_optimizer(cfg.hardware, device))
    base_lr = horizon_lr(cfg.optim, cfg.train.steps * tokens_per_step)  # the LR the groups' multipliers scale
    schedule = GroupLR(optimizer, build_schedule(cfg.schedule, cfg.train.steps))
    ctx = StepContext(model, core, optimizer, schedule, autocast(cfg.hardware, device), device,
                      cfg.train.micro_batch_size, cfg.optim.grad_clip)
    branches = branch_plan(cfg.schedule, cfg.train.steps, tokens_per_step)

    # ---- run directory, resume ------------------------------------------------------------
    counts, flops_per_token = cfg.model.param_counts(), cfg.model.flops_per_token()
    peak = peak_flops(device)  # what MFU divides by: nominal GPU peak, or the measured CPU matmul rate
    name = run_dir.name
    logger = MetricsLogger(run_dir, cfg.logging, OmegaConf.to_container(dcfg, resolve=True), name,
                           enabled=world.is_main)
    state, ckpt = TrainState(), distributed.on_main(lambda: find_checkpoint(run_dir), world)
    if ckpt is not None:  # verified first: a damaged checkpoint is an error here, never trained from
        state = load_checkpoint(ckpt, core, optimizer, loader, world)
        logger.truncate_after(state.step)
        say(world, f"resumed {run_dir} at step {state.step}")
    elif world.is_main:
        logger.reset()  # a fresh start: rows left by an attempt that crashed before its first checkpoint go
        write_run_metadata(run_dir, dcfg, corpus.fingerprint, table)
        write_json(run_dir / "peak_flops.json", peak)
        if cfg.logging.print_param_table:
            print(format_param_table(table), file=sys.stderr)
    say(world, f"{name}: N total {counts['n_total']:,} active {counts['n_active']:,} non-embedding "
        f"{counts['n_active_nonembed']:,}; {cfg.train.steps} steps x {tokens_per_step} tokens on {world.size} "
        f"rank(s); run dir {run_dir}")

    # ---- the loop -------------------------------------------------------------------------
    bar = progress(cfg.train.steps, state.step, cfg.logging.progress and world.is_main)
    t_start, wall0 = time.perf_counter(), state.wall_time_s
    done_budgets = {b["steps"] for b in state.branches}
    saved_at = state.step if ckpt is not None else None  # the step the newest checkpoint holds
    with interrupt.graceful_stop() as stop:  # a signal only sets a flag, read at each step boundary
        for step in range(state.step, cfg.train.steps):
            if stop.requested(world):  # every rank agrees (one tiny all-reduce per step under torchrun)
                state.status = "interrupted"
                break
            for start, end in branches:  # WSD decay branches forked from the stable state
                if step == start and end not in done_budgets:
                    res = run_decay_branch(ctx, loader, val, start, end, wsd(cfg.schedule, end),
                                           cfg.train.divergence_factor, state, lambda: stop.requested(world))
                    if res["status"] == "interrupted":  # abandoned: redone from `start` on resume
                        state.status = "interrupted"
                        break
                    res["tokens"] = end * tokens_per_step
                    state.branches.append(res)
                    done_budgets.add(end)
                    state.branch_tokens += (end - start) * tokens_per_step
                    logger.log({"step": step, "branch_tokens": res["tokens"], "branch_val_loss": res["val_loss"]})
            if state.status == "interrupted":
                break
            probe_now = cfg.train.probe_every and (step + 1) % cfg.train.probe_every == 0
            weights0 = snapshot_weights(core) if probe_now else None  # probe/update_rel: W before this step
            t0 = time.perf_counter()
            x, y = loader.batch(step)
            m = train_step(ctx, x, y, step)
            state.step, state.tokens = step + 1, state.tokens + tokens_per_step
            if state.initial_loss is None:
                state.initial_loss = m["loss"]
            if diverged(m["loss"], state, cfg.train.divergence_factor):
                state.status = "diverged"
                say(world, f"diverged at step {step}: loss {m['loss']:.4g}")
                break
            row = {"step": state.step, "tokens": state.tokens, "train_loss": m["loss"], "aux_loss": m["aux_loss"],
                   "lr": base_lr * m["lr_factor"], "grad_norm": m["grad_norm"],
                   "tokens_per_s": tokens_per_step / (time.perf_counter() - t0)}
            row.update(mfu(row["tokens_per_s"], flops_per_token, peak["peak_tflops"], world.size))  # tflops, mfu
            if state.step % cfg.logging.log_every == 0 or state.step == cfg.train.steps:
                logger.log({**row, **moe_stats(core)})
            if probe_now:
                with distributed.unsharded(core):  # probes read weights directly
                    logger.log({"step": state.step, **run_probes(core, x, ctx, weights0)})
            if state.step % cfg.train.eval_every == 0 or state.step == cfg.train.steps:
                state.last_val_loss = evaluate(model, val, device, ctx.autocast)
                state.best_val_loss = min(state.best_val_loss, state.last_val_loss)
                logger.log({"step": state.step, "tokens": state.tokens, "val_loss": state.last_val_loss})
            bar.update(1)
            bar.set_postfix(loss=f"{m['loss']:.3f}", val=f"{state.last_val_loss or math.nan:.3f}",
                            tok_s=f"{row['tokens_per_s']:.0f}")
            state.wall_time_s = wall0 + time.perf_counter() - t_start
            if cfg.train.ckpt_every and state.step % cfg.train.ckpt_every == 0 and state.step < cfg.train.steps:
                save_checkpoint(run_dir, core, optimizer, loader, state, world)  # collective
                saved_at = state.step
        bar.close()

        # ---- finish -----------------------------------------------------------------------
        if state.status == "running":
            state.status = "completed"
        interrupted = state.status == "interrupted"
        state.wall_time_s = wall0 + time.perf_counter() - t_start
        summary = make_summary(cfg, dcfg, state, counts, flops_per_token, tokens_per_step, corpus.fingerprint,
                               config_hash(dcfg))
        keep = interrupted or (cfg.run.keep_checkpoint and state.status == "completed")
        if keep and state.step > 0 and saved_at != state.step:
            save_checkpoint(run_dir, core, optimizer, loader, state, world)
        if world.is_main:
            summary["stability"] = summarize_probes(read_jsonl(run_dir / "metrics.jsonl"))
            if interrupted:
                summary["interrupted_by"] = interrupt.signal_name(stop.signum)
            write_json(run_dir / "summary.json", summary)  # first: the summary is what marks the run done
            if not keep:
                remove_checkpoint(run_dir)
            if cfg.sweep.enabled and not interrupted:  # an interrupted run measured nothing: no rows
                record_sweep_rows(Path(cfg.sweep.dir), summary)
        logger.close()
        if interrupted:
            kept = f"checkpoint saved in {run_dir / 'checkpoint'}" if state.step else "nothing trained yet"
            say(world, f"interrupted by {interrupt.signal_name(stop.signum)} at step {state.step}/{cfg.train.steps}; "
                f"{kept}. Rerun the same command to resume from step {state.step}")
        else:
            say(world, f"{state.status}: final val loss {summary['final_val_loss']}, {state.wall_time_s:.0f} s, "
                f"summary in {run_dir / 'summary.json'}")
        distributed.barrier()  # ranks leave together: torchrun stops the others when one exits non-zero
    stop.exit()  # a signal seen: hand it to a launcher's handler if any, then exit 128 + signum
    return summary


@hydra.main(config_path="configs", config_name="train", version_base="1.3")
def main(dcfg: DictConfig) -> dict:
    with one_line_errors(say_error):
        if dcfg.sweep.enabled:
            from lrscale.training.summary import run_sweep_job
            return run_sweep_job(run, dcfg)  # a crash is recorded as a data point and the sweep goes on
        return run(dcfg)


def say_error(msg: str) -> None:
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"[train] {msg}", file=sys.stderr)


if __name__ == "__main__":
    main()
