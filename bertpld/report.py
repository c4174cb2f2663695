"""`bertpld report`: what PLD saved and what it cost, from what the runs wrote.

Reads only the files of the run directory contract (docs/DESIGN.md "Run directory"): config.json,
env.json, data.json, metrics.jsonl, summary.json and finetune/TASK/results.json. The run kind
follows from the config: Post-LN = the baseline, Pre-LN without PLD, Pre-LN with PLD.

All numbers are computed here once, into one JSON-able dict (report.json); report.md and
report.html are two renderings of it (bertpld/report_render.py), so they cannot disagree.

Rules worth knowing (also stated in the report):
- Ratios (samples, tokens, FLOPs, wall-clock) are run / the baseline arm's mean, from summary.json,
  or from the last metrics row of an incomplete run.
- Time-to-target: the first point where a run's validation loss reaches the baseline arm's mean
  final validation loss, linearly interpolated between the two evaluation rows around the crossing.
  Speed-up = the baseline arm's own cost to reach it (FLOPs or wall-clock; per seed its first
  crossing, or its whole run where it never crossed; then the mean) / the run's value at that point.
- GLUE: per metric, the median over seeds; per task, the mean of its metrics (GLUE's rule for
  multi-metric tasks: MRPC and QQP (F1+Acc)/2, STS-B (Pearson+Spearman)/2, MNLI (m+mm)/2); the
  average is the mean of task scores over the tasks every fine-tuned run has.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bertpld import __version__
from bertpld.atomic import atomic_write_bytes, atomic_write_json, atomic_write_text
from bertpld.config import config_differences
from bertpld.data import unigram
from bertpld.data.reader import load_manifest
from bertpld.errors import BertpldError
from bertpld.glue import AVERAGE_EXCLUDES, PAPER_ORDER
from bertpld.json_numbers import finite_number
from bertpld.report_render import (
    fmt_difference,
    fmt_loss,
    fmt_pct,
    fmt_ratio,
    fmt_stat,
    render_html,
    render_markdown,
    task_key,
)

KIND_LABELS = {
    "post": "Post-LN baseline",
    "pre": "Pre-LN (no PLD)",
    "pld": "PLD",
    "unknown": "unknown (no config.json)",
}

METRIC_ORDER = ["f1", "acc", "pearson", "spearman", "mcc", "acc_m", "acc_mm"]
GLUE_RULE = (
    "Per metric: median over fine-tuning seeds. Per task: the mean of its metrics, as GLUE scores "
    "multi-metric tasks (MRPC, QQP: (F1+Acc)/2; STS-B: (Pearson+Spearman)/2; MNLI: (m+mm)/2). "
    "Average: mean of the task scores over the tasks that every fine-tuned run has (WNLI excluded, "
    "as in BERT and the paper). "
    "Metrics are shown x100."
)

# docs/METHOD.md section 5 (Zhang & He, NeurIPS 2020): BERT-base, Wikipedia + BookCorpus.
PAPER: dict[str, Any] = {
    "source": "Zhang & He 2020, Progressive Layer Dropping (docs/METHOD.md section 5)",
    "setup": "BERT-base, Wikipedia + BookCorpus, batch 4096, seq 128, fp16, 64x V100 32GB, 200k steps",
    "flops_ratio": 0.75,
    "wall_hours": {"baseline": 38.45, "pld": 29.22},
    "wall_ratio": 29.22 / 38.45,
    "speedup_to_similar_accuracy": 2.5,
    "glue": {
        "BERT-base (their baseline)": {
            "rte": {"acc": 67.8},
            "mrpc": {"f1": 88.0, "acc": 86.0},
            "stsb": {"pearson": 89.5, "spearman": 89.2},
            "cola": {"mcc": 52.5},
            "sst2": {"acc": 91.2},
            "qnli": {"acc": 87.1},
            "qqp": {"f1": 89.0, "acc": 90.6},
            "mnli": {"acc_m": 82.5, "acc_mm": 83.4},
        },
        "PLD": {
            "rte": {"acc": 69.3},
            "mrpc": {"f1": 86.6, "acc": 84.3},
            "stsb": {"pearson": 90.0, "spearman": 89.6},
            "cola": {"mcc": 55.8},
            "sst2": {"acc": 91.6},
            "qnli": {"acc": 90.7},
            "qqp": {"f1": 89.6, "acc": 91.2},
            "mnli": {"acc_m": 84.1, "acc_mm": 83.8},
        },
    },
}


# ----------------------------------------------------------------------------------------------
# Reading run directories


@dataclass
class Run:
    """What one run directory holds, as read (missing files are None / empty, with a warning)."""

    path: Path
    name: str
    config: dict[str, Any] | None
    env: dict[str, Any]
    data: dict[str, Any] | None
    rows: list[dict[str, Any]]
    summary: dict[str, Any] | None
    finetune: dict[str, dict[str, Any]]
    warnings: list[str] = field(default_factory=list)
    unigram: float | None = None
    """The data's unigram line (bertpld.data.unigram): the MLM loss of a model that ignores context."""

    @property
    def kind(self) -> str:
        return run_kind(self.config) if self.config is not None else "unknown"

    @property
    def complete(self) -> bool:
        return self.summary is not None

    @property
    def mlm_key(self) -> str | None:
        """The metrics key of the validation MLM loss: `val_mlm_loss`; for an MLM-only run written
        before losses were logged apart, `val_loss` (the same number); None for an older MLM+NSP run."""
        if any("val_mlm_loss" in r for r in self.rows):
            return "val_mlm_loss"
        objective = ((self.config or {}).get("data") or {}).get("objective")
        return "val_loss" if objective == "mlm" else None

    def evals(self, key: str = "val_loss") -> list[dict[str, Any]]:
        """The metrics rows that hold `key` (evaluation steps)."""
        return [r for r in self.rows if finite_number(r.get(key)) is not None]

    def final(self, key: str) -> float | None:
        """The final value of a validation metric: summary.json's final_KEY, else its last row."""
        if self.summary is not None and finite_number(self.summary.get(f"final_{key}")) is not None:
            return float(self.summary[f"final_{key}"])
        ev = self.evals(key)
        return float(ev[-1][key]) if ev else None

    def total(self, key: str) -> float | None:
        """A run total from summary.json, else (incomplete run) from its last metrics row."""
        if self.summary is not None and finite_number(self.summary.get(key)) is not None:
            return float(self.summary[key])
        for r in reversed(self.rows):
            if finite_number(r.get(key)) is not None:
                return float(r[key])
        return None

    @property
    def final_train_loss(self) -> float | None:
        if self.summary is not None and finite_number(self.summary.get("final_train_loss")) is not None:
            return float(self.summary["final_train_loss"])
        return next(
            (float(r["loss"]) for r in reversed(self.rows) if finite_number(r.get("loss")) is not None), None
        )

    @property
    def final_val_loss(self) -> float | None:
        return self.final("val_loss")


