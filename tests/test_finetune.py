"""Fine-tuning end to end from a tiny pre-training run directory made here (not by `pretrain`)."""

import json
import time

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, normalizers, pre_tokenizers, trainers
from tokenizers.models import WordPiece

from bertpld import finetune as F
from bertpld import glue
from bertpld.checkpoint import save_checkpoint
from bertpld.config import FinetuneConfig, PretrainConfig, config_to_dict, load_config
from bertpld.errors import BertpldError
from bertpld.model import BertForPreTraining


def _tokenizer(vocab_size=1500):
    rt = glue.load_split(glue.TASKS["rt-polarity"], "train").text_a
    tok = Tokenizer(WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(
        rt,
        trainers.WordPieceTrainer(
            vocab_size=vocab_size, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        ),
    )
    return tok


def make_run(path, norm="post", step=7, hidden=64, layers=2, heads=2, tok=None):
    """config.json + tokenizer.json + a checkpoint of a freshly initialised tiny BertForPreTraining."""
    tok = tok or _tokenizer()
    model_over = dict(
        vocab_size=tok.get_vocab_size(),
        hidden_size=hidden,
        num_layers=layers,
        num_heads=2,
        intermediate_size=4 * hidden,
    )
    pcfg = load_config(PretrainConfig, None, {"model": {**model_over, "norm": norm}})
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps(config_to_dict(pcfg)))
    tok.save(str(path / "tokenizer.json"))
    torch.manual_seed(0)
    save_checkpoint(path, step, BertForPreTraining(pcfg.model, nsp=True), {}, {"samples": 0}, keep=1)
    return pcfg, tok


@pytest.fixture(scope="module")
def tok():
    return _tokenizer()


def _cfg(**ft):
    # one thread: on a shared 2-core machine, two threads per process are slower, not faster
    return load_config(FinetuneConfig, None, {"finetune": ft, "impl": {"device": "cpu", "threads": 1}})


def test_encode_pairs_truncates_longer_side_and_sets_types(tok):
    split = glue.Split(
        ["a good film " * 20, "bad"], ["the worst", "fine " * 50], np.array([0, 1]), ["0", "1"], "x"
    )
    enc = F.encode(tok, split, 16)
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    assert enc.lengths.tolist() == [16, 16]
    a0 = enc.ids[enc.offsets[0] : enc.offsets[1]]
    t0 = enc.types[enc.offsets[0] : enc.offsets[1]]
    assert a0[0] == cls and a0[-1] == sep and list(a0).count(sep) == 2
    nb = len(tok.encode("the worst", add_special_tokens=False).ids)
    assert t0.tolist() == [0] * (16 - nb - 1) + [1] * (nb + 1)  # the short side kept whole
    b = enc.batch(np.array([1, 0]), torch.device("cpu"))
    assert b["input_ids"].shape == (2, 16) and b["labels"].tolist() == [1, 0]
    single = F.encode(tok, glue.Split(["bad", "a good film"], None, None, ["0", "1"], "x"), 128)
    batch = single.batch(np.array([0, 1]), torch.device("cpu"))
    # dynamic padding: only to the longest sequence in the batch
    assert batch["input_ids"].shape[1] == int(single.lengths.max()) < 10
    assert batch["attention_mask"].sum().item() == int(single.lengths.sum())
    assert (batch["input_ids"][batch["attention_mask"] == 0] == 0).all()


@pytest.mark.parametrize("norm", ["post", "pre"])
def test_fast_end_to_end_writes_every_output(tmp_path, tok, norm):
    run = tmp_path / "run"
    make_run(run, norm=norm, tok=tok)
    cfg = _cfg(max_steps=6, seeds=2, max_train_examples=200, batch_size=16, eval_batch_size=256)
    res = F.finetune(cfg, run, log=lambda m: None)["rt-polarity"]
    out = run / "finetune" / "rt-polarity"
    saved = json.loads((out / "results.json").read_text())
    assert (
        saved["task"] == "rt-polarity" and saved["metric_names"] == ["acc"] and saved["main_metric"] == "acc"
    )
    assert [s["seed"] for s in saved["seeds"]] == [42, 43] and saved["config"]["resolved"]["lr"] == 7e-5
    assert saved["config"]["pretrained"]["checkpoint_step"] == 7
    for s in saved["seeds"]:
        assert s["steps"] == 6 and s["flops"] > s["train_flops"] > 0 and s["wall_s"] > 0
        assert 0 <= s["metrics"]["acc"] <= 1
    assert saved["median"]["acc"] == pytest.approx(np.median([s["metrics"]["acc"] for s in saved["seeds"]]))
    assert saved["median"] == res["median"]
    # dev predictions: one row per dev sentence, and their accuracy is the reported one
    lines = (out / "predictions" / "seed-42" / "validation.tsv").read_text().splitlines()
    assert (
        lines[0] == "index\tlabel\tprediction" and len(lines) - 1 == saved["data"]["validation"]["examples"]
    )
    rows = [r.split("\t") for r in lines[1:]]
    assert np.mean([r[1] == r[2] for r in rows]) == pytest.approx(saved["seeds"][0]["metrics"]["acc"])
    assert list((out / "tb").rglob("events.out.tfevents*"))
    # no temp dirs left; the lock file stays (it names the last holder)
    assert not [p for p in (run / "finetune").iterdir() if p.name.startswith(".") and p.name != ".lock"]


