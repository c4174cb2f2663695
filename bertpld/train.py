"""`bertpld pretrain`: the pre-training loop, one process to many nodes.

`pretrain(cfg, out)` sets up the run directory and runs one explicit loop over optimizer steps:

    stop?        steps / samples / FLOPs / wall-clock budget / target validation loss / signal
    train_step   the PLD gates of the step (from (seed, step), identical on every rank and for
                 every micro-batch); `accum` times next_micro_batch (this rank's share of the
                 global batch); then forward_backward_step per micro-batch, weighted by its part
                 of the global batch's mean loss (skipped blocks run nothing);
                 then the gradient reduction (several ranks: buckets launched while the last
                 micro-step's backward runs, see bertpld.distributed.GradientReducer) and
                 optimizer_step (unscale for fp16, clip, lr schedule, step)
    log          metrics.jsonl + TensorBoard every log_every steps (the only host syncs besides the
                 grad-norm check)
    evaluate     validation loss at full depth with fixed masks every eval_every steps
    checkpoint   every save_every steps, at the end, and on SIGTERM/SIGINT

The units of a step run inside `bertpld.phases.phase` ranges named as in bertpld.phases.PHASES,
so a profiler trace and scripts/profile_step.py show a step under the names used here.
Counters (samples, tokens, FLOPs, wall-clock) are global over ranks and are part of the checkpoint,
so a resumed run continues them; wall-clock counts training only (not evaluation or checkpointing).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import random
import shutil
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from bertpld import __version__, checkpoint, lock, pld
from bertpld import distributed as dist
from bertpld.atomic import atomic_write_json, atomic_write_text
from bertpld.config import (
    PretrainConfig,
    config_differences,
    config_from_dict,
    config_to_dict,
    read_run_config_json,
    save_config,
)
from bertpld.data import unigram
from bertpld.data.reader import PretrainReader, load_manifest
from bertpld.device import (
    DTYPES,
    Precision,
    cpu_bf16_support,
    keep_host_memory,
    resolve_device,
    resolve_precision,
)
from bertpld.errors import BertpldError
from bertpld.flops import peak_flops, step_flops
from bertpld.model import BertForPreTraining, PretrainOutput, token_index
from bertpld.optim import build_optimizer, lr_multiplier
from bertpld.phases import phase

# Fields that may change between a run and its resumption: they decide when to stop, log and save,
# or only how fast things run. Anything else changes the run itself and is refused.
RESUMABLE_CHANGES = ("train.max_steps", "train.max_samples", "train.max_flops", "train.time_budget")
RESUMABLE_CHANGES += ("train.target_val_loss",)
RESUMABLE_CHANGES += ("train.eval_every", "train.save_every", "train.keep_checkpoints", "train.log_every")
# How a step's global batch is cut into micro-batches (like the number of ranks, which is not a
# setting) may change too: every step still trains on the same sequences with the same gates and
# the same loss; only float rounding and each rank's dropout stream differ (README, "Determinism").
RESUMABLE_CHANGES += ("impl.micro_batch_size",)
# impl.* settings that change speed and float rounding only (like the thread count), never the
# training. impl.precision and impl.unpad change the numbers, so they must stay as they were (fp16
# also carries grad-scaler state).
SPEED_ONLY_ON_RESUME = ("impl.device", "impl.compile", "impl.fused_optimizer", "impl.threads")
SPEED_ONLY_ON_RESUME += ("impl.keep_host_memory",)


@dataclass
class Counters:
    """Global (all-rank) progress; saved in every checkpoint."""

    step: int = 0
    samples: int = 0
    tokens: int = 0
    flops: float = 0.0
    wall_s: float = 0.0
    best_val_loss: float = math.inf
    best_val_mlm_loss: float = math.inf  # what train.target_val_loss is compared with


def pretrain(
    cfg: PretrainConfig, out: str | Path, resume: bool = False, overwrite: bool = False
) -> dict[str, Any]:
    """Pre-train according to `cfg`, writing the run directory `out`; returns the summary."""
    out = Path(out)
    device = resolve_device(cfg.impl.device)
    dist.init(device.type)
    try:
        with contextlib.ExitStack() as held:  # the run directory's lock, held by rank 0 until the end
            return _pretrain(cfg, out, device, resume, overwrite, held)
    finally:
        dist.shutdown()


# ---------------------------------------------------------------------------------------------
# The training step, as named units (their names are the profiler's: bertpld.phases)


@dataclass
class Trainer:
    """What the training step works on: built by `build_trainer`, advanced by `train_step`."""

    cfg: PretrainConfig
    device: torch.device
    precision: torch.dtype
    model: BertForPreTraining
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    reducer: dist.GradientReducer
    reader: PretrainReader
    accum: int  # micro-steps per optimizer step on this rank
    total_steps: int  # the length the lr schedule and PLD's gamma rule span (0: open-ended)
    gamma: float | None  # PLD's theta decay rate (None without PLD)
    counters: Counters
    meter: Meter
    skip_on_device: bool  # fused AdamW skips a non-finite step on the GPU itself (no host sync)
    batches: Iterator[dict[str, torch.Tensor]]  # iter(reader), from the reader's restored position


def build_trainer(
    cfg: PretrainConfig,
    device: torch.device,
    precision: torch.dtype,
    reader: PretrainReader,
    total_steps: int,
    ckpt: Path | None = None,
) -> Trainer:
    """Model, optimizer and data stream, initialised identically on every rank (same seed), then
    a per-rank seed for dropout so that ranks do not share dropout masks; restored from `ckpt`."""
    _seed_everything(cfg.train.seed)
    nsp = cfg.data.objective == "mlm+nsp"
    model = BertForPreTraining(cfg.model, nsp=nsp).to(device)
    # torch's fused AdamW: one kernel for all parameters, on CUDA and (since torch 2.4) on the CPU
    fused = cfg.impl.fused_optimizer
    optimizer = build_optimizer(model, cfg.train, fused=fused)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == torch.float16)
    rank, world = dist.rank(), dist.world_size()
    _seed_everything(cfg.train.seed + 1 + rank)
    if cfg.impl.compile:
        _compile_blocks(model)
    reducer = dist.GradientReducer(model.parameters())
    counters = Counters()
    if ckpt is not None:
        counters = _restore(
            ckpt, model, optimizer, scaler, reader, rank, world, cfg.train.seed, cfg.impl.micro_batch_size
        )
    return Trainer(
        cfg=cfg,
        device=device,
        precision=precision,
        model=model,
        optimizer=optimizer,
        scaler=scaler,
        reducer=reducer,
        reader=reader,
        accum=micro_steps_per_step(cfg, world),
        total_steps=total_steps,
        gamma=pld.resolve_gamma(cfg.pld, total_steps) if cfg.pld.enabled else None,
        counters=counters,
        meter=Meter(device, nsp, counters),
        skip_on_device=isinstance(optimizer, torch.optim.AdamW)
        and fused
        and device.type == "cuda"
        and precision != torch.float16,
        batches=iter(reader),
    )


def train_step(tr: Trainer) -> tuple[float, torch.Tensor, str]:
    """One optimizer step on the global batch: this rank's share of it in `accum` micro-steps, the
    gradient reduction, clip and optimizer step.

    The step's loss is the global batch's: the MLM loss summed over every labelled slot of every
    rank's micro-batches, divided by their number (and NSP's over the G sequences), whatever the
    world size and micro-batch. PLD's gates are drawn once per optimizer step, from (seed, step):
    the whole global batch runs the same sub-network (docs/METHOD.md, "Gates per step").

    Returns (theta, grad_norm, failure); a failure (a non-finite gradient seen on the host) means
    the step was not taken and the parameters are those of the last good step."""
    cfg, c = tr.cfg, tr.counters
    tr.model.train()
    with phase("gates"):
        theta, gates, keep = 1.0, None, None
        if cfg.pld.enabled:
            theta = pld.theta(c.step, cfg.pld.theta_bar, tr.gamma)
            gates, keep = pld.layer_gates(
                theta, cfg.model.num_layers, cfg.pld.variant, cfg.train.seed, c.step
            )
        blocks = cfg.model.num_layers if gates is None else sum(gates)
    share = [next_micro_batch(tr) for _ in range(tr.accum)]  # this rank's share of the step
    with phase("bookkeeping"):
        # the step's labelled MLM slots and executed FLOPs over every rank: one host all-reduce
        # (the side group, like the stop agreement; nothing on the GPU)
        local = [
            sum(m.predictions for m in share),
            sum(micro_step_flops(cfg, m, blocks) for m in share),
        ]
        predictions, flops = dist.all_reduce_sum_host(torch.tensor(local, dtype=torch.float64)).tolist()
        predictions = max(predictions, 1.0)
    terms, world = [], dist.world_size()
    for k, m in enumerate(share):
        # this micro-batch's part of the global mean: the reducer averages over ranks, so x world
        mlm_w = m.predictions / predictions
        nsp_w = m.batch["input_ids"].shape[0] / cfg.train.global_batch_size
        outputs = forward_backward_step(
            tr, m.batch, gates, keep, (world * mlm_w, world * nsp_w), last=k == tr.accum - 1
        )
        with phase("bookkeeping"):
            terms.append(loss_terms(outputs, m.batch, (mlm_w, nsp_w)))
    with phase("reduce"):
        tr.reducer.finish()
    with phase("optimizer"):
        grad_norm, failure = optimizer_step(tr)
    if failure:
        # the step did not happen: nothing is counted, and the stream goes back to its start, so
        # that the checkpoint of the last good step resumes with this step's sequences
        tr.reader.batches_read -= tr.accum
        tr.batches = iter(tr.reader)
        return theta, grad_norm, failure
    with phase("bookkeeping"):
        tr.meter.add_step(torch.stack(terms).sum(0), sum(m.tokens for m in share), blocks)
        c.step += 1
        c.samples += cfg.train.global_batch_size
        c.flops += flops
    return theta, grad_norm, ""


class MicroBatch(NamedTuple):
    batch: dict[str, torch.Tensor]  # on the device
    tokens: int  # real tokens
    predictions: int  # labelled MLM slots


def next_micro_batch(tr: Trainer) -> MicroBatch:
    """The next micro-batch of this rank's stream on the device, with its counts (taken on the
    CPU batch: no device sync)."""
    with phase("data"):
        batch = _with_token_index(next(tr.batches), tr.cfg)
        tokens = int(batch["attention_mask"].sum())
        predictions = int((batch["mlm_labels"] != -100).sum())
        on_device = {k: v.to(tr.device, non_blocking=True) for k, v in batch.items()}
        return MicroBatch(on_device, tokens, predictions)


def forward_backward_step(
    tr: Trainer,
    batch: dict[str, torch.Tensor],
    gates: list[bool] | None,
    keep: list[float] | None,
    weights: tuple[float, float],
    last: bool,
) -> PretrainOutput:
    """Forward (its phases are the model's) and backward of one micro-batch, its MLM and NSP losses
    weighted by `weights`; on the last micro-step of several ranks, the reducer learns which
    gradients to expect (it starts reducing them as backward produces them)."""
    with torch.autocast(tr.device.type, dtype=tr.precision, enabled=tr.precision != torch.float32):
        outputs = tr.model(**batch, gates=gates, keep_probs=keep)
    if last and tr.reducer.distributed:
        tr.reducer.expect(tr.model.reached_parameters(gates))
    with phase("backward"):
        loss = weights[0] * outputs.mlm_loss
        if outputs.nsp_loss is not None:
            loss = loss + weights[1] * outputs.nsp_loss
        tr.scaler.scale(loss).backward()
    return outputs


def optimizer_step(tr: Trainer) -> tuple[torch.Tensor, str]:
    """Unscale (fp16), clip, check for a non-finite gradient, set the lr, step, zero the gradients.
    Returns (grad_norm, failure), see `train_step`."""
    cfg, optimizer = tr.cfg, tr.optimizer
    tr.scaler.unscale_(optimizer)
    grad_norm = torch.nn.utils.clip_grad_norm_(
        tr.model.parameters(), cfg.train.grad_clip if cfg.train.grad_clip > 0 else float("inf")
    )
    if tr.precision != torch.float16:  # (fp16: the grad scaler skips such steps by itself)
        bad = ~torch.isfinite(grad_norm)
        if tr.skip_on_device:
            optimizer.found_inf = bad.float()
            tr.meter.nonfinite += bad
        elif bad:  # a host check: free on the CPU; a GPU sync per step without fused AdamW
            optimizer.zero_grad(set_to_none=True)
            step = tr.counters.step
            return grad_norm, f"non-finite gradient at step {step}; the checkpoint holds the last good state"
    for group in optimizer.param_groups:
        group["lr"] = cfg.train.lr * lr_multiplier(tr.counters.step, cfg.train, tr.total_steps)
    tr.scaler.step(optimizer)
    tr.scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm, ""


def micro_step_flops(cfg: PretrainConfig, micro: MicroBatch, blocks: int) -> float:
    """Executed FLOPs of one micro-batch that ran `blocks` blocks. With padding removed, the
    token-wise layers count the real tokens: the padding rows that round their number up
    (impl.unpad_multiple) are left out, so that the count, and a FLOPs budget, do not depend on how
    a step is cut into micro-batches or ranks (they cost time, and show as time per FLOP)."""
    batch = micro.batch
    input_ids = batch["input_ids"]
    return step_flops(
        cfg.model,
        batch_size=input_ids.shape[0],
        seq_len=input_ids.shape[1],
        blocks_executed=blocks,
        mlm_predictions=batch["mlm_positions"].numel(),
        nsp="nsp_labels" in batch,
        tokens=micro.tokens if "token_index" in batch else None,
    )


class Meter:
    """Per-rank sums since the last metrics row, reduced over ranks only when a row is written.

    A row is written at every log, evaluation and checkpoint step, so a checkpoint never holds
    half-counted tokens and a resumed run writes the same rows as an uninterrupted one."""

    def __init__(self, device: torch.device, nsp: bool, c: Counters) -> None:
        self.nsp = nsp
        # LOSS_TERMS of each step's global batch, summed over steps (this rank's parts of them)
        self.loss_sums = torch.zeros(len(LOSS_TERMS), device=device)
        self.nonfinite = torch.zeros((), device=device)  # optimizer steps skipped on the device
        self.steps = self.tokens = self.blocks_sum = 0
        self.last = (c.wall_s, c.tokens, c.flops)  # counters at the last row
        self.train: dict[str, float] = {}  # the latest logged training losses

    def add_step(self, terms: torch.Tensor, tokens: int, blocks: int) -> None:
        """A step taken: this rank's part of its LOSS_TERMS (each micro-batch weighted by its part of
        the global batch's means), its real tokens on this rank, the blocks it ran."""
        self.loss_sums += terms
        self.tokens += tokens
        self.steps += 1
        self.blocks_sum += blocks

    def resume_from(self, row: dict[str, Any]) -> None:
        """The training losses of the last metrics row (a resumed run's summary before its first row)."""
        self.train.update({k: row[k] for k in LOSS_TERMS if k in row})

    def row(
        self, c: Counters, theta: float, lr: float, grad_norm: torch.Tensor | None, peak: float | None
    ) -> dict[str, Any]:
        """The metrics row of step `c.step` (adds this rank's pending tokens to the counters)."""
        counts = torch.tensor([self.tokens], dtype=torch.float64)
        stats = dist.all_reduce_sum_host(torch.cat([self.loss_sums.double().cpu(), counts]))
        c.tokens += int(stats[-1])
        if self.steps:
            terms = LOSS_TERMS if self.nsp else LOSS_TERMS[:2]
            self.train.update({k: float(stats[i] / self.steps) for i, k in enumerate(terms)})
        dt = c.wall_s - self.last[0]
        row = {
            "step": c.step,
            "samples": c.samples,
            "tokens": c.tokens,
            **self.train,
            "lr": lr,
            "theta": theta,
            "blocks_kept": self.blocks_sum / max(self.steps, 1),
            "flops": c.flops,
            "wall_s": c.wall_s,
            "tokens_per_s": (c.tokens - self.last[1]) / dt if dt > 0 else 0.0,
        }
        if grad_norm is not None:
            row["grad_norm"] = float(grad_norm)
        if peak and dt > 0:
            # executed FLOPs since the last row, per second, per GPU, over the GPU's peak
            row["mfu"] = (c.flops - self.last[2]) / dt / (peak * dist.world_size())
        self.loss_sums.zero_()
        self.steps = self.tokens = self.blocks_sum = 0
        self.last = (c.wall_s, c.tokens, c.flops)
        return row


# ---------------------------------------------------------------------------------------------
# The run: set-up, the loop, the end


def _pretrain(
    cfg: PretrainConfig,
    out: Path,
    device: torch.device,
    resume: bool,
    overwrite: bool,
    held: contextlib.ExitStack,
) -> dict[str, Any]:
    rank, world = dist.rank(), dist.world_size()
    # Always set, also to torch's default: MKL then stops choosing its thread count per call
    # (torch.set_num_threads turns MKL's dynamic mode off), which made a resumed run differ from
    # an uninterrupted one in the last digits now and then (README, "Determinism").
    torch.set_num_threads(cfg.impl.threads or torch.get_num_threads())
    host_memory = keep_host_memory() if cfg.impl.keep_host_memory else ""
    manifest = load_manifest(cfg.data.path)
    resolve_vocab(cfg, manifest)
    _fit_micro_batch(cfg, world)
    accum = micro_steps_per_step(cfg, world)
    reader = PretrainReader(
        cfg.data.path,
        cfg.data,
        "train",
        cfg.impl.micro_batch_size,
        cfg.train.seed,
        rank,
        world,
        cfg.train.global_batch_size,
    )
    tokens_per_seq = reader.mean_tokens_per_sequence()
    total_steps = schedule_steps(cfg, tokens_per_seq)
    if cfg.pld.enabled:  # a missing gamma is an error before the run directory changes
        pld.resolve_gamma(cfg.pld, total_steps)
    prec = resolve_precision(cfg.impl.precision, device)

    # Rank 0 owns the run directory (one writer: it holds the directory's lock before it looks
    # at or changes anything); its verdict (or its error) is shared so no rank hangs.
    ckpt, error = None, None
    if dist.is_main():
        try:
            held.enter_context(lock.hold(out, "bertpld pretrain"))
            ckpt = _prepare_run_dir(cfg, out, resume, overwrite, tokens_per_seq, prec, host_memory)
        except BertpldError as e:
            error = str(e)
        except OSError as e:
            error = f"{out}: cannot write the run directory ({e.strerror or e})"
    ckpt, error = dist.broadcast_object((ckpt, error))
    if error:
        raise BertpldError(error)
    dist.barrier()
    if ckpt is not None:
        prec = _resumed_precision(Path(ckpt), cfg, prec, device)

    tr = build_trainer(cfg, device, prec.dtype, reader, total_steps, Path(ckpt) if ckpt else None)
    counters = tr.counters
    saved_step = counters.step if ckpt is not None else -1  # decided in memory: identical on every rank
    writer = _Writer(out, counters.step) if dist.is_main() else None
    if writer is not None and writer.last is not None:
        tr.meter.resume_from(writer.last)  # what the summary says if the run stops at once
    stop = _StopSignal()
    peak = peak_flops(torch.cuda.get_device_name(device), tr.precision) if device.type == "cuda" else None
    if dist.is_main():
        dist.print0(
            f"pretrain: {cfg.model.num_layers} layers x {cfg.model.hidden_size} ({_n_params(tr.model) / 1e6:.1f}M params), "
            f"norm={cfg.model.norm}, pld={'on' if cfg.pld.enabled else 'off'}, {world} rank(s) on {device.type}, "
            f"batch {cfg.train.global_batch_size} = {cfg.impl.micro_batch_size} x {accum} accum x {world}, "
            f"{prec.name} ({prec.reason}), {total_steps or 'open-ended'} scheduled steps"
        )

    reason = ""
    theta = 1.0
    last_val: dict[str, float] = {}  # the latest validation losses
    progress = _Progress(cfg, counters) if dist.is_main() else None
    try:
        while True:
            reason, failed = _stop_reason(cfg, counters, stop, writer.error if writer else "")
            if failed:  # rank 0 could not write: stop everywhere, keep the last checkpoint as it is
                raise BertpldError(reason)
            if reason:
                break

            t0 = time.perf_counter()
            theta, grad_norm, reason = train_step(tr)
            if reason:
                break
            step = counters.step
            evaluate_now = bool(cfg.train.eval_every) and step % cfg.train.eval_every == 0
            save_now = bool(cfg.train.save_every) and step % cfg.train.save_every == 0
            log_now = step % cfg.train.log_every == 0 or evaluate_now or save_now
            if device.type == "cuda" and log_now:
                torch.cuda.synchronize(device)
            counters.wall_s += time.perf_counter() - t0

            row = _log_row(tr, theta, grad_norm, peak) if log_now else None
            if evaluate_now:
                last_val = _evaluate_into(counters, tr.model, cfg, device, tr.precision)
                row.update(last_val)
            if row is not None and writer is not None:
                writer.write(row)
            if progress is not None:
                progress.update(counters, tr.meter.train.get("loss", math.nan), theta, row)
            skipped = (
                int(tr.meter.nonfinite.item()) if log_now and tr.skip_on_device else 0
            )  # syncs with the row's
            if skipped:
                reason = f"{skipped} step(s) with a non-finite gradient were skipped; stopping with the last good state"
                break
            if save_now:
                _save(out, cfg, tr, prec, writer.error if writer else "")
                saved_step = counters.step
    finally:
        if progress is not None:
            progress.close()

    # --- the end: the last row, then its checkpoint (a signal may be followed by a kill; a row
    # without its checkpoint is dropped on resume, a checkpoint never lacks its row), then the
    # final evaluation, which joins the last step's row (one row per step)
    if tr.meter.steps:
        row = _log_row(tr, theta, None, peak)
        if writer is not None:
            writer.write(row)
    if counters.step > 0 and saved_step != counters.step:
        _save(out, cfg, tr, prec, writer.error if writer else "")
    evaluated = cfg.train.eval_every and counters.step % cfg.train.eval_every == 0
    if counters.step > 0 and not (evaluated and last_val):
        last_val = _evaluate_into(counters, tr.model, cfg, device, tr.precision)
        if writer is not None:
            writer.amend_last(_minimal_row(counters), last_val)
    if writer is not None and writer.error:
        raise BertpldError(writer.error)
    summary = _summary(counters, total_steps, tr.meter.train, last_val, reason)
    if writer is not None:
        writer.close()
        try:
            atomic_write_json(out / "summary.json", summary)
        except OSError as e:
            raise BertpldError(_write_failed(out / "summary.json", e)) from None
        dist.print0(
            f"pretrain: stopped ({reason}) after {counters.step} steps, {counters.wall_s:.1f}s; {out}"
        )
    return summary


def _log_row(tr: Trainer, theta: float, grad_norm: torch.Tensor | None, peak: float | None) -> dict[str, Any]:
    return tr.meter.row(tr.counters, theta, tr.optimizer.param_groups[0]["lr"], grad_norm, peak)


def _summary(
    c: Counters, total_steps: int, train: dict[str, float], val: dict[str, float], reason: str
) -> dict[str, Any]:
    return {
        "steps": c.step,
        "samples": c.samples,
        "tokens": c.tokens,
        "flops": c.flops,
        "wall_s": c.wall_s,
        "scheduled_steps": total_steps,
        "final_train_loss": train.get("loss", math.nan),
        **{f"final_train_{k}": v for k, v in train.items() if k != "loss"},
        "final_val_loss": val.get("val_loss", math.nan),
        **{f"final_{k}": v for k, v in val.items() if k != "val_loss"},
        "best_val_loss": c.best_val_loss if math.isfinite(c.best_val_loss) else None,
        "best_val_mlm_loss": c.best_val_mlm_loss if math.isfinite(c.best_val_mlm_loss) else None,
        "stop_reason": reason,
    }


# ---------------------------------------------------------------------------------------------
# Evaluation


# What metrics rows hold per step, in this order: the total loss, the MLM loss and, for NSP, the
# NSP loss and accuracy. `loss` = mlm_loss + nsp_loss, each a mean over its predictions.
LOSS_TERMS = ("loss", "mlm_loss", "nsp_loss", "nsp_acc")


def loss_terms(
    outputs: PretrainOutput, batch: dict[str, torch.Tensor], weights: tuple[float, float]
) -> torch.Tensor:
    """LOSS_TERMS of one micro-batch as a device tensor (zeros for NSP without it), the MLM loss
    times weights[0] and the NSP terms times weights[1]: no host sync."""
    mlm_loss = outputs.mlm_loss.detach().float() * weights[0]
    nsp_loss = nsp_acc = torch.zeros_like(mlm_loss)
    if outputs.nsp_loss is not None:
        nsp_loss = outputs.nsp_loss.detach().float() * weights[1]
        nsp_acc = (outputs.nsp_logits.argmax(-1) == batch["nsp_labels"]).float().mean() * weights[1]
    return torch.stack([mlm_loss + nsp_loss, mlm_loss, nsp_loss, nsp_acc])


@torch.no_grad()
def evaluate(
    model: BertForPreTraining, cfg: PretrainConfig, device: torch.device, precision: torch.dtype
) -> dict[str, float]:
    """Validation losses at full depth with fixed masks over the first train.eval_sequences
    sequences of the validation split, whatever the world size and micro-batch.

    Returns val_mlm_loss (mean over every masked token of those sequences), for NSP also
    val_nsp_loss and val_nsp_acc (mean over sequences), and val_loss = val_mlm_loss +
    val_nsp_loss. Every rank reads the same validation stream and computes every world_size-th
    micro-batch; the sums are reduced, so only float rounding depends on how the work is cut.
    """
    model.eval()
    rank, world = dist.rank(), dist.world_size()
    micro, seed, limit = cfg.impl.micro_batch_size, cfg.train.seed, cfg.train.eval_sequences
    reader = PretrainReader(cfg.data.path, cfg.data, "val", micro, seed, 0, 1, max_sequences=limit)
    # MLM loss sum, MLM predictions, NSP loss sum, NSP correct, sequences
    total = torch.zeros(5, dtype=torch.float64, device=device)
    for i, batch in enumerate(reader):
        if i % world != rank:
            continue
        batch = {k: v.to(device, non_blocking=True) for k, v in _with_token_index(batch, cfg).items()}
        with torch.autocast(device.type, dtype=precision, enabled=precision != torch.float32):
            out = model(**batch)
        predictions = (batch["mlm_labels"] != -100).sum()
        total[0] += out.mlm_loss.double() * predictions
        total[1] += predictions
        sequences = batch["input_ids"].shape[0]
        if out.nsp_loss is not None:
            total[2] += out.nsp_loss.double() * sequences
            total[3] += (out.nsp_logits.argmax(-1) == batch["nsp_labels"]).sum()
        total[4] += sequences
    if dist.is_distributed():
        torch.distributed.all_reduce(total)
    model.train()
    mlm_sum, predictions, nsp_sum, nsp_correct, sequences = total.tolist()
    if sequences == 0:
        raise BertpldError(
            f"{cfg.data.path}: the validation split yields no sequence "
            f"(train.eval_sequences={cfg.train.eval_sequences}; raise prepare.val_fraction?)"
        )
    result = {"val_mlm_loss": mlm_sum / predictions}
    if cfg.data.objective == "mlm+nsp":
        result.update(val_nsp_loss=nsp_sum / sequences, val_nsp_acc=nsp_correct / sequences)
    result["val_loss"] = result["val_mlm_loss"] + result.get("val_nsp_loss", 0.0)
    return result


def _evaluate_into(counters: Counters, model, cfg, device, precision) -> dict[str, float]:
    """evaluate(), keeping the best validation losses in `counters` (the target stop rule reads them)."""
    val = evaluate(model, cfg, device, precision)
    counters.best_val_loss = min(counters.best_val_loss, val["val_loss"])
    counters.best_val_mlm_loss = min(counters.best_val_mlm_loss, val["val_mlm_loss"])
    return val


# ---------------------------------------------------------------------------------------------
# Set-up helpers


def _fit_micro_batch(cfg: PretrainConfig, world: int) -> None:
    """A micro-batch larger than a rank's share of the global batch becomes the share (a run
    started on one rank with micro-batch = global batch continues on more ranks as it is)."""
    share, rest = divmod(cfg.train.global_batch_size, world)
    if not rest and cfg.impl.micro_batch_size > share:
        dist.print0(
            f"pretrain: impl.micro_batch_size {cfg.impl.micro_batch_size} is more than a rank's share of "
            f"the global batch ({cfg.train.global_batch_size} / {world} ranks): using {share}"
        )
        cfg.impl.micro_batch_size = share


def micro_steps_per_step(cfg: PretrainConfig, world: int) -> int:
    per_step = cfg.impl.micro_batch_size * world
    if cfg.train.global_batch_size % per_step:
        raise BertpldError(
            f"train.global_batch_size: {cfg.train.global_batch_size} is not a multiple of "
            f"impl.micro_batch_size x world size = {cfg.impl.micro_batch_size} x {world}"
        )
    return cfg.train.global_batch_size // per_step


def schedule_steps(cfg: PretrainConfig, tokens_per_seq: float | None = None) -> int:
    """Optimizer steps the lr schedule (and the PLD gamma rule) span.

    `tokens_per_seq`, the data's mean real tokens per training sequence, is needed only when a
    FLOPs budget decides the length (see `flops_budget_steps`).
    """
    t = cfg.train
    if t.total_steps:
        return t.total_steps
    if t.max_steps:
        return t.max_steps
    if t.max_samples:
        return math.ceil(t.max_samples / t.global_batch_size)
    if t.max_flops:
        assert tokens_per_seq is not None, "a FLOPs budget needs the data's tokens per sequence"
        return flops_budget_steps(cfg, tokens_per_seq)
    if not (t.time_budget or t.target_val_loss):
        raise BertpldError(
            "train: no stopping rule; give --max-steps, --max-samples, --time-budget or --target-val-loss"
        )
    needs_total = t.schedule in ("linear", "cosine") or (cfg.pld.enabled and cfg.pld.gamma is None)
    needs_total = needs_total or 0 < t.warmup < 1  # a warmup fraction of an unknown total
    if needs_total:
        raise BertpldError(
            "train.total_steps: a wall-clock or target-loss run needs the schedule's length "
            "(--set train.total_steps=N), or schedule exp/constant, warmup in steps and an explicit pld.gamma"
        )
    return 0


def expected_step_flops(cfg: PretrainConfig, blocks: float, tokens_per_seq: float) -> float:
    """Executed FLOPs of one optimizer step (all ranks) running `blocks` blocks on average."""
    G = cfg.train.global_batch_size
    return step_flops(
        cfg.model,
        batch_size=G,
        seq_len=cfg.data.max_seq_len,
        blocks_executed=blocks,
        mlm_predictions=G * cfg.data.predictions_per_seq,
        nsp=cfg.data.objective == "mlm+nsp",
        tokens=G * tokens_per_seq if cfg.impl.unpad else None,
    )


def flops_budget_steps(cfg: PretrainConfig, tokens_per_seq: float) -> int:
    """The fewest optimizer steps T whose expected executed FLOPs reach train.max_flops.

    Without PLD every step costs the same. With PLD, step t runs E(theta(t)) blocks in
    expectation, and theta's decay rate may itself depend on T (gamma = 100 / T), so the sum over
    the T steps is taken in closed form for each candidate T and T is found by bisection (the sum
    grows with T). The run itself stops when the FLOPs it actually executed reach the budget,
    which is within a step or two of T (the gates are random).
    """
    L = cfg.model.num_layers
    full = expected_step_flops(cfg, L, tokens_per_seq)
    budget = cfg.train.max_flops
    if not cfg.pld.enabled:
        return max(1, math.ceil(budget / full))
    none = expected_step_flops(cfg, 0, tokens_per_seq)
    per_block = (full - none) / L
    e0 = pld.expected_blocks(0.0, L, cfg.pld.variant)  # E(theta) = e0 + (L - e0) theta: linear
    bar = cfg.pld.theta_bar

    def total(steps: int) -> float:
        decay = math.exp(-pld.resolve_gamma(cfg.pld, steps))
        theta_sum = steps * bar + (1 - bar) * (1 - decay**steps) / (1 - decay)  # sum of theta(t), t < steps
        blocks = steps * e0 + (L - e0) * theta_sum
        return steps * none + per_block * blocks

    lo, hi = 1, max(1, math.ceil(budget / (none + per_block * min(e0 + (L - e0) * bar, L))))
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (mid + 1, hi) if total(mid) < budget else (lo, mid)
    return lo


def resolve_vocab(cfg: PretrainConfig, manifest: dict[str, Any]) -> None:
    """Set model.vocab_size from the prepared data (0 means "the data's"); a different explicit value is an error."""
    vocab = int(manifest["vocab_size"])
    if cfg.model.vocab_size == 0:
        cfg.model.vocab_size = vocab
    elif cfg.model.vocab_size != vocab:
        raise BertpldError(
            f"model.vocab_size: {cfg.model.vocab_size} does not match the data's tokenizer "
            f"({vocab} in {Path(cfg.data.path) / 'manifest.json'}); leave it 0 to take the data's"
        )


def _prepare_run_dir(
    cfg: PretrainConfig,
    out: Path,
    resume: bool,
    overwrite: bool,
    tokens_per_seq: float,
    prec: Precision,
    host_memory: str,
) -> str | None:
    """Create or check the run directory; return the checkpoint to resume from, if any."""
    saved = out / "config.json"
    if saved.is_file():
        if resume:
            old = read_run_config_json(saved)
            new = json.loads(json.dumps(config_to_dict(cfg)))  # tuples as lists, as saved
            diff = {k: v for k, v in config_differences(old, new).items() if k not in SPEED_ONLY_ON_RESUME}
            refused = {k: v for k, v in diff.items() if k not in RESUMABLE_CHANGES}
            if refused:
                k, (a, b) = next(iter(refused.items()))
                raise BertpldError(
                    f"--resume {out}: {k} was {a!r} in that run, now {b!r}; a resumed run may change only "
                    "when it stops, logs and saves, its micro-batch and world size, "
                    "and impl.device/compile/fused_optimizer/threads/keep_host_memory"
                )
            old_cfg = config_from_dict(PretrainConfig, old)
            old_cfg.model.vocab_size = cfg.model.vocab_size  # as resolved from the same data
            before, after = schedule_steps(old_cfg, tokens_per_seq), schedule_steps(cfg, tokens_per_seq)
            if diff and before != after:
                raise BertpldError(
                    f"--resume {out}: the new stopping rule changes the schedule's length ({before} -> "
                    f"{after} steps), and with it the lr and PLD theta; to extend a run, "
                    f"give it a fixed length with --set train.total_steps={before}"
                )
            ckpt = checkpoint.latest_checkpoint(out)
            save_config(cfg, saved)
            if ckpt is None:
                _truncate_metrics(out, 0)
                return None
            step = int(ckpt.name.split("-")[1])
            _truncate_metrics(out, step)
            (out / "summary.json").unlink(missing_ok=True)
            dist.print0(f"pretrain: resuming {out} from {ckpt.name}")
            return str(ckpt)
        if not overwrite:
            raise BertpldError(
                f"--out {out}: holds a run already; pass --resume to continue it or --overwrite"
            )
        for name in (
            "checkpoints",
            "tb",
            "metrics.jsonl",
            "summary.json",
            "config.json",
            "env.json",
            "data.json",
        ):
            p = out / name
            shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
    elif out.exists() and any(p.name != lock.LOCK for p in out.iterdir()) and not overwrite:
        raise BertpldError(
            f"--out {out}: exists and is not a bertpld run; choose a new directory or --overwrite"
        )
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, saved)
    manifest = load_manifest(cfg.data.path)
    shutil.copyfile(Path(cfg.data.path) / "tokenizer.json", out / "tokenizer.json")
    atomic_write_json(
        out / "data.json",
        {
            "path": str(Path(cfg.data.path).resolve()),
            "fingerprint": manifest.get("fingerprint"),
            "vocab_size": manifest["vocab_size"],
            "tokenizer_sha256": manifest.get("tokenizer_sha256"),
            unigram.MANIFEST_KEY: unigram.val_unigram_ce(cfg.data.path, manifest),
        },
    )
    atomic_write_json(out / "env.json", environment(prec, host_memory))
    return None