def run_kind(config: dict[str, Any]) -> str:
    """'post', 'pre' or 'pld' from a resolved PretrainConfig dict."""
    norm = (config.get("model") or {}).get("norm", "post")
    pld = bool((config.get("pld") or {}).get("enabled", False))
    if pld:
        return "pld"
    return "pre" if norm == "pre" else "post"


def load_run(path: str | Path) -> Run:
    """Read a run directory; raise BertpldError if `path` is not one at all."""
    p = Path(path)
    if not p.is_dir():
        raise BertpldError(f"{p}: not a directory (expected a run directory written by `bertpld pretrain`)")
    if not (p / "config.json").is_file() and not (p / "metrics.jsonl").is_file():
        raise BertpldError(f"{p}: not a run directory (it has neither config.json nor metrics.jsonl)")
    warnings: list[str] = []
    name = p.resolve().name
    config = _read_json(p / "config.json", warnings, name, objects=("model", "data", "train", "pld", "impl"))
    env = _read_json(p / "env.json", warnings, name) or {}
    data = _read_json(p / "data.json", warnings, name)
    rows = _read_metrics(p / "metrics.jsonl", warnings, name)
    summary = None
    if (p / "summary.json").is_file():
        summary = _read_json(p / "summary.json", warnings, name)
    else:
        warnings.append(
            f"{name}: incomplete (no summary.json: still running or stopped early); "
            "using its last metrics row"
        )
    finetune: dict[str, dict[str, Any]] = {}
    for f in sorted((p / "finetune").glob("*/results.json")):
        res = _read_json(f, warnings, name, objects=("median",), records=("seeds",))
        if res is not None:
            finetune[str(res.get("task") or f.parent.name)] = res
    return Run(p, name, config, env, data, rows, summary, finetune, warnings, _unigram(data, warnings, name))


def _unigram(data: dict[str, Any] | None, warnings: list[str], name: str) -> float | None:
    """The unigram line from data.json, or (runs written before it was recorded) from the data."""
    if data is None:
        return None
    value = finite_number(data.get(unigram.MANIFEST_KEY))
    if value is not None:
        return value
    path = data.get("path")
    try:
        return unigram.val_unigram_ce(path, load_manifest(path))
    except (BertpldError, OSError, KeyError, TypeError, ValueError) as e:
        warnings.append(f"{name}: unigram line unknown (data.json has none, and {path} gives none: {e})")
        return None


def _read_json(
    path: Path, warnings: list[str], name: str, objects: tuple[str, ...] = (), records: tuple[str, ...] = ()
) -> dict[str, Any] | None:
    """The JSON object in `path`, or None with a warning. Keys in `objects` must hold objects,
    keys in `records` lists of objects, where present."""
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        warnings.append(f"{name}: {path.name} is missing")
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        warnings.append(f"{name}: {path} is unreadable ({e}); ignored")
        return None
    if not isinstance(obj, dict):
        warnings.append(f"{name}: {path} is not a JSON object; ignored")
        return None
    bad = [k for k in objects if k in obj and not isinstance(obj[k], dict)]
    bad += [k for k in records if k in obj and not all(isinstance(x, dict) for x in _list(obj[k]))]
    if bad:
        warnings.append(f"{name}: {path}: '{bad[0]}' does not have the shape bertpld writes; ignored")
        return None
    return obj


def _list(v: Any) -> list:
    return v if isinstance(v, list) else [None]


