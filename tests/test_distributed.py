"""GradientReducer under a real 2-process gloo group: exact averages, PLD-style missing gradients,
accumulation, and buckets launched while backward still runs."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import torchrun_two

WORKER = r"""
import torch, torch.distributed as td
from torch import nn
from bertpld import distributed as dist

dist.init("cpu")
dist._BUCKET_BYTES = 4 * 64 * 64  # a bucket per tensor (10): launch order matters
rank = dist.rank()
torch.manual_seed(0)  # the same model on both ranks
layers = nn.ModuleList(nn.Linear(64, 64) for _ in range(6))
params = list(layers.parameters())
reducer = dist.GradientReducer(params)

def run(x, kept):
    for i, layer in enumerate(layers):
        if i in kept:
            x = torch.tanh(layer(x))
    return x.square().mean()

def gathered():
    out = {}
    for i, p in enumerate(params):
        g = p.grad.clone() if p.grad is not None else torch.full_like(p, float("nan"))
        both = [torch.empty_like(g) for _ in range(2)]
        td.all_gather(both, g)
        out[i] = (both[0] + both[1]) / 2
    return out

torch.manual_seed(100 + rank)  # different data per rank
# micro-step 1 keeps layers 0-4, micro-step 2 (the last) keeps 0, 2, 3: layers 1 and 4 hold
# gradients from micro-step 1 only, layer 5 none at all.
micro = [(torch.randn(8, 64), {0, 1, 2, 3, 4}), (torch.randn(8, 64), {0, 2, 3})]
for overlap in (True, False):
    for p in params:
        p.grad = None
    for k, (x, kept) in enumerate(micro):
        loss = run(x, kept)
        if overlap and k == len(micro) - 1:
            reducer.expect([p for i in sorted(kept) for p in layers[i].parameters()])
        loss.backward()
    launched_in_backward, planned = len(reducer.launched), len(reducer.buckets)
    expected = gathered()
    reducer.finish()
    for i, p in enumerate(params):
        if i // 2 == 5:
            assert p.grad is None, "a parameter no micro-step reached got a gradient"
        else:
            assert torch.equal(p.grad, expected[i]), f"parameter {i}: not the exact average"
    if overlap:  # every bucket was complete, hence launched, by the end of backward
        assert launched_in_backward == planned == 10, (launched_in_backward, planned)
    else:
        assert launched_in_backward == 0
# announcing a parameter the backward never reaches is the caller's bug: an error on every rank
for p in params:
    p.grad = None
loss = run(micro[0][0], {0})
reducer.expect([*layers[0].parameters(), *layers[5].parameters()])
loss.backward()
try:
    reducer.finish()
except RuntimeError as e:
    assert "got no gradient" in str(e)
else:
    raise AssertionError("finish() accepted a parameter without a gradient")
print(f"rank {rank} ok")
dist.shutdown()
"""


def test_gradient_reducer_averages_exactly_and_overlaps_backward(tmp_path: Path) -> None:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    done = torchrun_two([str(script)], timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "rank 0 ok" in done.stdout and "rank 1 ok" in done.stdout
