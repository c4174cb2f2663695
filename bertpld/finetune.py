"""Fine-tune a pre-training run's checkpoint on GLUE tasks (or rt-polarity) and evaluate on dev.

    runs/NAME/finetune/TASK/
        results.json                       config, per-seed metrics, median, wall-clock, FLOPs
        predictions/seed-S/SPLIT.tsv       dev predictions: index, label, prediction
        submission/STEM.tsv                with --predict-test: GLUE-submission-format test predictions
        tb/                                TensorBoard scalars (train loss, lr, dev metrics per epoch)
    runs/NAME/finetune/glue.json, glue.md  with --task all: every task's median and the GLUE average

Fine-tuning always runs every block (no PLD), for 'post' and 'pre' models alike. Everything is
checked (task names, data files, columns, labels, checkpoint, vocabulary) before training starts,
and each task directory appears only once complete.
"""

from __future__ import annotations

import contextlib
import math
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bertpld import lock
from bertpld import metrics as M
from bertpld.atomic import atomic_dir, atomic_write_json, atomic_write_text
from bertpld.checkpoint import find_checkpoint, load_model_weights, load_run_config
from bertpld.config import FinetuneConfig, ModelConfig, PretrainConfig, config_to_dict
from bertpld.data import tokenizer as data_tokenizer
from bertpld.device import Precision, keep_host_memory, resolve_device, resolve_precision
from bertpld.errors import BertpldError
from bertpld.flops import step_flops
from bertpld.glue import AVERAGE_EXCLUDES, PAPER_ORDER, Split, Task, dev_suffix, load_task, resolve_tasks
from bertpld.model import BertForSequenceClassification
from bertpld.optim import param_groups

GRAD_CLIP = 1.0
"""Global gradient-norm clip, as in BERT's original fine-tuning code."""
ADAM_EPS = 1e-6
"""Adam epsilon of BERT's original fine-tuning code."""


