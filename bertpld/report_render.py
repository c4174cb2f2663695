"""Rendering of `bertpld report`: the numbers of report.json as report.md and report.html.

Both come from one neutral document (`sections`: titles with paragraphs, warnings, tables and
figures), so the two files always say the same thing. Nothing here computes a result; it formats
the dict that `bertpld.report.compare` built.
"""

from __future__ import annotations

import base64
import html
import json
import re
from typing import Any

from bertpld.glue import TASKS

TASK_NAMES = {key: task.tsv_dir for key, task in TASKS.items() if task.tsv_dir}  # GLUE's own spelling
METRIC_NAMES = {
    "f1": "F1",
    "acc": "Acc",
    "pearson": "P",
    "spearman": "S",
    "mcc": "MCC",
    "acc_m": "m",
    "acc_mm": "mm",
}
ENV_ORDER = ["device_name", "device", "gpu_count", "world_size", "torch", "python", "platform", "cpu_count"]


def task_key(task: str) -> str:
    """'SST-2', 'sts_b', 'stsb' -> one key ('sst2', 'stsb') for ordering and display names."""
    return task.lower().replace("-", "").replace("_", "")


# ----------------------------------------------------------------------------------------------
# Formatting


def fmt_int(v: float | None) -> str:
    return "–" if v is None else f"{round(v):,}"


def fmt_flops(v: float | None, like: float | None = None) -> str:
    """SI-scaled FLOPs; `like` (a column's largest value) picks one unit for a whole column."""
    if v is None:
        return "–"
    ref = abs(like if like is not None else v)
    for unit, scale in (("EFLOP", 1e18), ("PFLOP", 1e15), ("TFLOP", 1e12), ("GFLOP", 1e9), ("MFLOP", 1e6)):
        if ref >= scale:
            return f"{v / scale:.3g} {unit}"
    return f"{v:.3g} FLOP"


def fmt_time(v: float | None, like: float | None = None) -> str:
    """Seconds, minutes or hours; `like` (a column's largest value) picks one unit for a whole column."""
    if v is None:
        return "–"
    ref = like if like is not None else v
    if ref < 120:
        return f"{v:.1f} s"
    if ref < 7200:
        return f"{v / 60:.1f} min"
    return f"{v / 3600:.2f} h"


def _largest(values: Any) -> float | None:
    vals = [v for v in values if v is not None]
    return max(vals) if vals else None


def fmt_ratio(v: float | None) -> str:
    return "–" if v is None else f"{v:.3f}x"


def fmt_loss(v: float | None) -> str:
    return "–" if v is None else f"{v:.4f}"


def fmt_pct(v: float | None) -> str:
    return "–" if v is None else f"{v:.1f}"


def fmt_nats(v: float | None) -> str:
    return "–" if v is None else f"{v:.3f} nats"


def fmt_stat(s: dict[str, Any] | None, fmt: Any) -> str:
    """'mean (min – max)' over seeds; just the value for one seed."""
    if s is None:
        return "–"
    if s["n"] == 1:
        return fmt(s["mean"])
    return f"{fmt(s['mean'])} ({fmt(s['min'])} – {fmt(s['max'])})"


def fmt_difference(d: dict[str, Any] | None, digits: int = 3) -> str:
    """'+0.012 (within noise, seed spread 0.030)'."""
    if d is None:
        return "–"
    spread = "" if d["spread"] is None else f", seed spread {d['spread']:.{digits}f}"
    return f"{d['diff']:+.{digits}f} ({d['verdict']}{spread})"


def _with_ratio(text: str, ratio: float | None) -> str:
    return text if ratio is None else f"{text} ({ratio:.3f}x)"


def _val(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return json.dumps(v)
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (list, tuple, dict)):
        return json.dumps(v)
    return str(v)


def _short(key: str, v: Any) -> str:
    """Hashes cut to 12 characters in tables (report.json keeps them whole)."""
    if key in ("fingerprint", "tokenizer_sha256") and isinstance(v, str) and len(v) > 12:
        return v[:12] + "…"
    return _val(v)


def _task_header(task: str, metrics: list[str]) -> str:
    name = TASK_NAMES.get(task_key(task), task)
    if len(metrics) > 1 or (metrics and metrics[0] != "acc"):
        return f"{name} {'/'.join(METRIC_NAMES.get(m, m) for m in metrics)}"
    return name


