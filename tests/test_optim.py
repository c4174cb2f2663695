"""Optimizers and learning-rate schedules."""

from __future__ import annotations

import math

import pytest
import torch

from bertpld.config import TrainConfig
from bertpld.optim import Lamb, build_optimizer, lr_multiplier, param_groups


def test_schedules() -> None:
    cfg = TrainConfig(warmup=0.1, schedule="linear")
    assert lr_multiplier(0, cfg, 100) == pytest.approx(0.1)
    assert lr_multiplier(9, cfg, 100) == pytest.approx(1.0)
    assert lr_multiplier(10, cfg, 100) == pytest.approx(1.0)
    assert lr_multiplier(55, cfg, 100) == pytest.approx(0.5)
    assert lr_multiplier(100, cfg, 100) == pytest.approx(0.0)
    cfg = TrainConfig(warmup=10, schedule="cosine")
    assert lr_multiplier(55, cfg, 100) == pytest.approx(0.5)
    assert lr_multiplier(10, cfg, 100) == pytest.approx(1.0)
    # the paper: warmup over 2% of 200k steps, then lr * 0.99^((step - warmup) / 1000)
    cfg = TrainConfig(warmup=0.02, schedule="exp")
    assert lr_multiplier(3999, cfg, 200_000) == pytest.approx(1.0)
    assert lr_multiplier(4000 + 50_000, cfg, 200_000) == pytest.approx(0.99**50)
    assert lr_multiplier(500, TrainConfig(warmup=0, schedule="constant"), 1000) == 1.0


def test_no_weight_decay_on_biases_and_layernorm() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4), torch.nn.Embedding(10, 4))
    decay, no_decay = param_groups(model, 0.01)
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    assert {id(p) for p in decay["params"]} == {id(model[0].weight), id(model[2].weight)}
    assert {id(p) for p in no_decay["params"]} == {id(model[0].bias), id(model[1].weight), id(model[1].bias)}


@pytest.mark.parametrize("name", ["adamw", "lamb"])
def test_parameters_without_gradient_do_not_move(name: str) -> None:
    # A block that PLD dropped has grad None: no momentum step and no weight decay for it.
    torch.manual_seed(0)
    used, dropped = torch.nn.Linear(3, 3), torch.nn.Linear(3, 3)
    model = torch.nn.ModuleList([used, dropped])
    opt = build_optimizer(model, TrainConfig(optimizer=name, lr=0.1, weight_decay=0.1), fused=False)
    before = dropped.weight.detach().clone()
    for _ in range(3):
        used(torch.randn(2, 3)).sum().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    assert torch.equal(dropped.weight, before)
    assert dropped.weight not in opt.state or not opt.state[dropped.weight]


def test_lamb_matches_a_hand_computed_step() -> None:
    w = torch.nn.Parameter(torch.tensor([3.0, 4.0]))  # ||w|| = 5
    opt = Lamb([w], lr=0.1, betas=(0.9, 0.999), eps=0.0, weight_decay=0.0)
    w.grad = torch.tensor([1.0, -2.0])
    opt.step()
    # first step: m_hat = g, v_hat = g^2, update = sign(g); trust = ||w|| / ||update|| = 5 / sqrt(2)
    expected = torch.tensor([3.0, 4.0]) - 0.1 * (5 / math.sqrt(2)) * torch.tensor([1.0, -1.0])
    torch.testing.assert_close(w.detach(), expected)