def _read_metrics(path: Path, warnings: list[str], name: str) -> list[dict[str, Any]]:
    """metrics.jsonl rows in step order.

    Rows logged at the same step (a training row and an evaluation row) are merged, later keys
    winning. A step lower than the previous one means the run resumed from a checkpoint and logged
    those steps again: the rows after the checkpoint from the interrupted attempt are dropped.
    """
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        warnings.append(f"{name}: metrics.jsonl is missing (no curves, no time-to-target)")
        return []
    rows: list[dict[str, Any]] = []
    bad = 0
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        if not isinstance(row, dict) or finite_number(row.get("step")) is None:
            if i == len(lines) - 1:
                warnings.append(f"{name}: last line of metrics.jsonl is incomplete (run still writing?)")
            else:
                bad += 1
            continue
        while rows and rows[-1]["step"] > row["step"]:
            rows.pop()
        if rows and rows[-1]["step"] == row["step"]:
            rows[-1] = {**rows[-1], **row}
        else:
            rows.append(row)
    if bad:
        warnings.append(f"{name}: {bad} malformed line(s) in metrics.jsonl skipped")
    if not rows:
        warnings.append(f"{name}: metrics.jsonl has no rows")
    return rows


# ----------------------------------------------------------------------------------------------
# The numbers


def time_to_target(
    evals: list[dict[str, Any]], target: float, key: str = "val_loss"
) -> dict[str, Any] | None:
    """Where validation loss `key` first reached `target` (<=), interpolated linearly between evaluations.

    Returns {step, samples, tokens, flops, wall_s, at_first_eval} or None when it never did.
    At the first evaluation there is no earlier point to interpolate from: its values are used.
    """
    prev = None
    for r in evals:
        v = finite_number(r.get(key))
        if v is None:
            continue
        if v <= target:
            keys = ("step", "samples", "tokens", "flops", "wall_s")
            if prev is None:
                out = {k: finite_number(r.get(k)) for k in keys}
                return {**out, "at_first_eval": True}
            pv = float(prev[key])
            frac = (pv - target) / (pv - v)  # pv > target >= v, so 0 < frac <= 1
            out = {}
            for k in keys:
                a, b = finite_number(prev.get(k)), finite_number(r.get(k))
                out[k] = None if a is None or b is None else a + frac * (b - a)
            return {**out, "at_first_eval": False}
        prev = r
    return None


def glue_scores(result: dict[str, Any]) -> dict[str, Any]:
    """One finetune results.json -> medians over seeds (x100), the task score, seed count and spread."""
    names = result.get("metric_names")
    seeds = result.get("seeds") or []
    if not names:
        names = list(result.get("median") or (seeds[0].get("metrics", {}) if seeds else {}))
    names = sorted(names, key=lambda n: (METRIC_ORDER.index(n) if n in METRIC_ORDER else 99, n))
    medians: dict[str, float | None] = {}
    per_seed: dict[str, list[float]] = {}
    for n in names:
        vals = [finite_number((s.get("metrics") or {}).get(n)) for s in seeds]
        vals = [v for v in vals if v is not None]
        per_seed[n] = vals
        if vals:
            medians[n] = statistics.median(vals)
        else:  # no per-seed values: trust the file's own median
            medians[n] = finite_number((result.get("median") or {}).get(n))
    scale = 100.0  # bertpld.metrics returns fractions; the report shows percent
    medians = {n: (None if v is None else v * scale) for n, v in medians.items()}
    good = [v for v in medians.values() if v is not None]
    main = result.get("main_metric")
    main_vals = [v * scale for v in per_seed.get(main, [])] if main else []
    return {
        "metrics": medians,
        "score": sum(good) / len(good) if good and len(good) == len(medians) else None,
        "seeds": len(seeds),
        "main_metric": main,
        "main_min": min(main_vals) if main_vals else None,
        "main_max": max(main_vals) if main_vals else None,
        "wall_s": finite_number(result.get("wall_s")),
        "flops": finite_number(result.get("flops")),
    }


def _task_sort(task: str) -> tuple[int, str]:
    k = task_key(task)
    # GLUE in the paper's column order; other tasks (e.g. rt-polarity) follow in name order.
    return (PAPER_ORDER.index(k) if k in PAPER_ORDER else len(PAPER_ORDER), k)


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def choose_baseline(runs: list[Run], baseline: Run | None) -> tuple[Run | None, list[str]]:
    """The explicit baseline, else the (first) Post-LN run; warnings say what was chosen and why."""
    if baseline is not None:
        notes = []
        if baseline.kind != "post":
            notes.append(
                f"baseline {baseline.name} is a {KIND_LABELS[baseline.kind]} run, not Post-LN (chosen by --baseline)"
            )
        return baseline, notes
    post = [r for r in runs if r.kind == "post"]
    if not post:
        return None, [
            "no baseline: none of the runs is a Post-LN run and --baseline was not given; "
            "ratios and time-to-target are left out (pass --baseline RUN to compare against one)"
        ]
    notes = []
    if len(post) > 1:
        others = ", ".join(r.name for r in post[1:])
        if len({_arm_key(r) for r in post}) > 1:  # (seeds of one arm are the baseline arm together)
            notes.append(f"several Post-LN runs: {post[0].name} is the baseline ({others} compared to it)")
    return post[0], notes


