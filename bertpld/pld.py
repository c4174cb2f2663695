"""Progressive Layer Dropping as pure functions: schedule, keep probabilities, gate sampling.

Nothing here holds state: theta is a function of the optimizer step, and the gates of a step are
a function of (seed, step). A resumed run therefore draws exactly the gates of an uninterrupted
one, every data-parallel rank draws the same gates without communicating, and the gate stream
does not depend on the world size or the micro-batch: every micro-batch of a step, on every rank,
runs the step's gates (docs/METHOD.md, "Gates per step"). The encoder (`bertpld.model.Encoder`)
is the only consumer.

Typical use in a training step (see `layer_gates`)::

    t = theta(step, cfg.pld.theta_bar, resolve_gamma(cfg.pld, total_steps))
    gates, scales = layer_gates(t, num_layers, cfg.pld.variant, seed, step)
    out = model(..., gates=gates, keep_probs=scales)
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

import torch

from bertpld.config import PLDConfig
from bertpld.errors import BertpldError

VARIANTS = ("paper", "deepspeed")


def theta(step: int, theta_bar: float, gamma: float) -> float:
    """theta(t) = (1 - theta_bar) exp(-gamma t) + theta_bar: 1 at t = 0, decreasing to theta_bar."""
    return (1.0 - theta_bar) * math.exp(-gamma * step) + theta_bar


def resolve_gamma(cfg: PLDConfig, total_steps: int) -> float:
    """`cfg.gamma` if set (DeepSpeed used 0.001), else the paper's rule 100 / total_steps."""
    if cfg.gamma is not None:
        return cfg.gamma
    if total_steps <= 0:
        raise BertpldError(
            "pld.gamma: none means 100 / total steps, but the total is unknown; "
            "set pld.gamma or train.total_steps (or max_steps / max_samples)"
        )
    return 100.0 / total_steps


def _check(num_layers: int, variant: str) -> None:
    if variant not in VARIANTS:
        raise BertpldError(f"pld.variant: got {variant!r}, expected one of {', '.join(VARIANTS)}")
    assert num_layers >= 1, num_layers


def keep_probs(theta: float, num_layers: int, variant: str = "paper") -> list[float]:
    """Per block (bottom first), the p_l that a kept block divides its residual increments by.

    paper:     p_l = 1 - (l / L)(1 - theta),        l = 1..L (the top block gets theta)
    deepspeed: 1 - ((i + 1) / L)(1 - theta),        i = 0..L-1 (the same numbers as 'paper';
               DeepSpeed samples with a different probability, see `sample_probs`).
    """
    _check(num_layers, variant)
    return [1.0 - (i + 1) / num_layers * (1.0 - theta) for i in range(num_layers)]


def sample_probs(theta: float, num_layers: int, variant: str = "paper") -> list[float]:
    """Per block (bottom first), the probability that its gate is 1.

    paper:     equal to `keep_probs` (sampling and scaling agree: each increment is unbiased).
    deepspeed: 1 - (i / L)(1 - theta) for 0-based i, i.e. one position lower than its scale:
               the first block is always kept. Offered only to match DeepSpeed runs.
    """
    _check(num_layers, variant)
    if variant == "paper":
        return keep_probs(theta, num_layers, variant)
    return [1.0 - i / num_layers * (1.0 - theta) for i in range(num_layers)]


def expected_blocks(theta: float, num_layers: int, variant: str = "paper") -> float:
    """Expected executed blocks: L - (1 - theta)(L + 1)/2 for 'paper' (8.75 of 12 at theta 0.5)."""
    return sum(sample_probs(theta, num_layers, variant))


def _generator(seed: int, step: int) -> torch.Generator:
    # sha256, not hash(): Python's string hash is salted per process, and ranks must agree. (The
    # ':0' ends the key as it did when gates were drawn per micro-step: a run of one micro-step
    # per step draws the gates it drew then.)
    digest = hashlib.sha256(f"bertpld-pld:{seed}:{step}:0".encode()).digest()
    return torch.Generator(device="cpu").manual_seed(int.from_bytes(digest[:8], "little") >> 1)


def sample_gates(probs: Sequence[float], seed: int, step: int) -> list[bool]:
    """One Bernoulli(probs[l]) gate per block, drawn on the CPU from a generator seeded by
    (seed, step): identical on every rank and after resume, never a device sync.

    Pass `sample_probs(...)` here (for the 'paper' variant it equals `keep_probs(...)`).
    """
    u = torch.rand(len(probs), generator=_generator(seed, step), dtype=torch.float64)
    return [bool(x < p) for x, p in zip(u.tolist(), probs)]


def layer_gates(
    theta: float, num_layers: int, variant: str, seed: int, step: int
) -> tuple[list[bool], list[float]]:
    """(gates, keep_probs) for the micro-batches of optimizer step `step`, ready for
    `model(..., gates=, keep_probs=)`."""
    gates = sample_gates(sample_probs(theta, num_layers, variant), seed, step)
    return gates, keep_probs(theta, num_layers, variant)