def test_flops_count_executed_padded_tokens(tmp_path, tok):
    run = tmp_path / "run"
    pcfg, _ = make_run(run, tok=tok)
    cfg = _cfg(max_steps=1, max_train_examples=32, batch_size=32)
    train = F.encode(tok, glue.load_split(glue.TASKS["rt-polarity"], "train"), 128)
    train = F._subset(train, 32, cfg.finetune.seed)
    enc = {"validation": F._subset(train, 5, 0)}
    r = F.train_one(
        glue.TASKS["rt-polarity"], train, enc, pcfg.model, F.load_model_weights(F.find_checkpoint(run)),
        cfg, 1e-4, 1, 0, torch.device("cpu"), torch.float32,
    )  # fmt: skip
    h, L, T = 64, 2, int(train.lengths.max())
    per_token = 8 * h * h + 4 * h * 4 * h + 4 * T * h
    expected_train = 3 * (L * 32 * T * per_token + 32 * (2 * h * h + 2 * h * 2))
    assert r["train_flops"] == pytest.approx(expected_train)


def test_glue_tasks_pairs_regression_mnli_and_table(tmp_path, tok):
    run = tmp_path / "run"
    make_run(run, tok=tok)
    data = tmp_path / "glue"
    rng = np.random.default_rng(0)
    words = glue.load_split(glue.TASKS["rt-polarity"], "validation").text_a[:60]
    for name in ("stsb", "mnli", "mrpc"):
        t = glue.TASKS[name]
        for split in ("train", *t.dev, *t.tests):
            cols = {f: list(rng.choice(words, 20)) for f in t.fields}
            cols["idx"] = list(range(20))
            if split.startswith("test"):
                cols["label"] = [-1.0 if t.is_regression else -1] * 20
            else:
                cols["label"] = (
                    list(rng.uniform(0, 5, 20))
                    if t.is_regression
                    else list(rng.integers(0, t.num_labels, 20))
                )
            (data / name).mkdir(parents=True, exist_ok=True)
            with open(data / name / f"{split}.jsonl", "w") as f:
                for i in range(20):
                    f.write(
                        json.dumps(
                            {k: (v[i].item() if hasattr(v[i], "item") else v[i]) for k, v in cols.items()}
                        )
                        + "\n"
                    )
    results = {}
    for name in ("stsb", "mnli", "mrpc"):
        cfg = _cfg(task=name, data_dir=str(data), max_steps=2, batch_size=8)
        results.update(F.finetune(cfg, run, predict_test=True, log=lambda m: None))
    assert set(results["mnli"]["median"]) == {"acc_m", "acc_mm"}
    assert set(results["stsb"]["median"]) == {"pearson", "spearman"}
    assert set(results["mrpc"]["median"]) == {"f1", "acc"}
    sub = (run / "finetune/mnli/submission/MNLI-mm.tsv").read_text().splitlines()
    assert sub[0] == "index\tprediction" and len(sub) == 21
    assert {r.split("\t")[1] for r in sub[1:]} <= {"entailment", "neutral", "contradiction"}
    mrpc = (run / "finetune/mrpc/submission/MRPC.tsv").read_text().splitlines()
    assert {r.split("\t")[1] for r in mrpc[1:]} <= {"0", "1"}
    table = F.write_glue_table(results, run / "finetune", {"checkpoint": "x"})
    scores = {n: 100 * np.mean(list(results[n]["median"].values())) for n in results}
    assert table["average"] == pytest.approx(np.mean(list(scores.values())))
    md = (run / "finetune/glue.md").read_text()
    assert "MRPC f1/acc" in md and "MNLI acc_m/acc_mm" in md and f"{table['average']:.1f}" in md


