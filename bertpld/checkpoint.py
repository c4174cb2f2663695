"""Checkpoints: atomic, complete, and loadable without unpickling arbitrary code.

    runs/NAME/checkpoints/step-000000100/
        model.safetensors   the model's state_dict (tied tensors stored once, aliases in metadata)
        state.pt            everything else that shapes the future: optimizer, grad scaler, counters,
                            data-reader position, every RNG. Loaded with torch.load(weights_only=True).
        meta.json           step, samples, wall-clock: for people and for `bertpld report`

A checkpoint is written into a temporary directory that is renamed into place, so a crash during
the write leaves the previous checkpoint as the latest usable one. The gate generator needs no
state of its own: gates are a pure function of (seed, step).
"""

from __future__ import annotations

import json
import pickle
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from bertpld.atomic import atomic_dir
from bertpld.config import PretrainConfig, config_from_dict, read_run_config_json
from bertpld.errors import BertpldError

_STEP_DIR = re.compile(r"^step-(\d{9})$")


def checkpoint_dir(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"step-{step:09d}"


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints of a run, oldest first."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = []
    for d in root.iterdir():
        m = _STEP_DIR.match(d.name)
        if m and (d / "meta.json").is_file():
            found.append((int(m.group(1)), d))
    return sorted(found)


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1][1] if found else None


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    model: torch.nn.Module,
    state: dict[str, Any],
    meta: dict[str, Any],
    keep: int,
) -> Path:
    """Write checkpoint `step` atomically and delete all but the newest `keep`."""
    target = checkpoint_dir(run_dir, step)
    with atomic_dir(target) as tmp:
        tensors, aliases = _dedup_tied(model.state_dict())
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"aliases": json.dumps(aliases)})
        torch.save(state, tmp / "state.pt")
        (tmp / "meta.json").write_text(json.dumps({"step": step, **meta}, indent=2) + "\n")
    for _, old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def load_model_weights(ckpt: str | Path) -> dict[str, torch.Tensor]:
    """The model state_dict stored in checkpoint directory `ckpt` (tied tensors restored)."""
    path = Path(ckpt) / "model.safetensors"
    try:
        tensors = load_file(str(path))
        with safe_open(str(path), framework="pt") as f:
            aliases = json.loads((f.metadata() or {}).get("aliases", "{}"))
    except (OSError, SafetensorError, json.JSONDecodeError) as e:
        raise BertpldError(f"{path}: not a readable safetensors checkpoint ({e})") from None
    for alias, source in aliases.items():
        tensors[alias] = tensors[source]
    return tensors


def load_training_state(ckpt: str | Path) -> dict[str, Any]:
    path = Path(ckpt) / "state.pt"
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise BertpldError(
            f"{path}: cannot load training state (it holds more than tensors and plain data)"
        ) from None
    except (OSError, RuntimeError, EOFError) as e:
        raise BertpldError(f"{path}: cannot load training state ({e})") from None


def find_checkpoint(run_dir: str | Path, step: int | None = None) -> Path:
    """The checkpoint of `step` (latest if None); a one-line error when there is none."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.json").is_file():
        raise BertpldError(f"{run_dir}: not a pre-training run directory (no config.json)")
    found = dict(list_checkpoints(run_dir))
    if not found:
        raise BertpldError(f"{run_dir}: the run has no checkpoint yet")
    if step is None:
        return found[max(found)]
    if step not in found:
        raise BertpldError(
            f"{run_dir}: no checkpoint at step {step} (have: {', '.join(map(str, sorted(found)))})"
        )
    return found[step]


def load_run_config(run_dir: str | Path) -> PretrainConfig:
    return config_from_dict(PretrainConfig, read_run_config_json(Path(run_dir) / "config.json"))


# ---------------------------------------------------------------------------------------------
# RNG state: every generator that shapes the future


def rng_state() -> dict[str, Any]:
    py = random.getstate()
    np_state = np.random.get_state(legacy=False)
    state = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": {
            "bit_generator": np_state["bit_generator"],
            "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": n["bit_generator"],
            "state": {"key": n["key"].numpy().astype(np.uint32), "pos": n["pos"]},
            "has_gauss": n["has_gauss"],
            "gauss": n["gauss"],
        }
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _dedup_tied(sd: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """safetensors refuses tensors that share memory: store each storage once, remember aliases."""
    seen: dict[tuple[int, int, tuple[int, ...]], str] = {}
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    for name, t in sd.items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))
        if key in seen:
            aliases[name] = seen[key]
        else:
            seen[key] = name
            tensors[name] = t.detach().cpu().contiguous()
    return tensors, aliases