# ----------------------------------------------------------------------------------------------
# Sections: a neutral document (title, blocks) rendered to Markdown and HTML


def sections(rep: dict[str, Any], images: dict[str, str]) -> list[tuple[str, list[tuple]]]:
    """The report as (title, blocks); a block is ('p', text), ('warn', text), ('table', headers, rows)
    or ('img', file name, caption)."""
    headline = [("Headline: ours beside the paper's", _headline_blocks(rep))] if rep["headline"] else []
    return [
        ("Overview", _overview_blocks(rep)),
        *headline,
        ("Arms: mean and spread over seeds", _arm_blocks(rep)),
        ("Cost of pre-training", _cost_blocks(rep)),
        ("Loss and time-to-target", _loss_blocks(rep)),
        ("Fine-tuning (GLUE and others)", _glue_blocks(rep)),
        ("Plots", [("img", name, cap) for name, cap in images.items()]),
        ("Hardware, software and data", _environment_blocks(rep)),
        ("Config differences", _config_blocks(rep)),
    ]


def _overview_blocks(rep: dict[str, Any]) -> list[tuple]:
    """What was compared, on what terms, and every warning, before any number is read."""
    runs = rep["runs"]
    names = ", ".join(f"{e['name']} ({e['label']}{'' if e['complete'] else ', incomplete'})" for e in runs)
    basis = {
        "flops": "the same executed-FLOPs budget (train.max_flops): what each arm gets for the same compute",
        "samples": "the samples each was given (equal samples when the ratios say 1.000x)",
    }[rep["basis"]]
    blocks: list[tuple] = [
        ("p", f"Runs: {names}."),
        ("p", f"Runs are compared at {basis}. Losses compared: the {rep['loss_metric']}."),
    ]
    if rep["baseline"]:
        blocks.append(("p", _baseline_text(rep)))
    if rep["unigram"] is not None:
        blocks.append(("p", _unigram_text(rep)))
    return blocks + [("warn", w) for w in rep["warnings"]]


def _baseline_text(rep: dict[str, Any]) -> str:
    seeds = rep["baseline_seeds"]
    mean = f"mean over its {seeds} seeds" if seeds > 1 else "one seed"
    return (
        f"Baseline: {rep['baseline']}. Ratios are run / baseline (the baseline arm's mean). Target for "
        f"time-to-target: the baseline's final {rep['loss_metric']} ({mean}), {fmt_loss(rep['target_val_loss'])}."
    )


def _unigram_text(rep: dict[str, Any]) -> str:
    return (
        f"Unigram line: {rep['unigram']:.3f} nats, the MLM loss of a model that predicts word "
        "frequencies and ignores context (the validation tokens' cross-entropy under the training "
        "split's token frequencies). A run has learned language only as far as its validation MLM "
        f"loss lies below it; within {rep['unigram_margin']} nats a comparison means nothing."
    )


def _column_units(runs: list[dict[str, Any]]) -> tuple[float | None, float | None]:
    """The runs' largest FLOPs and wall-clock: one unit per column, the same in the cost and the
    time-to-target tables, so that rows and tables compare at a glance."""
    return _largest(e["flops"] for e in runs), _largest(e["wall_s"] for e in runs)


COST_NOTE = (
    "FLOPs are the analytic count of what was executed (bertpld.flops: blocks actually run, "
    "attention included, forward + 2x backward), not hardware counters; a skipped block costs "
    "nothing. Wall-clock is training time as the loop measured it (evaluation excluded). "
    "In brackets: ratio to the baseline."
)


