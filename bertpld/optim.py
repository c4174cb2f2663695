"""Optimizers (AdamW, LAMB) with BERT's no-decay rule, and the learning-rate schedules.

Parameters whose gradient is None are skipped by both optimizers: a block that PLD dropped on
every micro-step of an optimizer step gets no momentum update and no weight decay for that step,
exactly as if it had not been part of the model for that step (DeepSpeed instead filled zero
gradients, which still moved dropped blocks through momentum and decay). A test pins this.
"""

from __future__ import annotations

import math

import torch

from bertpld.config import TrainConfig


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: matrices and embeddings decay; biases and LayerNorm weights (1-D) do not."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if p.ndim >= 2 else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig, fused: bool) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg.weight_decay)
    if cfg.optimizer == "lamb":
        return Lamb(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, fused=fused or None)


def lr_multiplier(step: int, cfg: TrainConfig, total_steps: int) -> float:
    """Factor applied to the peak lr at optimizer step `step` (0-based).

    Linear warmup over `warmup` (a fraction of total_steps if < 1, else steps), then:
    linear or cosine decay to 0 at total_steps, the paper's exponential 0.99^((step-warmup)/1000),
    or constant.
    """
    warmup = cfg.warmup * total_steps if cfg.warmup < 1 else cfg.warmup
    warmup = max(int(round(warmup)), 0)
    if step < warmup:
        return (step + 1) / warmup
    if cfg.schedule == "constant":
        return 1.0
    if cfg.schedule == "exp":
        return 0.99 ** ((step - warmup) / 1000)
    progress = min(max((step - warmup) / max(total_steps - warmup, 1), 0.0), 1.0)
    if cfg.schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0 - progress


class Lamb(torch.optim.Optimizer):
    """LAMB (You et al. 2020): Adam direction, rescaled per tensor by the trust ratio ||w|| / ||update||.

    Decoupled weight decay is part of the update before the trust ratio, as in the paper.
    Bias correction is applied (as in NVIDIA's and DeepSpeed's BERT recipes).
    """

    def __init__(
        self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-6, weight_decay: float = 0.0
    ):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = 0  # a Python int: no device sync to read it
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                state["step"] += 1
                t = state["step"]
                m, v = state["exp_avg"], state["exp_avg_sq"]
                m.mul_(beta1).add_(p.grad, alpha=1 - beta1)
                v.mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
                update = (m / (1 - beta1**t)) / ((v / (1 - beta2**t)).sqrt_().add_(group["eps"]))
                if group["weight_decay"]:
                    update.add_(p, alpha=group["weight_decay"])
                w_norm, u_norm = p.norm(), update.norm()
                trust = torch.where((w_norm > 0) & (u_norm > 0), w_norm / u_norm, torch.ones_like(w_norm))
                p.add_(update * trust, alpha=-group["lr"])
        return loss
