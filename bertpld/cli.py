"""The `bertpld` command line: a thin map from each command to one typed function.

Each command parses its options, resolves its config (defaults < config file < --set < options)
and calls one function. User mistakes raise `BertpldError` and are printed as one line.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from bertpld import __version__
from bertpld.errors import BertpldError

app = typer.Typer(
    name="bertpld",
    help="Pre-train BERT with Progressive Layer Dropping (PLD) and measure what it saves.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override any config field: section.field=value (repeatable)."),
]
ConfigOpt = Annotated[
    str | None,
    typer.Option("--config", "-c", help="Config file: a path, or a name in configs/ (e.g. demo)."),
]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"bertpld {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Pre-train BERT with Progressive Layer Dropping (PLD) and measure what it saves."""


def _options(section: str, **values: Any) -> dict[str, dict[str, Any]]:
    """Dedicated command-line options as a config layer; options left unset are skipped."""
    return {section: {k: v for k, v in values.items() if v is not None}}


def _merge(*layers: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for layer in layers:
        for section, values in layer.items():
            out.setdefault(section, {}).update(values)
    return out


# ---------------------------------------------------------------------------------------------
# bertpld prepare


@app.command()
def prepare(
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory to write (e.g. data/demo).")],
    sources: Annotated[
        list[str] | None,
        typer.Argument(
            help="Sources to combine: demo (the default), wikipedia, bookcorpus, text. NAME=SPEC sets "
            "the source's hub name or files, e.g. wikipedia=dumps/enwiki-*.xml.bz2, "
            "bookcorpus=books/*.txt, text=notes/*.txt,more.jsonl.",
            show_default=False,
        ),
    ] = None,
    config: ConfigOpt = None,
    vocab_size: Annotated[int | None, typer.Option(help="WordPiece vocabulary size (default 30522).")] = None,
    tokenizer: Annotated[
        str | None, typer.Option(help="Reuse this tokenizer.json instead of training one.")
    ] = None,
    max_documents: Annotated[
        int | None, typer.Option(help="Read at most this many documents per source (0: all).")
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            help="Processes that clean and encode documents (default: the machine's cores; 1: none "
            "besides this one). The output is byte-identical for any number.",
        ),
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace a directory prepared with a different config.")
    ] = False,
    set_: SetOpt = None,
) -> None:
    """Turn raw corpora into a WordPiece tokenizer and token shards for `bertpld pretrain`.

    Deterministic and restartable: rerunning with the same config does nothing, an interrupted
    run resumes at its first unfinished shard. Writes DIR/tokenizer.json, DIR/train/*.npz,
    DIR/val/*.npz and, last, DIR/manifest.json.

    Examples: bertpld prepare --out data/demo;
    bertpld prepare wikipedia=dumps/enwiki-latest-pages-articles1.xml.bz2 --out data/wiki --vocab-size 30522
    """
    from bertpld.config import PrepareConfig, load_config, parse_set, read_config_file, resolve_config_path
    from bertpld.data.prepare import prepare as run_prepare

    fields: dict[str, Any] = {}
    if sources:
        names = []
        for item in sources:
            name, eq, spec = item.partition("=")
            name = name.strip()
            if name not in ("demo", "wikipedia", "bookcorpus", "text"):
                raise BertpldError(f"source {item!r}: unknown; expected demo, wikipedia, bookcorpus or text")
            if name not in names:
                names.append(name)
            if eq and name == "demo":
                raise BertpldError(f"source {item!r}: the demo corpus takes no files")
            if eq and name == "text":
                fields["text_files"] = [*fields.get("text_files", []), *filter(None, spec.split(","))]
            elif eq:
                fields[name] = spec
        fields["sources"] = names
    layers: list[dict[str, Any]] = []
    if config:
        layers.append(read_config_file(resolve_config_path(config)))
    layers.append(parse_set(set_))
    layers.append(
        _options(
            "prepare",
            vocab_size=vocab_size,
            tokenizer=tokenizer,
            max_documents=max_documents,
            workers=workers,
            **fields,
        )
    )
    cfg = load_config(PrepareConfig, None, *layers)
    run_prepare(cfg, out, overwrite=overwrite)


# ---------------------------------------------------------------------------------------------
# bertpld pretrain


def _parse_duration(text: str | None) -> float | None:
    """'3600', '90s', '30m', '2h' -> seconds."""
    if text is None:
        return None
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    t = text.strip().lower()
    try:
        return float(t[:-1]) * units[t[-1]] if t and t[-1] in units else float(t)
    except ValueError:
        raise BertpldError(
            f"--time-budget: got {text!r}, expected seconds or a duration like 90m, 2h"
        ) from None