def _data_warnings(runs: list[Run]) -> list[str]:
    """Runs on different data or tokenizers are not comparable: say so loudly."""
    out = []
    for key, what in (
        ("fingerprint", "data"),
        ("tokenizer_sha256", "tokenizer"),
        ("vocab_size", "vocabulary"),
    ):
        seen: dict[Any, list[str]] = {}
        for r in runs:
            if r.data is not None and r.data.get(key) is not None:
                seen.setdefault(r.data[key], []).append(r.name)
        if len(seen) > 1:
            groups = "; ".join(f"{', '.join(names)}: {str(v)[:12]}" for v, names in seen.items())
            out.append(
                f"DIFFERENT {what.upper()}: runs used different {what} ({key}: {groups}); "
                "losses and time-to-target are NOT comparable across these groups"
            )
    unknown = [r.name for r in runs if r.data is None]
    if unknown and len(runs) > 1:
        out.append(
            f"data identity unknown for {', '.join(unknown)} (no data.json): comparability not checked"
        )
    return out


def _hardware_warnings(runs: list[Run]) -> list[str]:
    """Wall-clock ratios mean little between runs on different hardware, thread counts or precision."""
    out = []
    for keys, what in (
        (("device_name", "gpu_count", "world_size"), "hardware"),
        (("torch_threads",), "CPU thread counts"),
        (("precision",), "precision"),
    ):
        for key in keys:
            vals = {json.dumps(r.env.get(key)) for r in runs if key in r.env}
            if len(vals) > 1:
                out.append(
                    f"runs ran on different {what} ({key} differs): wall-clock ratios mix in the {what}"
                )
                break
    return out


# Near the unigram line a run has learned word frequencies, not language (bertpld.data.unigram).
UNIGRAM_MARGIN = 0.2
# Config fields that do not change what a run computes: runs that differ only in these (and in
# the seed) are seeds of one arm.
_NOT_ARM = ("train.seed", "train.eval_every", "train.save_every", "train.keep_checkpoints", "train.log_every")


def _loss_metric(runs: list[Run]) -> tuple[dict[str, str], str, list[str]]:
    """Which validation loss the runs are compared on: the MLM loss when every run logged it,
    else (runs written before the losses were logged apart) the total, with a warning."""
    old = [r.name for r in runs if r.mlm_key is None and r.evals("val_loss")]
    if not old:
        return {r.name: r.mlm_key or "val_mlm_loss" for r in runs}, "validation MLM loss", []
    note = (
        f"{', '.join(old)} predate(s) separate MLM and NSP losses: every run is compared on the total "
        "validation loss (MLM + NSP), where NSP at chance adds noise; rerun for the MLM loss"
    )
    return {r.name: "val_loss" for r in runs}, "validation loss (MLM + NSP)", [note]


def _arm_key(run: Run) -> str:
    """Runs with equal keys are seeds of one arm: the same config up to seed, logging and impl."""
    if run.config is None:
        return f"unknown:{run.name}"
    flat = {
        k: v
        for k, v in config_differences({}, run.config).items()
        if k not in _NOT_ARM and not k.startswith("impl.") and k != "data.path"
    }
    return json.dumps({k: v[1] for k, v in sorted(flat.items())}, default=str)


def _arm_name(names: list[str]) -> str:
    """'postln-s1', 'postln-s2' -> 'postln': the common prefix without its separator."""
    if len(names) == 1:
        return names[0]
    prefix = names[0]
    for n in names[1:]:
        while not n.startswith(prefix):
            prefix = prefix[:-1]
    prefix = prefix.rstrip("-_./ ")
    while prefix and prefix[-1].isalpha() and len(prefix) > 1 and prefix[-2] in "-_./ ":
        prefix = prefix[:-2]  # a trailing 's' of 's1', 's2'
    return prefix.rstrip("-_./ ") or names[0]


def stat(values: list[float | None]) -> dict[str, Any] | None:
    """Mean, min, max and count of the known values (None if there are none)."""
    vals = [v for v in values if v is not None]
    if not vals:
        return None
    return {"mean": statistics.fmean(vals), "min": min(vals), "max": max(vals), "n": len(vals)}


def difference(a: dict[str, Any] | None, b: dict[str, Any] | None) -> dict[str, Any] | None:
    """a's mean - b's mean, and whether the difference is inside the seed spread.

    The spread is the larger range (max - min over seeds) of the arms that have several seeds: a
    difference of means no larger than that is "within noise". With one seed in both arms the
    spread is unknown.
    """
    if a is None or b is None:
        return None
    diff = a["mean"] - b["mean"]
    ranges = [s["max"] - s["min"] for s in (a, b) if s["n"] >= 2]
    if not ranges:
        return {"diff": diff, "spread": None, "verdict": "one seed: noise unknown"}
    spread = max(ranges)
    return {
        "diff": diff,
        "spread": spread,
        "verdict": "within noise" if abs(diff) <= spread else "beyond noise",
    }


@dataclass
class BaselineArm:
    """The baseline arm, as every run is measured against it: by its seeds' means, so that no one
    lucky or unlucky seed sets the target or the ratios."""

    runs: list[Run]
    target: float | None
    totals: dict[str, float | None]
    cost_to_target: dict[str, float | None]


