"""What clusters do to jobs: a second writer, a full disk, a killed process (lock released)."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from bertpld import checkpoint, lock
from bertpld.cli import app
from bertpld.errors import BertpldError
from bertpld.train import pretrain
from tests.conftest import make_prepared_data
from tests.test_train import ROOT, TINY, _launch, _wait_for, make_cfg, rows


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_prepared_data(tmp_path_factory.mktemp("cluster"), vocab_size=400, val_fraction=0.1)


def _no_temporaries(run: Path) -> bool:
    return not [p for p in run.rglob("*") if p.name.startswith(".") and p.name.endswith(".tmp")]


def test_a_second_writer_is_refused_and_changes_nothing(data: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    layers = [
        TINY,
        {"data": {"path": str(data)}},
        {"train": {"max_steps": 400, "save_every": 2, "total_steps": 400}},
    ]
    first = _launch(run, layers)  # a live run: holds the directory
    try:
        _wait_for(run / "checkpoints" / "step-000000002" / "meta.json", first)
        assert lock.held_by_other(run)
        before = {p: p.read_bytes() for p in (run / "config.json", run / "data.json", run / "env.json")}
        for extra in (["--resume"], ["--overwrite"], []):
            res = CliRunner().invoke(
                app,
                [
                    "pretrain",
                    "--out",
                    str(run),
                    "--data",
                    str(data),
                    "--config",
                    str(ROOT / "configs/demo.toml"),
                    *extra,
                ],
            )
            err = res.exception
            assert isinstance(err, BertpldError), res.output
            assert "\n" not in str(err)
            assert str(err).startswith(f"{run}: in use by bertpld pretrain (pid {first.pid} on ")
        assert {p: p.read_bytes() for p in before} == before
        assert (run / "checkpoints").is_dir()  # --overwrite deleted nothing
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    # kill -9 released the lock: the next writer resumes
    assert not lock.held_by_other(run)
    done = checkpoint.list_checkpoints(run)[-1][0]
    train = {"max_steps": done + 4, "save_every": 2, "total_steps": 400}
    assert pretrain(make_cfg(data, train=train), run, resume=True)["steps"] == done + 4
    steps = [r["step"] for r in rows(run) if "lr" in r]  # training rows (an evaluation row may share a step)
    assert steps == list(range(1, done + 5))  # one writer at a time: no step twice, none missing


def test_finetune_holds_its_directory(data: Path, tmp_path: Path) -> None:
    from bertpld.config import FinetuneConfig, load_config
    from bertpld.finetune import finetune

    run = tmp_path / "run"
    pretrain(make_cfg(data, train={"max_steps": 2, "eval_every": 0}), run)
    cfg = load_config(FinetuneConfig, None, {"finetune": {"max_steps": 1, "max_train_examples": 8}})
    script = f"import time, sys; from bertpld import lock\nwith lock.hold({str(run / 'finetune')!r}, 'test'):\n    print('held', flush=True); time.sleep(60)"
    holder = subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(BertpldError, match=r"/finetune: in use by test \(pid \d+ on .+\); one writer"):
            finetune(cfg, run)
        assert not (run / "finetune" / "rt-polarity").exists()
    finally:
        holder.kill()
        holder.wait()


def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_at_a_checkpoint_stops_with_the_last_one_intact(
    data: Path, tmp_path: Path, monkeypatch
) -> None:
    import bertpld.checkpoint as C

    fixed = {"save_every": 2, "eval_every": 2, "total_steps": 8}
    full = pretrain(make_cfg(data, train={"max_steps": 8, **fixed}), tmp_path / "full")
    run = tmp_path / "run"
    real = C.save_file
    monkeypatch.setattr(
        C,
        "save_file",
        lambda t, p, **kw: (
            _enospc()
            if "step-000000004" in str(Path(p).parent.name) or ".step-000000004." in str(p)
            else real(t, p, **kw)
        ),
    )
    with pytest.raises(BertpldError) as err:
        pretrain(make_cfg(data, train={"max_steps": 8, **fixed}), run)
    msg = str(err.value)
    assert "\n" not in msg and "No space left on device" in msg and "step-000000004" in msg
    assert [s for s, _ in checkpoint.list_checkpoints(run)] == [2]
    assert _no_temporaries(run) and not (run / "summary.json").exists()
    monkeypatch.setattr(C, "save_file", real)
    resumed = pretrain(make_cfg(data, train={"max_steps": 8, **fixed}), run, resume=True)
    assert resumed["final_val_loss"] == full["final_val_loss"]
    wa = checkpoint.load_model_weights(checkpoint.latest_checkpoint(tmp_path / "full"))
    wb = checkpoint.load_model_weights(checkpoint.latest_checkpoint(run))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_an_unwritable_metrics_file_stops_before_the_next_checkpoint(
    data: Path, tmp_path: Path, monkeypatch
) -> None:
    import bertpld.train as T

    class Broken:
        def write(self, _):
            raise OSError(errno.EACCES, "Permission denied")

        flush = close = lambda self: None

    real = T._Writer.write

    def write(self, row):
        if row["step"] == 4:  # a checkpoint step: its checkpoint must not be written past a lost row
            self.file = Broken()
        return real(self, row)

    monkeypatch.setattr(T._Writer, "write", write)
    run = tmp_path / "run"
    with pytest.raises(BertpldError) as err:
        pretrain(make_cfg(data, train={"max_steps": 8, "save_every": 2, "total_steps": 8}), run)
    msg = str(err.value)
    assert msg.startswith(f"{run / 'metrics.jsonl'}: write failed (Permission denied)") and "\n" not in msg
    assert [s for s, _ in checkpoint.list_checkpoints(run)] == [2] and _no_temporaries(run)
    assert max(r["step"] for r in rows(run)) == 3
    monkeypatch.setattr(T._Writer, "write", real)
    assert (
        pretrain(make_cfg(data, train={"max_steps": 8, "save_every": 2, "total_steps": 8}), run, resume=True)[
            "steps"
        ]
        == 8
    )
    assert [r["step"] for r in rows(run)] == list(range(1, 9))


def test_a_failed_finetune_write_keeps_earlier_results(data: Path, tmp_path: Path, monkeypatch) -> None:
    import bertpld.finetune as F
    from bertpld.config import FinetuneConfig, load_config

    run = tmp_path / "run"
    pretrain(make_cfg(data, train={"max_steps": 2, "eval_every": 0}), run)
    cfg = load_config(FinetuneConfig, None, {"finetune": {"max_steps": 1, "max_train_examples": 8}})
    F.finetune(cfg, run)
    results = run / "finetune" / "rt-polarity" / "results.json"
    before = results.read_bytes()
    monkeypatch.setattr(F, "atomic_write_json", _enospc)
    with pytest.raises(
        BertpldError, match=r"write failed \(No space left on device\); results written before are intact"
    ):
        F.finetune(cfg, run)
    assert results.read_bytes() == before and _no_temporaries(run / "finetune")


RESTART_SCRIPT = """
import json, os, signal, sys, time
from bertpld import train
from bertpld.config import PretrainConfig, load_config
if os.environ["RANK"] == "1" and os.environ.get("TORCHELASTIC_RESTART_COUNT") == "0":
    reason = train._stop_reason
    def dying(cfg, counters, *args):  # rank 1 dies mid-run, between two checkpoints
        if counters.step == 5:
            print(f"killed at {time.time()}", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        return reason(cfg, counters, *args)
    train._stop_reason = dying
layers = [json.loads(a) for a in sys.argv[2:]]
train.pretrain(load_config(PretrainConfig, None, *layers), sys.argv[1], resume=True)
"""


def test_torchrun_restarts_a_killed_rank_from_the_last_checkpoint(data: Path, tmp_path: Path) -> None:
    """The one job command (--resume starts fresh or resumes) under torchrun --max-restarts: rank 1
    is killed at step 5; torchrun restarts both ranks, which resume from step 4 and end where an
    uninterrupted run ends, bit for bit (same world size)."""
    import time

    from tests.conftest import torchrun_two

    script = tmp_path / "job.py"
    script.write_text(RESTART_SCRIPT)
    layers = [
        TINY,
        {"data": {"path": str(data)}},
        {"train": {"max_steps": 8, "save_every": 2, "eval_every": 4}},
    ]
    args = [json.dumps(x) for x in layers]
    plain = tmp_path / "plain.py"
    plain.write_text(RESTART_SCRIPT.replace('os.environ["RANK"] == "1"', "False"))
    assert torchrun_two([str(plain), str(tmp_path / "full"), *args]).returncode == 0
    t0 = time.time()
    done = torchrun_two([str(script), str(tmp_path / "run"), *args], restarts=1)
    elapsed = time.time() - t0
    assert done.returncode == 0, done.stderr[-3000:]
    assert "killed at" in done.stdout and "resuming" in done.stdout and "from step-000000004" in done.stdout
    full = json.loads((tmp_path / "full" / "summary.json").read_text())
    run = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert run["steps"] == 8 and run["final_val_loss"] == full["final_val_loss"]
    assert run["flops"] == full["flops"] and run["tokens"] == full["tokens"]
    wa = checkpoint.load_model_weights(checkpoint.latest_checkpoint(tmp_path / "full"))
    wb = checkpoint.load_model_weights(checkpoint.latest_checkpoint(tmp_path / "run"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    print(f"job with one rank killed and restarted: {elapsed:.1f} s")