def environment(prec: Precision, host_memory: str = "") -> dict[str, Any]:
    """Hardware and software the run used, and the precision it computes in (read by `bertpld report`)."""
    env: dict[str, Any] = {
        "precision": prec.name,
        "precision_reason": prec.reason,
        "host_memory": host_memory or "malloc defaults",
        "cpu_bf16": cpu_bf16_support() or None,
        "bertpld": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "world_size": dist.world_size(),
        "device": "cuda" if torch.cuda.is_available() else "cpu",
    }
    if torch.cuda.is_available():
        env["device_name"] = torch.cuda.get_device_name()
        env["gpu_count"] = torch.cuda.device_count()
        env["cuda"] = torch.version.cuda
    else:
        env["device_name"] = platform.processor() or platform.machine()
    return env


def _truncate_metrics(out: Path, step: int) -> None:
    """Drop metric rows a killed run logged after its last checkpoint (they will be redone)."""
    path = out / "metrics.jsonl"
    if not path.is_file():
        return
    keep = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            if json.loads(line)["step"] <= step:
                keep.append(line)
    atomic_write_text(path, "".join(line + "\n" for line in keep))
    tb = out / "tb"
    if tb.is_dir():  # TensorBoard would show both the dropped and the redone points
        shutil.rmtree(tb)