def compare(runs: list[Run], baseline: Run | None, extra_warnings: list[str] | None = None) -> dict[str, Any]:
    """All the report's numbers (the content of report.json)."""
    keys, metric_label, notes = _loss_metric(runs)
    warnings = [*(extra_warnings or []), *(w for r in runs for w in r.warnings)]
    warnings += [*_data_warnings(runs), *_hardware_warnings(runs), *notes]
    seeds_of, arm_names = _arm_groups(runs)
    base = _baseline_arm(seeds_of[baseline.name] if baseline is not None else [], keys)
    warnings += _baseline_warnings(baseline, base)
    entries = [_run_entry(r, keys[r.name], arm_names[r.name], r is baseline, base) for r in runs]
    warnings += _near_unigram_warnings(entries)
    tasks, common = _glue_tasks(entries)
    for e in entries:
        e["glue_average"] = _glue_average(e["glue"], common)
    warnings += _glue_task_warnings(tasks, common)
    basis = _basis(runs)
    if baseline is not None and basis == "samples":
        warnings += _unequal_samples_warnings(entries)
    arms = _arms(entries, baseline.name if baseline else None)
    return {
        "generated_by": f"bertpld {__version__}",
        "baseline": baseline.name if baseline else None,
        "baseline_seeds": len(base.runs),
        "loss_metric": metric_label,
        "loss_is_mlm": not notes,
        "basis": basis,
        "target_val_loss": base.target,
        "unigram": next((r.unigram for r in [*base.runs, *runs] if r.unigram is not None), None),
        "unigram_margin": UNIGRAM_MARGIN,
        "warnings": warnings,
        "runs": entries,
        "arms": arms,
        "glue": {"tasks": tasks, "average_over": common, "rule": GLUE_RULE},
        "paper": {**PAPER, "glue_average_by_our_rule": _paper_glue_averages()},
        "headline": _headline(arms, base.cost_to_target),
        "config_differences": _config_table(runs, baseline),
    }


def _arm_groups(runs: list[Run]) -> tuple[dict[str, list[Run]], dict[str, str]]:
    """Run name -> the runs of its arm, and run name -> its arm's name; a name two arms would share
    gets a prime, since arms are told apart by name in every table."""
    groups: dict[str, list[Run]] = {}
    for r in runs:
        groups.setdefault(_arm_key(r), []).append(r)
    seeds_of = {r.name: members for members in groups.values() for r in members}
    arm_name: dict[str, str] = {}
    for members in groups.values():
        name = _arm_name([r.name for r in members])
        while name in arm_name.values():
            name += "'"
        arm_name.update((r.name, name) for r in members)
    return seeds_of, arm_name


def _baseline_arm(base_runs: list[Run], keys: dict[str, str]) -> BaselineArm:
    """A seed's cost to the target is its first crossing (validation curves are not monotone), or
    its whole run where it never crossed: the runs' speed-ups then compare crossing with crossing."""
    finals = [b.final(keys[b.name]) for b in base_runs]
    target = (
        statistics.fmean(v for v in finals if v is not None) if any(v is not None for v in finals) else None
    )
    totals = {k: _mean([b.total(k) for b in base_runs]) for k in ("samples", "tokens", "flops", "wall_s")}
    cost: dict[str, float | None] = {}
    if target is not None:
        for k in ("flops", "wall_s"):
            costs = []
            for b in base_runs:
                hit = time_to_target(b.evals(keys[b.name]), target, keys[b.name])
                costs.append(hit[k] if hit is not None and hit[k] is not None else b.total(k))
            cost[k] = _mean(costs)
    return BaselineArm(base_runs, target, totals, cost)


def _mean(values: list[float | None]) -> float | None:
    s = stat(values)
    return s["mean"] if s else None


def _baseline_warnings(baseline: Run | None, base: BaselineArm) -> list[str]:
    """Every time-to-target hangs on the baseline: say when it has none, or only a provisional one."""
    if baseline is None:
        return []
    out = []
    if base.target is None:
        out.append(f"baseline {baseline.name} has no validation loss: no time-to-target")
    if not all(b.complete for b in base.runs):
        out.append(f"baseline {baseline.name} is incomplete: its totals and target are provisional")
    return out


def _run_entry(r: Run, key: str, arm: str, is_baseline: bool, base: BaselineArm) -> dict[str, Any]:
    """One run's row of report.json; `key` is the validation loss the runs are compared on."""
    tot = _run_totals(r)
    final_mlm = r.final(r.mlm_key) if r.mlm_key else None
    beyond = r.unigram - final_mlm if r.unigram is not None and final_mlm is not None else None
    return {
        "name": r.name,
        "path": str(r.path),
        "kind": r.kind,
        "label": KIND_LABELS[r.kind],
        "arm": arm,
        "is_baseline": is_baseline,
        "complete": r.complete,
        "stop_reason": (r.summary or {}).get("stop_reason"),
        **tot,
        "final_train_loss": r.final_train_loss,
        "final_val_loss": r.final_val_loss,
        "final_val_mlm_loss": final_mlm,
        "final_loss": r.final(key),
        "unigram": r.unigram,
        "beyond_unigram": beyond,
        "evaluations": len(r.evals(key)),
        "tokens_per_s_median": _median_of(r.rows, "tokens_per_s"),
        "mfu_median": _median_of(r.rows, "mfu"),
        "ratios": {k: _ratio(tot[k], base.totals.get(k)) for k in ("samples", "tokens", "flops", "wall_s")},
        "time_to_target": _time_to_target_entry(r, key, base),
        "glue": {
            t: glue_scores(res) for t, res in sorted(r.finetune.items(), key=lambda x: _task_sort(x[0]))
        },
        "env": r.env,
        "data": r.data,
    }