def _cost_blocks(rep: dict[str, Any]) -> list[tuple]:
    """Beside each total its ratio to the baseline, since the ratios are what the comparison is about."""
    runs = rep["runs"]
    fmax, tmax = _column_units(runs)
    rows = []
    for e in runs:
        r = e["ratios"]
        rows.append(
            [
                e["name"] + (" (baseline)" if e["is_baseline"] else ""),
                e["label"],
                "complete" if e["complete"] else "INCOMPLETE",
                fmt_int(e["steps"]),
                _with_ratio(fmt_int(e["samples"]), r["samples"]),
                _with_ratio(fmt_int(e["tokens"]), r["tokens"]),
                _with_ratio(fmt_flops(e["flops"], fmax), r["flops"]),
                _with_ratio(fmt_time(e["wall_s"], tmax), r["wall_s"]),
                fmt_int(e["tokens_per_s_median"]),
            ]
        )
    headers = [
        "run",
        "kind",
        "status",
        "steps",
        "samples",
        "tokens",
        "FLOPs",
        "wall-clock",
        "tokens/s (median)",
    ]
    if any(e["mfu_median"] is not None for e in runs):
        headers.append("MFU (median)")
        for row, e in zip(rows, runs):
            row.append("–" if e["mfu_median"] is None else f"{100 * e['mfu_median']:.1f}%")
    return [("table", headers, rows), ("p", COST_NOTE)]


def _loss_blocks(rep: dict[str, Any]) -> list[tuple]:
    """Losses beside the cost to reach the baseline's: what PLD saves, at what loss."""
    runs = rep["runs"]
    fmax, tmax = _column_units(runs)
    rows = [
        [
            e["name"],
            fmt_loss(e["final_train_loss"]),
            fmt_loss(e["final_val_loss"]),
            fmt_loss(e["final_val_mlm_loss"]),
            fmt_nats(e["beyond_unigram"]),
            str(e["evaluations"]),
            *_time_to_target_cells(e, fmax, tmax),
        ]
        for e in runs
    ]
    metric = rep["loss_metric"]
    text = (
        f"Time-to-target: the FLOPs and wall-clock at which a run's {metric} first reached the "
        f"baseline's final {metric}, linearly interpolated between the two evaluations around the "
        "crossing. Speed-up = the baseline's own cost to first reach that loss (per seed: its first "
        "crossing, or its whole run where it never crossed the mean; then averaged) / the run's. "
        "Below unigram: how far the final validation MLM loss lies below the unigram line."
        if rep["baseline"]
        else "No baseline, so no target: time-to-target is left out."
    )
    headers = [
        "run",
        "final train loss",
        "final val loss",
        "final val MLM loss",
        "below unigram",
        "evals",
        "FLOPs to target",
        "wall-clock to target",
        "speed-up (FLOPs)",
        "speed-up (wall)",
    ]
    return [("table", headers, rows), ("p", text)]


def _time_to_target_cells(e: dict[str, Any], fmax: float | None, tmax: float | None) -> list[str]:
    """An incomplete run that has not reached the target may still: '(yet)'."""
    ttt = e["time_to_target"]
    if ttt is None:
        return ["–"] * 4
    if not ttt["reached"]:
        return ["not reached" + ("" if e["complete"] else " (yet)")] * 2 + ["–"] * 2
    mark = " (at first eval)" if ttt["at_first_eval"] else ""
    return [
        fmt_flops(ttt["flops"], fmax) + mark,
        fmt_time(ttt["wall_s"], tmax) + mark,
        fmt_ratio(ttt["speedup_flops"]),
        fmt_ratio(ttt["speedup_wall_s"]),
    ]


def _environment_blocks(rep: dict[str, Any]) -> list[tuple]:
    """Wall-clock ratios and losses mean something only on the same hardware and data: show both."""
    runs = rep["runs"]
    env_keys = sorted(
        {k for e in runs for k in e["env"]}, key=lambda k: (ENV_ORDER.index(k) if k in ENV_ORDER else 99, k)
    )
    env_rows = [[k, *(_val(e["env"].get(k, "–")) for e in runs)] for k in env_keys]
    data_rows = [
        [k, *(_short(k, (e["data"] or {}).get(k, "–")) for e in runs)]
        for k in ("path", "fingerprint", "tokenizer_sha256", "vocab_size")
    ]
    headers = ["", *(e["name"] for e in runs)]
    return [
        ("table", headers, env_rows) if env_rows else ("p", "No env.json in any run."),
        ("p", "Data used (data.json):"),
        ("table", headers, data_rows),
    ]


def _config_blocks(rep: dict[str, Any]) -> list[tuple]:
    """Only the fields that differ, so that what the comparison varies stands out."""
    cd = rep["config_differences"]
    if cd["reference"] is None:
        return [("p", "No config.json to compare.")]
    if not cd["fields"]:
        return [("p", f"All configs equal {cd['reference']}'s.")]
    others = [e["name"] for e in rep["runs"] if e["name"] in next(iter(cd["fields"].values()))]
    return [
        (
            "table",
            ["field", *others],
            [[k, *(_val(v.get(n)) for n in others)] for k, v in cd["fields"].items()],
        ),
        ("p", f"Only the fields that differ from {cd['reference']}'s resolved config.json."),
    ]


