"""Checkpoints: atomic writes, tied weights, RNG state, pruning, safe loading."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from bertpld import checkpoint
from bertpld.errors import BertpldError


class Tied(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(5, 3)
        self.out = torch.nn.Linear(3, 5)
        self.out.weight = self.emb.weight


def test_save_load_roundtrip_with_tied_weights_and_pruning(tmp_path: Path) -> None:
    model = Tied()
    (tmp_path / "config.json").write_text("{}")
    for step in (10, 20, 30):
        checkpoint.save_checkpoint(tmp_path, step, model, {"step": step}, {"samples": step}, keep=2)
    assert [s for s, _ in checkpoint.list_checkpoints(tmp_path)] == [20, 30]
    latest = checkpoint.latest_checkpoint(tmp_path)
    assert latest == checkpoint.checkpoint_dir(tmp_path, 30)
    weights = checkpoint.load_model_weights(latest)
    assert set(weights) == set(model.state_dict())
    fresh = Tied()
    fresh.load_state_dict(weights)
    assert torch.equal(fresh.out.weight, model.emb.weight)
    assert checkpoint.load_training_state(latest) == {"step": 30}
    assert checkpoint.find_checkpoint(tmp_path, 20).name == "step-000000020"
    with pytest.raises(BertpldError, match="no checkpoint at step 10"):
        checkpoint.find_checkpoint(tmp_path, 10)


def test_interrupted_write_keeps_the_previous_checkpoint(tmp_path: Path, monkeypatch) -> None:
    model = Tied()
    checkpoint.save_checkpoint(tmp_path, 1, model, {}, {}, keep=3)

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint.torch, "save", crash)
    with pytest.raises(OSError):
        checkpoint.save_checkpoint(tmp_path, 2, model, {}, {}, keep=3)
    assert checkpoint.latest_checkpoint(tmp_path).name == "step-000000001"
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-000000001"]


def test_rng_state_roundtrip_through_a_weights_only_file(tmp_path: Path) -> None:
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    state = checkpoint.rng_state()
    torch.save(state, tmp_path / "rng.pt")
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    checkpoint.set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_pickled_code_is_refused(tmp_path: Path) -> None:
    ckpt = tmp_path / "checkpoints" / "step-000000001"
    ckpt.mkdir(parents=True)
    torch.save({"evil": Tied}, ckpt / "state.pt")  # a class reference needs full unpickling
    with pytest.raises(BertpldError, match="cannot load training state"):
        checkpoint.load_training_state(ckpt)
    (ckpt / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(BertpldError, match="not a readable safetensors"):
        checkpoint.load_model_weights(ckpt)