def _run_totals(r: Run) -> dict[str, float | None]:
    """Samples, tokens, FLOPs, wall-clock and steps; metrics rows log no steps total, so an
    incomplete run's steps are its last row's step."""
    tot = {k: r.total(k) for k in ("samples", "tokens", "flops", "wall_s", "steps")}
    if tot["steps"] is None and r.rows:
        tot["steps"] = finite_number(r.rows[-1].get("step"))
    return tot


def _median_of(rows: list[dict[str, Any]], key: str) -> float | None:
    """The median, so that a few untypical log intervals do not set a run's rate."""
    vals = [v for v in (finite_number(x.get(key)) for x in rows) if v is not None]
    return statistics.median(vals) if vals else None


def _time_to_target_entry(r: Run, key: str, base: BaselineArm) -> dict[str, Any] | None:
    """The speed-up divides the baseline arm's own cost to the target, not its whole run."""
    if base.target is None:
        return None
    hit = time_to_target(r.evals(key), base.target, key)
    if hit is None:
        return {"reached": False}
    return {
        "reached": True,
        **hit,
        "speedup_flops": _ratio(base.cost_to_target.get("flops"), hit["flops"]),
        "speedup_wall_s": _ratio(base.cost_to_target.get("wall_s"), hit["wall_s"]),
    }


def _near_unigram_warnings(entries: list[dict[str, Any]]) -> list[str]:
    """A run barely below the unigram line has learned word frequencies, not language: comparing
    it says nothing about PLD."""
    return [
        f"NEAR THE UNIGRAM LINE: {e['name']} ends at validation MLM loss {e['final_val_mlm_loss']:.3f}, only "
        f"{e['beyond_unigram']:.3f} nats below the unigram line {e['unigram']:.3f} (word frequencies alone): "
        "it has learned almost no language, so comparisons with it are NOT meaningful"
        for e in entries
        if e["beyond_unigram"] is not None and e["beyond_unigram"] < UNIGRAM_MARGIN
    ]


def _glue_tasks(entries: list[dict[str, Any]]) -> tuple[list[str], list[str]]:
    """Every fine-tuned task, and the tasks the average runs over: those every fine-tuned run has
    (WNLI aside), so that averages are comparable."""
    tuned = [e for e in entries if e["glue"]]
    common = sorted(
        set.intersection(*(set(e["glue"]) for e in tuned)) - set(AVERAGE_EXCLUDES) if tuned else set(),
        key=_task_sort,
    )
    return sorted({t for e in tuned for t in e["glue"]}, key=_task_sort), common


def _glue_average(glue: dict[str, dict[str, Any]], common: list[str]) -> float | None:
    """None unless the run has a score for every common task: a partial average would not compare."""
    scores = [glue[t]["score"] for t in common if t in glue]
    ok = bool(common) and len(scores) == len(common) and all(s is not None for s in scores)
    return sum(scores) / len(scores) if ok else None


def _glue_task_warnings(tasks: list[str], common: list[str]) -> list[str]:
    """Tasks left out of the average are easy to miss in the table: say which remain."""
    if set(tasks) - set(AVERAGE_EXCLUDES) == set(common):
        return []
    return [
        "fine-tuned tasks differ between runs: the GLUE average uses only "
        + (", ".join(common) or "no tasks")
    ]


def _unequal_samples_warnings(entries: list[dict[str, Any]]) -> list[str]:
    """On a samples basis the cost ratios mean something only at equal samples."""
    out = []
    for e in entries:
        sr = e["ratios"]["samples"]
        if sr is not None and abs(sr - 1) > 0.01:
            out.append(
                f"{e['name']} saw {sr:.2f}x the baseline's samples: its FLOPs and wall-clock ratios "
                "are not at equal samples"
            )
    return out


def _paper_glue_averages() -> dict[str, float]:
    """The paper's GLUE averages by our rule, so that they compare with ours."""
    return {
        row: sum(sum(m.values()) / len(m) for m in tasks.values()) / len(tasks)
        for row, tasks in PAPER["glue"].items()
    }


def _basis(runs: list[Run]) -> str:
    """What the runs were given equally: 'flops' (the same train.max_flops), else 'samples'."""
    budgets = {((r.config or {}).get("train") or {}).get("max_flops") or 0 for r in runs}
    return "flops" if len(budgets) == 1 and 0 not in budgets else "samples"