def _headline_blocks(rep: dict[str, Any]) -> list[tuple]:
    paper = rep["paper"]
    pg = paper["glue_average_by_our_rule"]
    cols = rep["headline"]
    headers = ["", "paper: PLD / BERT-base", *cols]

    def speed(c: dict[str, Any]) -> str:
        if c["reached"] is False:  # by some seeds of the arm, or none
            if not c["reached_seeds"]:
                return f"target not reached (by {c['reached_by']} seeds)"
            return f"target reached by {c['reached_by']} seeds only: no speed-up for the arm"
        if c["speedup_flops"] is None:
            return "–"
        return f"{fmt_ratio(c['speedup_flops'])} FLOPs, {fmt_ratio(c['speedup_wall_s'])} wall"

    def glue(c: dict[str, Any]) -> str:
        a, b = c["glue"]
        if a is None or b is None:
            return "–"
        return f"{a:.1f} vs {b:.1f} ({a - b:+.1f})"

    pb, pp = pg["BERT-base (their baseline)"], pg["PLD"]
    rows = [
        ["samples (ratio)", "1.000x (equal samples)", *(fmt_ratio(c["samples"]) for c in cols.values())],
        [
            "FLOPs (ratio)",
            f"{paper['flops_ratio']:.3f}x (25% fewer)",
            *(fmt_ratio(c["flops"]) for c in cols.values()),
        ],
        [
            "wall-clock (ratio)",
            f"{paper['wall_ratio']:.3f}x (38.45 h -> 29.22 h, 64x V100)",
            *(fmt_ratio(c["wall_s"]) for c in cols.values()),
        ],
        [
            "speed-up to target",
            f"{paper['speedup_to_similar_accuracy']}x to similar GLUE accuracy",
            *(speed(c) for c in cols.values()),
        ],
        ["fine-tune average", f"{pp:.1f} vs {pb:.1f} ({pp - pb:+.1f})", *(glue(c) for c in cols.values())],
        ["fine-tune difference", "–", *(fmt_difference(c["glue_difference"], 1) for c in cols.values())],
        [
            f"final {rep['loss_metric']} (difference)",
            "–",
            *(fmt_difference(c["final_loss"]) for c in cols.values()),
        ],
    ]
    return [
        ("table", headers, rows),
        (
            "p",
            f"The paper's column is the paper's ({paper['setup']}), not ours; its GLUE averages are computed "
            "here from its table by the rule below. Our speed-up is to the baseline's final validation loss, "
            "the paper's to similar downstream accuracy; the paper's PLD also used a 10x higher learning rate "
            "than its Post-LN baseline. The last column, where present, isolates what dropping layers buys "
            "over the Pre-LN arrangement alone (the three-way comparison of METHOD.md section 6); its "
            "speed-up is the Pre-LN run's cost to the target over the PLD run's.",
        ),
    ]


def _arm_blocks(rep: dict[str, Any]) -> list[tuple]:
    arms = rep["arms"]
    tmax = _largest(a["stats"]["wall_s"]["max"] for a in arms if a["stats"]["wall_s"])
    fmax = _largest(a["stats"]["flops"]["max"] for a in arms if a["stats"]["flops"])
    rows = []
    for a in arms:
        st, vs = a["stats"], a["vs_baseline"] or {}
        rows.append(
            [
                a["name"] + (" (baseline)" if a["is_baseline"] else ""),
                a["label"],
                str(len(a["runs"])),
                fmt_stat(st["final_loss"], fmt_loss),
                fmt_stat(st["beyond_unigram"], lambda v: f"{v:.3f}"),
                fmt_stat(st["flops"], lambda v: fmt_flops(v, fmax)),
                fmt_stat(st["wall_s"], lambda v: fmt_time(v, tmax)),
                fmt_stat(st["speedup_flops"], fmt_ratio) + _reached(a, rep),
                fmt_stat(st["glue_average"], fmt_pct),
                fmt_difference(vs.get("final_loss")),
                fmt_difference(vs.get("glue_average"), 1),
            ]
        )
    headers = [
        "arm",
        "kind",
        "seeds",
        f"final {rep['loss_metric']}",
        "below unigram (nats)",
        "FLOPs",
        "wall-clock",
        "speed-up to target (FLOPs)",
        "fine-tune average",
        "loss vs baseline",
        "fine-tune vs baseline",
    ]
    return [
        ("table", headers, rows),
        (
            "p",
            "An arm is the runs whose configs differ only in the seed (and in logging or speed-only "
            "settings). Each cell: mean over seeds (min – max). A difference to the baseline is "
            "'within noise' when it is no larger than the larger seed range of the two arms (of the arm "
            "with several seeds, if only one has); with one seed in both the noise is unknown and no "
            "difference means anything on its own.",
        ),
    ]