def _with_token_index(batch: dict[str, torch.Tensor], cfg: PretrainConfig) -> dict[str, torch.Tensor]:
    """Add the real tokens' positions (impl.unpad), computed here on the CPU batch: no device sync."""
    if cfg.impl.unpad:
        batch["token_index"] = token_index(batch["attention_mask"], cfg.impl.unpad_multiple)
    return batch


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _compile_blocks(model: BertForPreTraining, backend: str | Any = "inductor") -> None:
    """torch.compile each encoder block on its own.

    Compiling blocks rather than the whole model keeps PLD's skipping plain Python control flow
    between compiled pieces, so a new gate pattern never triggers a recompilation. The number of
    real tokens changes every batch with impl.unpad: after the first change it becomes a dynamic
    dimension (one more compilation, then none). With or without a PLD scale, training and
    evaluation, and a short last validation batch, a block's code has up to ~7 compiled versions;
    the limit is raised above torch's default of 8 so that none falls back to eager. Errors in a
    backend fall back to eager execution instead of stopping the run.
    """
    import torch._dynamo

    torch._dynamo.config.suppress_errors = True
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 32)
    for block in model.bert.encoder.blocks:
        block.compile(backend=backend)


def _n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _minimal_row(c: Counters) -> dict[str, Any]:
    return {"step": c.step, "samples": c.samples, "tokens": c.tokens, "flops": c.flops, "wall_s": c.wall_s}