@app.command()
def pretrain(
    out: Annotated[Path, typer.Option("--out", "-o", help="Run directory to write (runs/NAME).")],
    data: Annotated[
        str | None, typer.Option(help="Prepared data directory (from `bertpld prepare`).")
    ] = None,
    config: ConfigOpt = None,
    pld: Annotated[
        bool, typer.Option("--pld/--no-pld", help="Progressive Layer Dropping (implies --norm pre).")
    ] = False,
    norm: Annotated[str | None, typer.Option(help="Block arrangement: post (BERT) or pre (Pre-LN).")] = None,
    max_steps: Annotated[int | None, typer.Option(help="Stop after this many optimizer steps.")] = None,
    max_samples: Annotated[int | None, typer.Option(help="Stop after this many sequences.")] = None,
    max_flops: Annotated[
        float | None,
        typer.Option(help="Stop when the executed FLOPs reach this (e.g. 2e15); the lr schedule spans it."),
    ] = None,
    time_budget: Annotated[
        str | None, typer.Option(help="Stop after this much training time: seconds, or 90m, 2h.")
    ] = None,
    target_val_loss: Annotated[
        float | None, typer.Option(help="Stop when the validation MLM loss reaches this.")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Seed for init, data, masking, dropout and gates.")] = None,
    eval_every: Annotated[
        int | None, typer.Option(help="Validation loss every N steps (0: end only).")
    ] = None,
    save_every: Annotated[int | None, typer.Option(help="Checkpoint every N steps (0: end only).")] = None,
    pld_theta_bar: Annotated[float | None, typer.Option(help="PLD: limit of theta(t) (paper: 0.5).")] = None,
    pld_gamma: Annotated[
        float | None, typer.Option(help="PLD: decay rate of theta(t) (default 100/steps).")
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue the run in --out from its last checkpoint.")
    ] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace the run already in --out.")] = False,
    set_: SetOpt = None,
) -> None:
    """Pre-train BERT (MLM, with or without NSP) on prepared data, with or without PLD.

    Example: bertpld pretrain --config demo --data data/demo --out runs/pld --pld

    Multi-GPU / multi-node: torchrun --nproc-per-node 8 -m bertpld.cli pretrain ...
    """
    from bertpld.config import (
        PretrainConfig,
        load_config,
        parse_set,
        read_config_file,
        read_run_config_json,
        resolve_config_path,
    )
    from bertpld.train import pretrain as run_pretrain

    if pld and norm == "post":
        raise BertpldError(
            "--norm post --pld: PLD needs the Pre-LN arrangement; use --norm pre (or drop --norm)"
        )
    layers: list[dict[str, Any]] = []
    saved = out / "config.json"
    if resume and saved.is_file():
        layers.append(read_run_config_json(saved))
    if config:
        layers.append(read_config_file(resolve_config_path(config)))
    layers.append(parse_set(set_))
    options = _merge(
        _options("data", path=data),
        _options("model", norm="pre" if pld and norm is None else norm),
        _options("pld", enabled=True if pld else None, theta_bar=pld_theta_bar, gamma=pld_gamma),
        _options(
            "train",
            max_steps=max_steps,
            max_samples=max_samples,
            max_flops=max_flops,
            time_budget=_parse_duration(time_budget),
            target_val_loss=target_val_loss,
            seed=seed,
            eval_every=eval_every,
            save_every=save_every,
        ),
    )
    layers.append(options)
    cfg = load_config(PretrainConfig, None, *layers)
    if not cfg.data.path:
        raise BertpldError("--data: no prepared data directory given (run `bertpld prepare --out DIR` first)")
    run_pretrain(cfg, out, resume=resume, overwrite=overwrite)


# ---------------------------------------------------------------------------------------------
# bertpld finetune


@app.command()
def finetune(
    run_dir: Annotated[
        Path, typer.Option("--from", help="Pre-training run directory (runs/NAME) to fine-tune from.")
    ],
    task: Annotated[
        str | None,
        typer.Option(
            help="rt-polarity (offline, default), cola, sst2, mrpc, qqp, stsb, mnli, qnli, rte, wnli, "
            "or all (every GLUE task and a GLUE table)."
        ),
    ] = None,
    checkpoint: Annotated[
        int | None, typer.Option(help="Checkpoint step to fine-tune (default: the latest).")
    ] = None,
    seeds: Annotated[
        int | None, typer.Option(help="Fine-tune N times; report each seed and the median.")
    ] = None,
    data_dir: Annotated[
        str | None,
        typer.Option(help="Local GLUE data: original TSV layout (glue_data/) or hub-layout parquet/jsonl."),
    ] = None,
    lr: Annotated[
        float | None, typer.Option(help="Peak learning rate (default: the paper's per task).")
    ] = None,
    epochs: Annotated[float | None, typer.Option(help="Passes over the training set (default 5).")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Sequences per step (default 32).")] = None,
    max_steps: Annotated[
        int | None, typer.Option(help="Stop after this many steps (overrides epochs).")
    ] = None,
    predict_test: Annotated[
        bool, typer.Option("--predict-test", help="Also write GLUE-submission-format test predictions.")
    ] = False,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Fine-tune a pre-trained checkpoint on GLUE (or the offline rt-polarity task) and evaluate on dev.

    Writes RUN/finetune/TASK/results.json (per-seed and median dev metrics, wall-clock, FLOPs), dev
    predictions and TensorBoard scalars; with --task all also RUN/finetune/glue.json and glue.md.

    \b
    Examples:
      bertpld finetune --from runs/pld                  (rt-polarity, offline)
      bertpld finetune --from runs/pld --task mnli --data-dir glue_data --seeds 5
      bertpld finetune --from runs/pld --task all --data-dir glue_data --seeds 5
    """
    from bertpld.config import FinetuneConfig, load_config, parse_set, read_config_file, resolve_config_path
    from bertpld.finetune import finetune as run_finetune

    layers: list[dict[str, Any]] = []
    if config:
        layers.append(read_config_file(resolve_config_path(config)))
    layers.append(parse_set(set_))
    layers.append(
        _options(
            "finetune",
            task=task,
            seeds=seeds,
            data_dir=data_dir,
            lr=lr,
            epochs=epochs,
            batch_size=batch_size,
            max_steps=max_steps,
        )
    )
    cfg = load_config(FinetuneConfig, None, *layers)
    run_finetune(cfg, run_dir, checkpoint=checkpoint, predict_test=predict_test)


# ---------------------------------------------------------------------------------------------
# bertpld report


@app.command("report")
def report_cmd(
    runs: Annotated[
        list[Path],
        typer.Argument(metavar="RUN", help="Run directories written by `bertpld pretrain` (any number)."),
    ],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Directory for report.md, report.html, report.json and plots.")
    ],
    baseline: Annotated[
        Path | None,
        typer.Option(help="The run the others are compared to (default: the Post-LN run among RUNS)."),
    ] = None,
) -> None:
    """Compare runs against the Post-LN baseline: cost, loss, time-to-target, fine-tuning, plots.

    Reads each run's config.json, env.json, data.json, metrics.jsonl, summary.json and
    finetune/TASK/results.json. Incomplete runs, runs on different data and a missing baseline are
    reported as warnings, with a partial report where that still makes sense.

    \b
    Example:
      bertpld report runs/postln runs/preln runs/pld --out runs/report
    """
    from bertpld.report import print_summary, write_report

    print_summary(write_report(runs, out, baseline))


# ---------------------------------------------------------------------------------------------
# bertpld export


@app.command("export")
def export_cmd(
    run: Annotated[Path, typer.Argument(help="Run directory written by `bertpld pretrain`.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory to write (replaced if it exists).")],
    checkpoint: Annotated[
        int | None, typer.Option(help="Checkpoint step to export (default: the latest).")
    ] = None,
) -> None:
    """Export a checkpoint as a Hugging Face transformers model directory (loads offline).

    Writes config.json, model.safetensors, tokenizer.json and tokenizer_config.json. A Post-LN run
    becomes BertForMaskedLM (BertForPreTraining when NSP was trained); a Pre-LN / PLD run becomes
    RobertaPreLayerNormForMaskedLM, which computes the same function (position ids mapped exactly).

    \b
    Load it with:
      from transformers import AutoModelForMaskedLM, AutoTokenizer
      tok = AutoTokenizer.from_pretrained("DIR"); model = AutoModelForMaskedLM.from_pretrained("DIR")
    """
    from bertpld.export import export_run

    info = export_run(run, out, checkpoint)
    typer.echo(f"exported {info['checkpoint']} of {run} as {info['architecture']} to {out}")
    if info["not_exported"]:
        typer.echo(f"not exported ({info['note']}): {', '.join(info['not_exported'])}")


def main() -> None:
    try:
        app()
    except BertpldError as e:
        typer.echo(f"error: {e}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