def test_task_all_writes_every_task_and_the_glue_table(tmp_path, tok):
    from tests.test_glue import write_glue_tsv

    run = tmp_path / "run"
    make_run(run, tok=tok)
    data = write_glue_tsv(tmp_path / "glue_data")
    msgs = []
    results = F.finetune(
        _cfg(task="all", data_dir=str(data), max_steps=1, batch_size=4), run, log=msgs.append
    )
    assert list(results) == glue.GLUE_TASKS
    for name in glue.GLUE_TASKS:
        assert (run / "finetune" / name / "results.json").is_file()
    assert results["qqp"]["data"]["train"]["skipped_malformed"] == 1
    assert any("qqp train: train.tsv: skipped 1 malformed" in m for m in msgs)
    table = json.loads((run / "finetune/glue.json").read_text())
    assert table["average_over"] == ["rte", "mrpc", "stsb", "cola", "sst2", "qnli", "qqp", "mnli"]
    assert "WNLI acc" in (run / "finetune/glue.md").read_text()


def test_bad_input_fails_before_writing(tmp_path, tok, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    run = tmp_path / "run"
    make_run(run, tok=tok)
    with pytest.raises(BertpldError, match="unknown task"):
        F.finetune(_cfg(task="sst5"), run)
    with pytest.raises(BertpldError, match="no checkpoint at step 3"):
        F.finetune(_cfg(), run, checkpoint=3)
    with pytest.raises(BertpldError, match="hub is offline"):
        F.finetune(_cfg(task="all"), run)
    with pytest.raises(BertpldError, match="no such directory"):
        F.finetune(_cfg(task="rte", data_dir=str(tmp_path / "nope")), run)
    other = _tokenizer(vocab_size=900)
    other.save(str(run / "tokenizer.json"))
    with pytest.raises(BertpldError, match="vocabulary of .* differs"):
        F.finetune(_cfg(), run)
    assert not (run / "finetune").exists()


def test_cli_finetune_errors_are_one_line(tmp_path):
    import subprocess
    import sys

    p = subprocess.run(
        [sys.executable, "-m", "bertpld.cli", "finetune", "--from", str(tmp_path), "--task", "glue"],
        capture_output=True,
        text=True,
    )
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "valid: rt-polarity, cola" in p.stderr


def test_finetune_learns_rt_polarity(tmp_path, tok):
    """A tiny randomly initialised encoder must learn sentiment from the words: dev accuracy > 0.6.

    One epoch at lr 1e-3 (a fresh encoder needs more than the paper's lr) gives ~0.70 in ~15 s.
    """
    run = tmp_path / "run"
    make_run(run, norm="post", tok=tok)
    t0 = time.perf_counter()
    res = F.finetune(_cfg(epochs=1, lr=1e-3, max_seq_len=64), run, log=lambda m: None)["rt-polarity"]
    assert res["median"]["acc"] > 0.6, res["median"]
    assert time.perf_counter() - t0 < 120


@pytest.mark.slow
@pytest.mark.parametrize("norm", ["post", "pre"])
def test_finetune_learns_rt_polarity_paper_recipe(tmp_path, tok, norm):
    """Three seeds of three epochs with warmup and decay, both block arrangements."""
    run = tmp_path / "run"
    make_run(run, norm=norm, tok=tok)
    res = F.finetune(_cfg(epochs=3, lr=1e-3, seeds=3, max_seq_len=64), run, log=lambda m: None)["rt-polarity"]
    assert all(s["metrics"]["acc"] > 0.6 for s in res["seeds"]), res["seeds"]


def test_cli_finetune_runs_and_takes_overrides(tmp_path, tok):
    import subprocess
    import sys

    run = tmp_path / "run"
    make_run(run, tok=tok)
    args = ["--from", str(run), "--max-steps", "3", "--batch-size", "8", "--lr", "3e-4", "--seeds", "1"]
    args += ["--set", "finetune.max_train_examples=40", "--set", "impl.threads=1", "--set", "impl.device=cpu"]
    p = subprocess.run(
        [sys.executable, "-m", "bertpld.cli", "finetune", *args], capture_output=True, text=True
    )
    assert p.returncode == 0, p.stderr
    saved = json.loads((run / "finetune/rt-polarity/results.json").read_text())
    assert saved["config"]["finetune"]["batch_size"] == 8 and saved["config"]["resolved"]["lr"] == 3e-4
    assert saved["config"]["resolved"]["train_examples"] == 40 and saved["seeds"][0]["steps"] == 3
    assert "median over 1 seed(s): acc" in p.stderr