def finetune(
    cfg: FinetuneConfig,
    run_dir: str | Path,
    checkpoint: int | None = None,
    predict_test: bool = False,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Fine-tune checkpoint `checkpoint` (latest if None) of `run_dir` on cfg.finetune.task.

    Returns {task name: results dict}; for task 'all' also writes finetune/glue.json and glue.md.
    """
    log = log or _stderr
    ft = cfg.finetune
    run_dir = Path(run_dir)
    tasks = resolve_tasks(ft.task)
    if cfg.impl.threads:
        torch.set_num_threads(cfg.impl.threads)
    if cfg.impl.keep_host_memory:
        keep_host_memory()
    device = resolve_device(cfg.impl.device)
    prec = resolve_precision(cfg.impl.precision, device)
    precision = prec.dtype

    # Everything the user could have got wrong is checked here, before any training or writing.
    ckpt = find_checkpoint(run_dir, checkpoint)
    pcfg = load_run_config(run_dir)
    tokenizer = load_tokenizer(run_dir / "tokenizer.json", pcfg.model)
    # the paper's 128, unless the pre-trained model has fewer positions (the CPU demo has 64)
    ft.max_seq_len = ft.max_seq_len or min(128, pcfg.model.max_position_embeddings)
    if ft.max_seq_len > pcfg.model.max_position_embeddings:
        raise BertpldError(
            f"finetune.max_seq_len: got {ft.max_seq_len}, expected at most the model's "
            f"max_position_embeddings ({pcfg.model.max_position_embeddings})"
        )
    state = load_model_weights(ckpt)
    BertForSequenceClassification(pcfg.model, 2, ft.classifier_dropout).load_pretrained_encoder(state)
    data = {}
    for task in tasks:
        test = predict_test and bool(task.submit)
        if predict_test and not test:
            log(f"{task.name}: no test split (not a GLUE task); --predict-test ignored")
        data[task.name] = load_task(task, ft.data_dir or None, test=test)
        for name, split in data[task.name].items():
            for note in split.notes:
                log(f"{task.name} {name}: {note}")

    source = {
        "run": str(run_dir),
        "checkpoint": str(ckpt),
        "checkpoint_step": int(ckpt.name.removeprefix("step-")),
        "model": config_to_dict(pcfg)["model"],
    }
    log(
        f"finetune: {ckpt} ({pcfg.model.num_layers} layers x {pcfg.model.hidden_size}, norm={pcfg.model.norm}) "
        f"on {device.type} {prec.name} ({prec.reason}), tasks: {', '.join(t.name for t in tasks)}"
    )
    results = {}
    with lock.hold(run_dir / "finetune", "bertpld finetune"), _writes(run_dir / "finetune"):
        for task in tasks:
            results[task.name] = run_task(
                task,
                data[task.name],
                tokenizer,
                pcfg,
                state,
                cfg,
                run_dir / "finetune",
                device,
                precision,
                source,
                log,
            )
        if len(tasks) > 1:
            write_glue_table(results, run_dir / "finetune", source)
    return results


@contextlib.contextmanager
def _writes(directory: Path) -> Iterator[None]:
    """A write that fails (full disk, permissions) is a one-line error. Each task's outputs are
    written into a temporary directory renamed into place, so earlier results stay as they were."""
    try:
        yield
    except OSError as e:
        where = e.filename or directory
        raise BertpldError(
            f"{where}: write failed ({e.strerror or e}); results written before are intact"
        ) from None


# ----------------------------------------------------------------------------------------------
# Tokenization


def load_tokenizer(path: Path, model_cfg: ModelConfig):
    """The run's tokenizer, checked against the checkpoint's vocabulary; padding/truncation off."""
    tok = data_tokenizer.load_tokenizer(path, field="run tokenizer")
    if tok.get_vocab_size() != model_cfg.vocab_size:
        raise BertpldError(
            f"{path}: vocabulary of {tok.get_vocab_size()} tokens differs from the checkpoint's "
            f"model.vocab_size {model_cfg.vocab_size}"
        )
    tok.no_padding()
    tok.no_truncation()
    return tok


@dataclass
class Encoded:
    """Variable-length token ids of one split, stored flat; `labels` None for test splits."""

    ids: np.ndarray
    types: np.ndarray
    offsets: np.ndarray  # (N + 1,)
    labels: np.ndarray | None
    pad_id: int = 0

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def batch(self, idx: np.ndarray, device: torch.device) -> dict[str, torch.Tensor]:
        """Rows `idx`, padded only to the longest of them (dynamic padding)."""
        lens = self.lengths[idx]
        ids = np.full((len(idx), int(lens.max())), self.pad_id, dtype=np.int64)
        types = np.zeros_like(ids)
        for r, i in enumerate(idx):
            a, b = self.offsets[i], self.offsets[i + 1]
            ids[r, : b - a] = self.ids[a:b]
            types[r, : b - a] = self.types[a:b]
        mask = (np.arange(ids.shape[1])[None, :] < lens[:, None]).astype(np.int64)
        out = {"input_ids": ids, "token_type_ids": types, "attention_mask": mask}
        if self.labels is not None:
            out["labels"] = self.labels[idx]
        return {k: torch.from_numpy(v).to(device, non_blocking=True) for k, v in out.items()}


def encode(tokenizer, split: Split, max_seq_len: int) -> Encoded:
    """[CLS] a [SEP] (b [SEP]), truncating the longer side first, as BERT's own processors do.

    Special tokens are added here rather than by the tokenizer's post-processor, so any run's
    tokenizer.json works the same way.
    """
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    a_ids = [e.ids for e in tokenizer.encode_batch(split.text_a, add_special_tokens=False)]
    b_ids = (
        [e.ids for e in tokenizer.encode_batch(split.text_b, add_special_tokens=False)]
        if split.text_b is not None
        else None
    )
    ids, types, offsets = [], [], [0]
    for i, a in enumerate(a_ids):
        if b_ids is None:
            seq = [cls_id, *a[: max_seq_len - 2], sep_id]
            tt = [0] * len(seq)
        else:
            b = b_ids[i]
            na, nb = _truncate_pair(len(a), len(b), max_seq_len - 3)
            seq = [cls_id, *a[:na], sep_id, *b[:nb], sep_id]
            tt = [0] * (na + 2) + [1] * (nb + 1)
        ids.extend(seq)
        types.extend(tt)
        offsets.append(len(ids))
    return Encoded(
        np.asarray(ids, dtype=np.int64),
        np.asarray(types, dtype=np.int64),
        np.asarray(offsets),
        split.labels,
        tokenizer.token_to_id("[PAD]"),
    )


def _truncate_pair(na: int, nb: int, budget: int) -> tuple[int, int]:
    """Lengths after removing tokens one at a time from the longer side until they fit."""
    while na + nb > budget:
        if na > nb:
            na -= 1
        else:
            nb -= 1
    return na, nb


# ----------------------------------------------------------------------------------------------
# One task: every seed, then results


def run_task(
    task: Task,
    splits: dict[str, Split],
    tokenizer,
    pcfg: PretrainConfig,
    state: dict[str, torch.Tensor],
    cfg: FinetuneConfig,
    out_root: Path,
    device: torch.device,
    precision: torch.dtype,
    source: dict[str, Any],
    log: Callable[[str], None],
) -> dict[str, Any]:
    ft = cfg.finetune
    enc = {name: encode(tokenizer, s, ft.max_seq_len) for name, s in splits.items()}
    train = enc["train"]
    if ft.max_train_examples and ft.max_train_examples < len(train):
        train = _subset(train, ft.max_train_examples, ft.seed)
    lr = ft.lr if ft.lr is not None else task.lr
    steps_per_epoch = math.ceil(len(train) / ft.batch_size)
    total_steps = ft.max_steps or max(1, math.ceil(ft.epochs * steps_per_epoch))
    log(
        f"{task.name}: {len(train)} train examples, dev {', '.join(f'{d} {len(enc[d])}' for d in task.dev)}; "
        f"lr {lr:g}, batch {ft.batch_size}, {total_steps} steps, {ft.seeds} seed(s)"
    )
    t0 = time.perf_counter()
    with atomic_dir(out_root / task.name) as tmp:
        from torch.utils.tensorboard import SummaryWriter

        seeds, tests = [], []
        for k in range(ft.seeds):
            seed = ft.seed + k
            tb = SummaryWriter(str(tmp / "tb" / f"seed-{seed}"))
            try:
                r = train_one(
                    task, train, enc, pcfg.model, state, cfg, lr, total_steps, seed, device, precision, tb
                )
            finally:
                tb.close()
            for split_name, pred in r.pop("dev_predictions").items():
                _write_predictions(
                    tmp / "predictions" / f"seed-{seed}" / f"{split_name}.tsv", task, splits[split_name], pred
                )
            tests.append(r.pop("test_predictions"))
            seeds.append(r)
            log(f"{task.name} seed {seed}: " + _fmt(r["metrics"]) + f"  ({r['wall_s']:.0f} s)")
        median = {m: statistics.median(s["metrics"][m] for s in seeds) for m in task.metric_names}
        if tests[0]:
            # the submission comes from the seed whose main metric is the (upper) median
            ranked = sorted(range(len(seeds)), key=lambda i: seeds[i]["metrics"][task.main_metric])
            pick = ranked[len(ranked) // 2]
            for test_split, stem in zip(task.tests, task.submit):
                _write_submission(
                    tmp / "submission" / f"{stem}.tsv", task, splits[test_split], tests[pick][test_split]
                )
        results = {
            "task": task.name,
            "config": {
                **config_to_dict(cfg),
                "resolved": {
                    "lr": lr,
                    "total_steps": total_steps,
                    "train_examples": len(train),
                    "precision": Precision(precision, "").name,
                },
                "pretrained": source,
            },
            "metric_names": task.metric_names,
            "main_metric": task.main_metric,
            "data": {
                name: {"source": s.source, "examples": len(s), "skipped_malformed": s.skipped}
                for name, s in splits.items()
            },
            "seeds": seeds,
            "median": median,
            "wall_s": time.perf_counter() - t0,
            "flops": sum(s["flops"] for s in seeds),
        }
        atomic_write_json(tmp / "results.json", results)
    log(
        f"{task.name}: median over {len(seeds)} seed(s): {_fmt(median)} -> {out_root / task.name / 'results.json'}"
    )
    return results


def train_one(
    task: Task,
    train: Encoded,
    enc: dict[str, Encoded],
    model_cfg: ModelConfig,
    state: dict[str, torch.Tensor],
    cfg: FinetuneConfig,
    lr: float,
    total_steps: int,
    seed: int,
    device: torch.device,
    precision: torch.dtype,
    tb=None,
) -> dict[str, Any]:
    """One fine-tuning run; returns seed, final dev metrics, predictions, wall-clock and FLOPs."""
    ft = cfg.finetune
    t0 = time.perf_counter()
    torch.manual_seed(seed)  # classifier initialisation and dropout
    model = BertForSequenceClassification(model_cfg, task.num_labels, ft.classifier_dropout)
    model.load_pretrained_encoder(state)
    model.to(device)
    fused = cfg.impl.fused_optimizer  # CUDA and CPU
    optimizer = torch.optim.AdamW(
        param_groups(model, ft.weight_decay), lr=lr, betas=(0.9, 0.999), eps=ADAM_EPS, fused=fused or None
    )
    warmup = int(round(ft.warmup * total_steps))

    def lr_factor(step: int) -> float:  # linear warmup, then linear decay to 0 at total_steps
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == torch.float16)
    order = torch.Generator().manual_seed(seed)  # data order: a function of the seed only
    steps_per_epoch = math.ceil(len(train) / ft.batch_size)
    train_flops = eval_flops = 0.0
    progress = _Progress(f"{task.name} seed {seed}", total_steps)
    step, dev_metrics = 0, {}
    loss_sum, loss_n = torch.zeros((), device=device), 0
    try:
        while step < total_steps:
            perm = torch.randperm(len(train), generator=order).numpy()
            for start in range(0, len(train), ft.batch_size):
                idx = perm[start : start + ft.batch_size]
                batch = train.batch(idx, device)
                model.train()
                with torch.autocast(device.type, dtype=precision, enabled=precision != torch.float32):
                    loss, _ = model(**batch)
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                scheduler.step()
                step += 1
                train_flops += step_flops(
                    model_cfg, len(idx), batch["input_ids"].shape[1], model_cfg.num_layers, 0, False,
                    head="classifier", num_labels=task.num_labels,
                )  # fmt: skip
                loss_sum += loss.detach()
                loss_n += 1
                if step % 20 == 0 or step == total_steps:
                    avg = (loss_sum / loss_n).item()  # one device sync per logging interval
                    loss_sum.zero_()
                    loss_n = 0
                    if tb is not None:
                        tb.add_scalar("train/loss", avg, step)
                        tb.add_scalar("train/lr", scheduler.get_last_lr()[0], step)
                    progress.update(step, f"loss {avg:.4f}")
                end_of_epoch = start + ft.batch_size >= len(train)
                if end_of_epoch or step == total_steps:
                    # dev metrics after every epoch for the curves; the reported ones are the last
                    dev_metrics, dev_preds, flops = evaluate(
                        task, model, enc, task.dev, device, precision, ft
                    )
                    eval_flops += flops
                    if tb is not None:
                        for name, v in dev_metrics.items():
                            tb.add_scalar(f"dev/{name}", v, step)
                    progress.update(step, _fmt(dev_metrics), line=True)
                if step == total_steps:
                    break
        test_preds = {}
        tests = [s for s in task.tests if s in enc]
        if tests:
            _, test_preds, flops = evaluate(task, model, enc, tests, device, precision, ft)
            eval_flops += flops
    finally:
        progress.close()
    return {
        "seed": seed,
        "metrics": dev_metrics,
        "steps": step,
        "epochs": step / steps_per_epoch,
        "wall_s": time.perf_counter() - t0,
        "flops": train_flops + eval_flops,
        "train_flops": train_flops,
        "eval_flops": eval_flops,
        "dev_predictions": dev_preds,
        "test_predictions": test_preds,
    }


@torch.no_grad()
def evaluate(
    task: Task,
    model: BertForSequenceClassification,
    enc: dict[str, Encoded],
    split_names: list[str] | tuple[str, ...],
    device: torch.device,
    precision: torch.dtype,
    ft,
) -> tuple[dict[str, float], dict[str, np.ndarray], float]:
    """(metrics over the labelled splits, predictions per split, forward FLOPs)."""
    model.eval()
    out_metrics, preds, flops = {}, {}, 0.0
    for name in split_names:
        data = enc[name]
        # batches of similar length waste little on padding; predictions go back to file order
        order = np.argsort(data.lengths, kind="stable")
        pieces = []
        for start in range(0, len(data), ft.eval_batch_size):
            idx = order[start : start + ft.eval_batch_size]
            batch = data.batch(idx, device)
            batch.pop("labels", None)
            with torch.autocast(device.type, dtype=precision, enabled=precision != torch.float32):
                _, logits = model(**batch)
            pieces.append(logits.float())
            flops += step_flops(
                model.cfg, len(idx), batch["input_ids"].shape[1], model.cfg.num_layers, 0, False,
                head="classifier", num_labels=task.num_labels, backward=False,
            )  # fmt: skip
        logits = torch.cat(pieces).cpu().numpy()  # one device-to-host copy per split
        pred = np.empty(len(data), dtype=np.float32 if task.is_regression else np.int64)
        pred[order] = logits[:, 0] if task.is_regression else logits.argmax(-1)
        preds[name] = pred
        if data.labels is not None:
            for m, v in M.compute(task.metrics, pred, data.labels).items():
                out_metrics[f"{m}{dev_suffix(name)}"] = v
    model.train()
    return out_metrics, preds, flops


# ----------------------------------------------------------------------------------------------
# Outputs


def _label_text(task: Task, value) -> str:
    return f"{float(value):.4f}" if task.is_regression else task.labels[int(value)]


def _write_predictions(path: Path, task: Task, split: Split, pred: np.ndarray) -> None:
    lines = ["index\tlabel\tprediction"]
    lines += [
        f"{i}\t{_label_text(task, y)}\t{_label_text(task, p)}"
        for i, y, p in zip(split.index, split.labels, pred)
    ]
    atomic_write_text(path, "\n".join(lines) + "\n")


def _write_submission(path: Path, task: Task, split: Split, pred: np.ndarray) -> None:
    """GLUE server format: `index<TAB>prediction`; ids where the GLUE files use ids, else names."""
    to_raw = {task.labels.index(name): raw for raw, name in task.tsv_raw}
    if task.is_regression:
        values = [f"{min(max(float(p), 0.0), 5.0):.3f}" for p in pred]
    else:
        values = [to_raw.get(int(p), task.labels[int(p)]) for p in pred]
    lines = ["index\tprediction"] + [f"{i}\t{v}" for i, v in zip(split.index, values)]
    atomic_write_text(path, "\n".join(lines) + "\n")


def task_score(median: dict[str, float]) -> float:
    """One number per task: the mean of its metrics (GLUE's rule for tasks with two), in %."""
    return 100.0 * sum(median.values()) / len(median)


def write_glue_table(
    results: dict[str, dict[str, Any]], out_root: Path, source: dict[str, Any]
) -> dict[str, Any]:
    """finetune/glue.json and glue.md: every task's median metrics and the average."""
    names = [n for n in PAPER_ORDER if n in results] + [n for n in results if n not in PAPER_ORDER]
    scores = {n: task_score(results[n]["median"]) for n in names}
    averaged = [n for n in names if n not in AVERAGE_EXCLUDES]
    average = sum(scores[n] for n in averaged) / len(averaged) if averaged else float("nan")
    glue = {
        "pretrained": source,
        "tasks": {n: {"median": results[n]["median"], "score": scores[n]} for n in names},
        "average": average,
        "average_over": averaged,
        "seeds": {n: len(results[n]["seeds"]) for n in names},
        "wall_s": sum(results[n]["wall_s"] for n in names),
        "flops": sum(results[n]["flops"] for n in names),
    }
    header = [*(f"{n.upper()} {'/'.join(results[n]['metric_names'])}" for n in names), "Avg"]
    cells = [
        "/".join(f"{100 * results[n]['median'][m]:.1f}" for m in results[n]["metric_names"]) for n in names
    ]
    md = [
        f"GLUE dev, median of {max(glue['seeds'].values())} seed(s), from {source['checkpoint']}",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        "| " + " | ".join([*cells, f"{average:.1f}"]) + " |",
        "",
        f"Average: mean over {', '.join(averaged)} of each task's metrics averaged (x100).",
    ]
    atomic_write_json(out_root / "glue.json", glue)
    atomic_write_text(out_root / "glue.md", "\n".join(md) + "\n")
    return glue


# ----------------------------------------------------------------------------------------------
# Helpers


def _subset(data: Encoded, n: int, seed: int) -> Encoded:
    keep = np.sort(np.random.default_rng(seed).permutation(len(data))[:n])
    lens = data.lengths[keep]
    ids = np.concatenate([data.ids[data.offsets[i] : data.offsets[i + 1]] for i in keep])
    types = np.concatenate([data.types[data.offsets[i] : data.offsets[i + 1]] for i in keep])
    labels = data.labels[keep] if data.labels is not None else None
    return Encoded(ids, types, np.r_[0, np.cumsum(lens)], labels, data.pad_id)


def _fmt(values: dict[str, float]) -> str:
    return "  ".join(f"{k} {v:.4f}" for k, v in values.items())


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class _Progress:
    """A rich progress bar on a terminal; plain lines (evaluations only) otherwise."""

    def __init__(self, label: str, total: int) -> None:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.label = label
        self.live = sys.stderr.isatty()
        self.bar = Progress(
            TextColumn(f"[bold]{label}"),
            BarColumn(),
            TextColumn("{task.completed:.0f}/{task.total:.0f} steps"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[info]}"),
            disable=not self.live,
        )
        self.task = self.bar.add_task(label, total=total, info="")
        self.bar.start()

    def update(self, step: int, info: str, line: bool = False) -> None:
        self.bar.update(self.task, completed=step, info=info)
        if line and self.live:
            self.bar.console.print(f"{self.label} step {step}: {info}")
        elif line:
            print(f"{self.label} step {step}: {info}", file=sys.stderr, flush=True)

    def close(self) -> None:
        self.bar.stop()