def _reached(arm: dict[str, Any], rep: dict[str, Any]) -> str:
    if rep["target_val_loss"] is None or arm["reached"] == len(arm["runs"]):
        return ""
    return f" (target reached by {arm['reached']} of {len(arm['runs'])})"


def _glue_blocks(rep: dict[str, Any]) -> list[tuple]:
    """Ours first, then the paper's table, clearly apart from ours."""
    glue = rep["glue"]
    if not glue["tasks"]:
        ours: list[tuple] = [("p", "No fine-tuning results (finetune/TASK/results.json) in any run.")]
    else:
        ours = [
            _glue_score_table(rep["runs"], glue["tasks"]),
            ("p", glue["rule"] + " Averaged over: " + (", ".join(glue["average_over"]) or "none") + "."),
            _glue_seed_table(rep["runs"]),
        ]
    return ours + _paper_glue_blocks(rep["paper"])


def _glue_score_table(runs: list[dict[str, Any]], tasks: list[str]) -> tuple:
    """A task's column lists every metric any run has, so that runs line up metric by metric."""
    metric_lists = {}
    for t in tasks:
        ms: list[str] = []
        for e in runs:
            for m in e["glue"].get(t, {}).get("metrics", {}):
                if m not in ms:
                    ms.append(m)
        metric_lists[t] = ms
    headers = ["run", *(_task_header(t, metric_lists[t]) for t in tasks), "average"]
    rows = []
    for e in runs:
        row = [e["name"]]
        for t in tasks:
            g = e["glue"].get(t)
            row.append("–" if g is None else "/".join(fmt_pct(g["metrics"].get(m)) for m in metric_lists[t]))
        row.append(fmt_pct(e["glue_average"]))
        rows.append(row)
    return ("table", headers, rows)


def _glue_seed_table(runs: list[dict[str, Any]]) -> tuple:
    """A median hides how far the seeds spread: their count and range, per run and task."""
    rows = []
    for e in runs:
        for t, g in e["glue"].items():
            spread = (
                "–"
                if g["main_min"] is None
                else f"{fmt_pct(g['main_min'])} – {fmt_pct(g['main_max'])} ({g['main_metric']})"
            )
            rows.append(
                [
                    e["name"],
                    t,
                    str(g["seeds"]),
                    fmt_pct(g["score"]),
                    spread,
                    fmt_time(g["wall_s"]),
                    fmt_flops(g["flops"]),
                ]
            )
    return (
        "table",
        ["run", "task", "seeds", "task score", "min – max over seeds", "wall-clock", "FLOPs"],
        rows,
    )


def _paper_glue_blocks(paper: dict[str, Any]) -> list[tuple]:
    """The paper's GLUE table, with its averages by our rule, for reference."""
    ptasks = list(next(iter(paper["glue"].values())))
    headers = ["paper's runs", *(_task_header(t, list(paper["glue"]["PLD"][t])) for t in ptasks), "average"]
    rows = [
        [
            row,
            *("/".join(fmt_pct(v) for v in tasks[t].values()) for t in ptasks),
            fmt_pct(paper["glue_average_by_our_rule"][row]),
        ]
        for row, tasks in paper["glue"].items()
    ]
    return [
        ("p", f"For reference, the paper's GLUE dev results (median of 5 seeds; {paper['setup']}):"),
        ("table", headers, rows),
    ]