def _arms(entries: list[dict[str, Any]], baseline: str | None) -> list[dict[str, Any]]:
    """Runs grouped into arms (seeds of one config), with the mean and range of every outcome."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for e in entries:
        groups.setdefault(e["arm"], []).append(e)
    arms = []
    for name, es in groups.items():
        ttt = [e["time_to_target"] or {} for e in es]
        arms.append(
            {
                "name": name,
                "kind": es[0]["kind"],
                "label": es[0]["label"],
                "runs": [e["name"] for e in es],
                "is_baseline": any(e["name"] == baseline for e in es),
                "complete": all(e["complete"] for e in es),
                "reached": sum(bool(t.get("reached")) for t in ttt),
                "stats": {
                    "final_loss": stat([e["final_loss"] for e in es]),
                    "beyond_unigram": stat([e["beyond_unigram"] for e in es]),
                    "samples": stat([e["samples"] for e in es]),
                    "flops": stat([e["flops"] for e in es]),
                    "wall_s": stat([e["wall_s"] for e in es]),
                    "ttt_flops": stat([t.get("flops") for t in ttt]),
                    "ttt_wall_s": stat([t.get("wall_s") for t in ttt]),
                    "speedup_flops": stat([t.get("speedup_flops") for t in ttt]),
                    "speedup_wall_s": stat([t.get("speedup_wall_s") for t in ttt]),
                    "glue_average": stat([e["glue_average"] for e in es]),
                },
            }
        )
    base = next((a for a in arms if a["is_baseline"]), None)
    for a in arms:
        a["vs_baseline"] = (
            {k: difference(a["stats"][k], base["stats"][k]) for k in ("final_loss", "glue_average", "wall_s")}
            if base is not None and a is not base
            else None
        )
    return arms


def _headline(arms: list[dict[str, Any]], base_hit: dict[str, float | None]) -> dict[str, Any] | None:
    """Each arm against the baseline arm, and PLD against Pre-LN (what dropping buys on its own),
    from the arms' means; each loss and fine-tuning difference says whether it is within noise."""
    base = next((a for a in arms if a["is_baseline"]), None)
    if base is None:
        return None

    def mean(arm: dict[str, Any], key: str) -> float | None:
        s = arm["stats"][key]
        return None if s is None else s["mean"]

    def column(a: dict[str, Any], b: dict[str, Any], b_cost: dict[str, float | None]) -> dict[str, Any]:
        everyone = a["reached"] == len(a["runs"])
        return {
            "flops": _ratio(mean(a, "flops"), mean(b, "flops")),
            "wall_s": _ratio(mean(a, "wall_s"), mean(b, "wall_s")),
            "samples": _ratio(mean(a, "samples"), mean(b, "samples")),
            "speedup_flops": _ratio(b_cost.get("flops"), mean(a, "ttt_flops")) if everyone else None,
            "speedup_wall_s": _ratio(b_cost.get("wall_s"), mean(a, "ttt_wall_s")) if everyone else None,
            "reached": everyone if base_hit else None,
            "reached_by": f"{a['reached']} of {len(a['runs'])}",
            "reached_seeds": a["reached"],
            "final_loss": difference(a["stats"]["final_loss"], b["stats"]["final_loss"]),
            "glue": (mean(a, "glue_average"), mean(b, "glue_average")),
            "glue_difference": difference(a["stats"]["glue_average"], b["stats"]["glue_average"]),
        }

    cols = {f"{a['name']} / {base['name']}": column(a, base, base_hit) for a in arms if a is not base}
    pld = next((a for a in arms if a["kind"] == "pld"), None)
    pre = next((a for a in arms if a["kind"] == "pre"), None)
    if pld and pre and pre["reached"] == len(pre["runs"]):
        pre_cost = {"flops": mean(pre, "ttt_flops"), "wall_s": mean(pre, "ttt_wall_s")}
        cols[f"{pld['name']} / {pre['name']}"] = column(pld, pre, pre_cost)
    elif pld and pre:
        col = column(pld, pre, {})
        col["reached"] = False if base_hit else None
        cols[f"{pld['name']} / {pre['name']}"] = col
    return cols


def _config_table(runs: list[Run], baseline: Run | None) -> dict[str, Any]:
    """Every config field that differs from the reference run, with each run's value."""
    ref = baseline or next((r for r in runs if r.config is not None), None)
    if ref is None or ref.config is None:
        return {"reference": None, "fields": {}}
    diffs = {
        r.name: config_differences(ref.config, r.config)
        for r in runs
        if r.config is not None and r is not ref
    }
    keys = sorted({k for d in diffs.values() for k in d})
    fields: dict[str, dict[str, Any]] = {}
    for k in keys:
        ref_val = next(d[k][0] for d in diffs.values() if k in d)
        fields[k] = {ref.name: ref_val}
        for name, d in diffs.items():
            fields[k][name] = d[k][1] if k in d else ref_val
    return {"reference": ref.name, "fields": fields}


# ----------------------------------------------------------------------------------------------
# Entry point


@dataclass
class ReportResult:
    report: dict[str, Any]
    out: Path
    files: list[Path]