def _stop_reason(cfg: PretrainConfig, c: Counters, stop: _StopSignal, failure: str = "") -> tuple[str, bool]:
    """Why to stop before the next step ('' to go on), and whether it is a failure (a write that
    failed on rank 0: then nothing more is written). Every rank gets the same answer."""
    t = cfg.train
    reason = ""
    if failure:
        reason = failure
    elif stop.signal:
        reason = f"signal {stop.signal}"
    elif t.max_steps and c.step >= t.max_steps:
        reason = f"max_steps {t.max_steps} reached"
    elif t.max_samples and c.samples >= t.max_samples:
        reason = f"max_samples {t.max_samples} reached"
    elif t.max_flops and c.flops >= t.max_flops:
        reason = f"max_flops {t.max_flops:.4g} reached"
    elif t.time_budget and c.wall_s >= t.time_budget:
        reason = f"time budget {t.time_budget:g}s reached"
    elif t.target_val_loss and c.best_val_mlm_loss <= t.target_val_loss:
        reason = f"target validation MLM loss {t.target_val_loss:g} reached"
    code = 2.0 if failure else 1.0 if reason else 0.0
    if dist.is_distributed():
        # Ranks must agree, every step: a signal reaches ranks at different moments and clocks
        # differ, so any rank that wants to stop stops everyone (one scalar all-reduce).
        agreed = dist.all_reduce_max(code)
        if agreed > code:
            reason = (
                "rank 0 could not write to the run directory" if agreed == 2 else "stopped by another rank"
            )
        code = agreed
    return reason, code == 2


