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

from bertpld import checkpoint, lock
from bertpld.errors import BertpldError
from bertpld.train import pretrain
from tests.conftest import make_prepared_data
from tests.test_train import ROOT, TINY, _launch, _wait_for, make_cfg, rows


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_prepared_data(tmp_path_factory.mktemp("cluster"), vocab_size=400, val_fraction=0.1)


def _no_temporaries(run: Path) -> bool:
    return not [p for p in run.rglob("*") if p.name.startswith(".") and p.name.endswith(".tmp")]


def _cli(argv: list[str], monkeypatch, capsys) -> tuple[int, str]:
    """`bertpld ARGV` in this process, as the console script runs it: (exit code, stderr)."""
    from bertpld.cli import main

    monkeypatch.setattr(sys, "argv", ["bertpld", *argv])
    with pytest.raises(SystemExit) as done:
        main()
    return done.value.code, capsys.readouterr().err


def test_a_second_writer_is_refused_and_changes_nothing(
    data: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    run = tmp_path / "run"
    layers = [
        TINY,
        {"data": {"path": str(data)}},
        {
            "train": {
                "max_steps": 100_000,
                "save_every": 2,
                "total_steps": 100_000,
                "keep_checkpoints": 100_000,
            }
        },
    ]
    first = _launch(run, layers)  # a live run: holds the directory
    try:
        first_ckpt = run / "checkpoints" / "step-000000002" / "meta.json"
        _wait_for(first_ckpt, first)
        assert lock.held_by_other(run)
        before = {
            p: p.read_bytes() for p in (run / "config.json", run / "data.json", run / "env.json", first_ckpt)
        }
        metrics = (run / "metrics.jsonl").stat().st_ino, (run / "metrics.jsonl").read_text().splitlines()[0]
        for extra in (["--resume"], ["--overwrite"], []):
            argv = ["pretrain", "--out", str(run), "--data", str(data), "--config", "demo", *extra]
            code, err = _cli(argv, monkeypatch, capsys)
            assert code == 2, (extra, err)
            assert err.count("\n") == 1, err  # one line
            assert err.startswith(f"error: {run}: in use by bertpld pretrain (pid {first.pid} on "), err
        # nothing was deleted or rewritten (--overwrite would have removed the checkpoints and
        # the metrics file the live run writes to)
        assert {p: p.read_bytes() for p in before} == before
        assert (run / "metrics.jsonl").stat().st_ino == metrics[0]
        assert (run / "metrics.jsonl").read_text().splitlines()[0] == metrics[1]
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    # kill -9 released the lock: the next writer resumes
    assert not lock.held_by_other(run)
    done = checkpoint.list_checkpoints(run)[-1][0]
    train = {"max_steps": done + 4, "save_every": 2, "total_steps": 100_000, "keep_checkpoints": 100_000}
    assert pretrain(make_cfg(data, train=train), run, resume=True)["steps"] == done + 4
    steps = [r["step"] for r in rows(run)]
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


RANK_SCRIPT = """
import errno, sys
from bertpld import checkpoint, cli, distributed, train

mode = sys.argv.pop(1)

def enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")

real_save, real_write = checkpoint.save_file, train._Writer.write

def save_file(tensors, path, **kw):  # the checkpoint of step 4 cannot be written on rank 0
    return enospc() if "step-000000004" in str(path) else real_save(tensors, path, **kw)

class Full:
    write = flush = enospc
    close = lambda self: None

def write(self, row):  # the metrics row of step 3 cannot be written on rank 0
    if row["step"] == 3:
        self.file = Full()
    return real_write(self, row)

if mode == "checkpoint":
    checkpoint.save_file = save_file
else:
    train._Writer.write = write
sys.argv[0] = "bertpld"
cli.main()
"""


def _two_ranks(args: list[str], tmp: Path, timeout: float = 240) -> list[subprocess.CompletedProcess]:
    """`args` as ranks 0 and 1 of a 2-process gloo job, launched without torchrun so that each
    rank's own exit code and stderr can be checked."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
    env.update(MASTER_PORT=str(port), WORLD_SIZE="2")
    procs = [
        subprocess.Popen(
            [sys.executable, *args],
            env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in range(2)
    ]
    done = []
    for p in procs:
        out, err = p.communicate(timeout=timeout)
        done.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
    return done


@pytest.mark.parametrize("fails", ["checkpoint", "metrics"])
def test_a_write_failing_on_rank_0_stops_every_rank_with_one_line(
    data: Path, tmp_path: Path, fails: str
) -> None:
    """2 gloo ranks; rank 0 cannot write the checkpoint of step 4 (or the metrics row of step 3):
    both ranks stop with exit code 2 and one `error:` line, the checkpoint of step 2 is intact and
    the run resumes from it."""
    script = tmp_path / "rank.py"
    script.write_text(RANK_SCRIPT)
    run = tmp_path / "run"
    sets = ["model.num_layers=2", "model.hidden_size=64", "model.num_heads=2", "model.intermediate_size=128"]
    sets += ["train.global_batch_size=8", "train.save_every=2", "train.eval_every=2", "train.log_every=1"]
    sets += ["impl.micro_batch_size=4", "impl.threads=1"]
    cli = ["pretrain", "--config", "demo", "--data", str(data), "--out", str(run), "--max-steps", "6"]
    cli += [x for kv in sets for x in ("--set", kv)]
    ranks = _two_ranks([str(script), fails, *cli], tmp_path)
    for r, done in enumerate(ranks):
        errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
        assert done.returncode == 2, (r, done.returncode, done.stderr[-3000:])
        assert len(errors) == 1 and "Traceback" not in done.stderr, (r, done.stderr[-3000:])
    target = "step-000000004" if fails == "checkpoint" else "metrics.jsonl"
    assert "No space left on device" in ranks[0].stderr and target in ranks[0].stderr
    other = (
        "No space left on device" if fails == "checkpoint" else "rank 0 could not write to the run directory"
    )
    assert other in ranks[1].stderr
    assert [s for s, _ in checkpoint.list_checkpoints(run)] == [2] and _no_temporaries(run)
    assert not (run / "summary.json").exists()
    # the checkpoint of step 2 is whole: one process resumes from it to the end
    done = subprocess.run(
        [sys.executable, "-m", "bertpld.cli", *cli, "--resume"],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert [r["step"] for r in rows(run)] == list(range(1, 7))