def write_report(
    run_paths: list[str | Path], out: str | Path, baseline: str | Path | None = None
) -> ReportResult:
    """Read the runs, write report.md, report.html, report.json and the PNG plots into `out`."""
    from bertpld.plots import Curve, all_figures  # matplotlib only when a report is written

    if not run_paths:
        raise BertpldError("report: give at least one run directory")
    runs: list[Run] = []
    seen: dict[Path, Run] = {}
    for p in run_paths:
        key = Path(p).resolve()
        if key in seen:
            continue
        seen[key] = load_run(p)
        runs.append(seen[key])
    base_run = None
    if baseline is not None:
        key = Path(baseline).resolve()
        if key not in seen:  # a baseline not listed among the runs is added to them
            seen[key] = load_run(baseline)
            runs.insert(0, seen[key])
        base_run = seen[key]
    _unique_names(runs)
    base_run, notes = choose_baseline(runs, base_run)
    if base_run is not None:  # the baseline first in every table
        runs.remove(base_run)
        runs.insert(0, base_run)
    rep = compare(runs, base_run, notes)

    mlm = rep["loss_is_mlm"]
    curves = [
        Curve(
            e["name"] + ("" if r.complete else " (incomplete)"),
            r.rows,
            train_key="mlm_loss" if mlm and any("mlm_loss" in row for row in r.rows) else "loss",
            val_key=(r.mlm_key or "val_mlm_loss") if mlm else "val_loss",
            arm=e["arm"],
        )
        for r, e in zip(runs, rep["runs"])
    ]
    figures = all_figures(curves, rep["target_val_loss"], rep["unigram"], mlm)
    pngs = {name: png for name, (png, _) in figures.items()}
    captions = {name: cap for name, (_, cap) in figures.items()}

    out = Path(out)
    files = []
    for name, png in pngs.items():
        atomic_write_bytes(out / name, png)
        files.append(out / name)
    atomic_write_json(out / "report.json", _json_safe(rep))
    atomic_write_text(out / "report.md", render_markdown(rep, captions))
    atomic_write_text(out / "report.html", render_html(rep, captions, pngs))
    files += [out / "report.json", out / "report.md", out / "report.html"]
    return ReportResult(rep, out, files)


def _unique_names(runs: list[Run]) -> None:
    """Two runs called 'pld' in different folders get their parent folder prefixed."""
    counts: dict[str, int] = {}
    for r in runs:
        counts[r.name] = counts.get(r.name, 0) + 1
    for r in runs:
        if counts[r.name] > 1:
            r.name = f"{r.path.resolve().parent.name}/{r.name}"


def _json_safe(obj: Any) -> Any:
    """NaN/inf as null (strict JSON), tuples as lists."""
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _x2(v: float | None) -> str:
    return "–" if v is None else f"{v:.2f}x"


def print_summary(result: ReportResult, console: Any = None) -> None:
    """A short table on the terminal, then the warnings and where the report is."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    if console is None:
        console = Console()
        if not console.is_terminal:  # a log file or a pipe: the whole table, not 80 columns
            console = Console(width=140)
    rep = result.report
    base = f"baseline: {rep['baseline']}" if rep["baseline"] else "no baseline"
    t = Table(title=f"bertpld report ({escape(base)}; ratios are run / baseline)")
    t.add_column("run", no_wrap=True)
    t.add_column("kind", no_wrap=True)
    loss = "val MLM loss" if rep["loss_is_mlm"] else "val loss"
    for h in ("FLOPs", "wall", loss, "below unigram", "to target", "fine-tune"):
        t.add_column(h, justify="right", no_wrap=True)
    for e in rep["runs"]:
        ttt = e["time_to_target"]
        if ttt is None:
            reach = "–"
        elif not ttt["reached"]:
            reach = "not reached"
        else:
            reach = f"{_x2(ttt['speedup_flops'])}/{_x2(ttt['speedup_wall_s'])}"
        name = escape(e["name"]) + ("" if e["complete"] else "[yellow]*[/]")
        t.add_row(
            name,
            {"post": "Post-LN", "pre": "Pre-LN", "pld": "PLD"}.get(e["kind"], e["kind"]),
            fmt_ratio(e["ratios"]["flops"]),
            fmt_ratio(e["ratios"]["wall_s"]),
            fmt_loss(e["final_loss"]),
            "–" if e["beyond_unigram"] is None else f"{e['beyond_unigram']:.3f}",
            reach,
            fmt_pct(e["glue_average"]),
        )
    console.print(t)
    console.print(
        f"to target: speed-up to the baseline's final {loss} in FLOPs/wall-clock; below unigram: "
        "nats under the unigram line (word frequencies alone); fine-tune: average task score"
        + ("; * incomplete run" if not all(e["complete"] for e in rep["runs"]) else ""),
        highlight=False,
    )
    if any(len(a["runs"]) > 1 for a in rep["arms"]):
        for a in rep["arms"]:
            st, vs = a["stats"], a["vs_baseline"] or {}
            seeds = f"{len(a['runs'])} seed{'s' if len(a['runs']) > 1 else ''}"
            line = f"{a['name']} ({seeds}): {loss} {fmt_stat(st['final_loss'], fmt_loss)}"
            if vs.get("final_loss"):
                line += f", vs baseline {fmt_difference(vs['final_loss'])}"
            console.print(escape(line), highlight=False)
    for w in rep["warnings"]:
        console.print(f"[bold yellow]warning:[/] {escape(w)}", highlight=False)
    console.print(f"report: {result.out / 'report.html'}  (also report.md, report.json)", highlight=False)