def _save(out: Path, cfg: PretrainConfig, tr: Trainer, precision: Precision, failure: str = "") -> None:
    """Write a checkpoint (rank 0), unless rank 0's `failure` (a metrics row it could not write)
    says the run must stop first: a checkpoint past a lost row would resume without it."""
    model, optimizer, scaler, reader, counters = tr.model, tr.optimizer, tr.scaler, tr.reader, tr.counters
    dist.check_replicas_equal(model)
    error = failure
    rngs = [checkpoint.rng_state()]
    if dist.is_distributed():
        rngs = [None] * dist.world_size()
        torch.distributed.all_gather_object(rngs, checkpoint.rng_state())
    if dist.is_main() and not error:
        state = {
            "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict(),
            "counters": dict(vars(counters)),
            "rng": rngs,
            "reader": reader.state_dict(),  # a global position: the same on every rank
            "world_size": dist.world_size(),
            "micro_batch_size": cfg.impl.micro_batch_size,
        }
        meta = {k: v for k, v in vars(counters).items() if not k.startswith("best_")}
        meta["precision"] = precision.name
        try:  # written into a temporary directory: a failure leaves the previous checkpoints as they were
            checkpoint.save_checkpoint(out, counters.step, model, state, meta, cfg.train.keep_checkpoints)
        except OSError as e:
            error = _write_failed(checkpoint.checkpoint_dir(out, counters.step), e)
    error = dist.broadcast_object(error)  # every rank learns it (and waits for the write)
    if error:
        raise BertpldError(error)