def render_markdown(rep: dict[str, Any], images: dict[str, str]) -> str:
    """report.md: plots are linked as the PNG files written beside it."""

    def cell(s: str) -> str:
        return str(s).replace("|", "\\|").replace("\n", " ")

    lines = ["# bertpld report", "", f"Generated by {rep['generated_by']}.", ""]
    for title, blocks in sections(rep, images):
        lines += [f"## {title}", ""]
        for b in blocks:
            if b[0] == "p":
                lines += [b[1], ""]
            elif b[0] == "warn":
                lines += [f"> **Warning:** {b[1]}", ""]
            elif b[0] == "table":
                _, headers, rows = b
                lines.append("| " + " | ".join(cell(h) for h in headers) + " |")
                lines.append("|" + "---|" * len(headers))
                lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
                lines.append("")
            elif b[0] == "img":
                lines += [f"![{b[2]}]({b[1]})", ""]
    return "\n".join(lines)


CSS = """
body { font-family: -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif; color: #1f2328;
       max-width: 1200px; margin: 2em auto; padding: 0 1.5em; line-height: 1.45; }
h1 { border-bottom: 2px solid #d0d7de; padding-bottom: .3em; }
h2 { margin-top: 2em; border-bottom: 1px solid #d0d7de; padding-bottom: .2em; }
table { border-collapse: collapse; margin: 1em 0; font-size: 14px; display: block; overflow-x: auto; }
th, td { border: 1px solid #d0d7de; padding: 5px 10px; text-align: right; white-space: nowrap; }
th { background: #f6f8fa; }
th.text, td.text { text-align: left; }
th:first-child, td:first-child { text-align: left; font-weight: 600; }
tr:nth-child(even) td { background: #fbfcfd; }
p { max-width: 60em; }
.warn { background: #fff8c5; border: 1px solid #d4a72c; border-radius: 6px; padding: .6em 1em; margin: .5em 0; }
figure { margin: 1.5em 0; }
figure img { max-width: 100%; border: 1px solid #d0d7de; border-radius: 4px; }
figcaption { color: #57606a; font-size: 14px; }
.meta { color: #57606a; }
"""


_NUMERIC = re.compile(r"^[-+]?[\d.,]+|^–$|^not reached")


def _text_columns(rows: list[list[Any]]) -> set[int]:
    """Columns holding words rather than numbers: left-aligned, header included (numbers line up right)."""
    out = set()
    for c in range(max((len(r) for r in rows), default=0)):
        cells = [str(r[c]) for r in rows if c < len(r)]
        if sum(not _NUMERIC.match(x) for x in cells) * 2 > len(cells):
            out.add(c)
    return out


def _cell(tag: str, value: Any, left: bool) -> str:
    cls = ' class="text"' if left else ""
    return f"<{tag}{cls}>{html.escape(str(value))}</{tag}>"


def render_html(rep: dict[str, Any], images: dict[str, str], pngs: dict[str, bytes]) -> str:
    """report.html: self-contained, the PNGs embedded as base64."""
    e = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>bertpld report</title><style>{CSS}</style></head><body>",
        "<h1>bertpld report</h1>",
        f'<p class="meta">Generated by {e(rep["generated_by"])}.</p>',
    ]
    for title, blocks in sections(rep, images):
        parts.append(f"<h2>{e(title)}</h2>")
        for b in blocks:
            if b[0] == "p":
                parts.append(f"<p>{e(b[1])}</p>")
            elif b[0] == "warn":
                parts.append(f'<div class="warn"><strong>Warning:</strong> {e(b[1])}</div>')
            elif b[0] == "table":
                _, headers, rows = b
                text = _text_columns(rows)
                parts.append(
                    "<table><thead><tr>" + "".join(_cell("th", h, i in text) for i, h in enumerate(headers))
                )
                parts.append("</tr></thead>")
                parts.append("<tbody>")
                for row in rows:
                    parts.append(
                        "<tr>" + "".join(_cell("td", c, i in text) for i, c in enumerate(row)) + "</tr>"
                    )
                parts.append("</tbody></table>")
            elif b[0] == "img":
                data = base64.b64encode(pngs[b[1]]).decode("ascii")
                parts.append(
                    f'<figure><img src="data:image/png;base64,{data}" alt="{e(b[2])}">'
                    f"<figcaption>{e(b[2])}</figcaption></figure>"
                )
    parts.append("</body></html>")
    return "\n".join(parts)