def _resumed_precision(ckpt: Path, cfg: PretrainConfig, prec: Precision, device: torch.device) -> Precision:
    """A resumed run computes in the precision it started in: 'auto' could resolve differently on
    another machine (or under an older bertpld, which kept CPUs in fp32), and that would change the
    run. Checkpoints older than this record are taken to be what the old 'auto' chose."""
    try:
        saved = json.loads((ckpt / "meta.json").read_text()).get("precision")
    except (OSError, json.JSONDecodeError) as e:
        raise BertpldError(f"{ckpt / 'meta.json'}: unreadable ({e})") from None
    if saved is None and cfg.impl.precision == "auto":
        saved = "bf16" if device.type == "cuda" else "fp32"
    if saved is None or saved == prec.name:
        return prec
    if cfg.impl.precision != "auto":
        raise BertpldError(
            f"--resume: {ckpt} was trained in {saved}, impl.precision now asks for {prec.name}; "
            "a resumed run must keep its precision"
        )
    if saved == "fp16" and device.type != "cuda":
        raise BertpldError(f"--resume: {ckpt} was trained in fp16, which needs a CUDA device")
    return Precision(DTYPES[saved], f"resumed in the precision the run started in ({prec.reason} now)")


def _restore(
    ckpt: Path, model, optimizer, scaler, reader, rank: int, world: int, seed: int, micro: int
) -> Counters:
    """Load everything that shapes the future. On the world size and micro-batch the checkpoint
    was written with, the run continues bit for bit. On others (the global batch is the same)
    every optimizer step still trains on the same sequences with the same masks, PLD gates and
    loss (see `train_step`); what differs is the float rounding of sums cut differently and each
    rank's dropout stream, re-seeded here from (seed, step, rank)."""
    model.load_state_dict(checkpoint.load_model_weights(ckpt))
    state = checkpoint.load_training_state(ckpt)
    optimizer.load_state_dict(state["optimizer"])
    scaler.load_state_dict(state["scaler"])
    saved = state["reader"]
    saved = saved[rank] if isinstance(saved, list) else saved  # a list: before version 2
    reader.load_state_dict(saved)
    counters = Counters(**state["counters"])
    # (checkpoints before the micro-batch was resumable: in the reader's state, or the same)
    saved_micro = state.get("micro_batch_size", saved.get("micro_batch_size", micro))
    if (state["world_size"], saved_micro) == (world, micro):
        checkpoint.set_rng_state(state["rng"][rank])
    else:
        dist.print0(
            f"pretrain: {ckpt.name} was written by {state['world_size']} rank(s) with micro-batches of "
            f"{saved_micro}, continuing on {world} with {micro}"
        )
        _seed_everything(seed * 1_000_003 + counters.step * 1009 + rank)
    return counters


class _StopSignal:
    """SIGTERM/SIGINT ask the loop to checkpoint and stop at the end of the current step."""

    def __init__(self) -> None:
        self.signal = ""
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(ValueError):  # not the main thread (tests)
                signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        if self.signal:  # a second signal: stop now
            raise KeyboardInterrupt
        self.signal = signal.Signals(signum).name


class _Writer:
    """metrics.jsonl (appended, flushed per row) and TensorBoard scalars, rank 0 only.

    A row that cannot be written (a full disk, lost permissions) is not an exception here, where
    the other ranks would wait for rank 0 forever: `error` says what failed, and the loop's stop
    agreement ends the run on every rank before the next step."""

    def __init__(self, out: Path, step: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.path = out / "metrics.jsonl"
        self.error = ""
        self.last: dict[str, Any] | None = None  # the file's last row (a resumed run's included)
        try:
            lines = self.path.read_text().splitlines() if self.path.is_file() else []
            self.file = self.path.open("a")
        except OSError as e:
            raise BertpldError(_write_failed(self.path, e)) from None
        with contextlib.suppress(json.JSONDecodeError):  # (a resumed run's file is truncated to whole rows)
            self.last = json.loads(lines[-1]) if lines else None
        self.tb = SummaryWriter(str(out / "tb"), purge_step=step or None)

    def write(self, row: dict[str, Any]) -> None:
        if self.error:
            return
        try:
            self.file.write(json.dumps(row) + "\n")
            self.file.flush()
        except OSError as e:
            self.error = _write_failed(self.path, e)
            return
        self.last = row
        self._scalars(row)

    def amend_last(self, row: dict[str, Any], extra: dict[str, Any]) -> None:
        """Add `extra` to the last row written if it is `row`'s step (metrics.jsonl keeps one row
        per step; the file is rewritten whole, atomically); else write `row` with `extra`."""
        if self.error:
            return
        step = row["step"]
        if self.last is None or self.last["step"] != step:
            self.write({**row, **extra})
            return
        try:
            self.file.close()
            lines = self.path.read_text().splitlines()
            self.last = {**self.last, **extra}
            lines[-1] = json.dumps(self.last)
            atomic_write_text(self.path, "".join(line + "\n" for line in lines))
            self.file = self.path.open("a")
        except OSError as e:
            self.error = _write_failed(self.path, e)
            return
        self._scalars({"step": step, **extra})

    def _scalars(self, row: dict[str, Any]) -> None:
        for k, v in row.items():
            if k != "step" and isinstance(v, (int, float)):
                self.tb.add_scalar(f"pretrain/{k}", v, row["step"])

    def close(self) -> None:
        with contextlib.suppress(OSError):  # a failed flush was reported already
            self.file.close()
        self.tb.close()


def _write_failed(path: Path, e: OSError) -> str:
    return (
        f"{path}: write failed ({e.strerror or e}); the run stopped, its last checkpoint is intact: "
        "free space or fix permissions, then --resume"
    )


class _Progress:
    """A rich progress bar with ETA on rank 0 (plain lines when not on a terminal)."""

    def __init__(self, cfg: PretrainConfig, c: Counters) -> None:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        t = cfg.train
        if t.max_steps:
            self.total, self.unit = t.max_steps, "step"
        elif t.max_samples:
            self.total, self.unit = t.max_samples, "samples"
        elif t.max_flops:
            self.total, self.unit = t.max_flops, "flops"
        else:
            self.total, self.unit = (t.time_budget or None), "wall_s"
        self.live = sys.stderr.isatty()
        self.bar = Progress(
            TextColumn("[bold]pretrain"),
            BarColumn(),
            TextColumn("{task.completed:.0f}/{task.total:.0f} " + self.unit),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[info]}"),
            disable=not self.live,
        )
        self.task = self.bar.add_task("pretrain", total=self.total, completed=self._done(c), info="")
        self.bar.start()

    def _done(self, c: Counters) -> float:
        return float(getattr(c, "step" if self.unit == "step" else self.unit))

    def update(self, c: Counters, loss: float, theta: float, row: dict[str, Any] | None) -> None:
        info = f"loss {loss:.3f}  theta {theta:.3f}"
        if row and "tokens_per_s" in row:
            info += f"  {row['tokens_per_s']:.0f} tok/s"
        if row and "val_loss" in row:
            info += f"  val {row['val_loss']:.3f}"
        self.bar.update(self.task, completed=self._done(c), info=info)
        if not self.live and row is not None:
            print(f"step {c.step}  {info}", flush=True)

    def close(self) -> None:
        self.bar.stop()
