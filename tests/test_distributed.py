"""GradientReducer under a real 2-process gloo group: exact averages, PLD-style missing gradients,
accumulation, a tied weight, buckets launched while backward still runs, and a wrong list caught."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import torchrun_two

WORKER = r"""
import torch, torch.distributed as td
import torch.nn.functional as F
from torch import nn
from bertpld import distributed as dist

dist.init("cpu")
dist._BUCKET_BYTES = 40_000  # about 2.4 of the 64x64 fp32 weights: several tensors per bucket
rank = dist.rank()
torch.manual_seed(0)  # the same model on both ranks
layers = nn.ModuleList(nn.Linear(64, 64) for _ in range(6))
params = list(layers.parameters())
reducer = dist.GradientReducer(params)

def run(x, kept):
    x = layers[0](x)  # layer 0's weight is used twice, like BERT's tied word embedding
    for i in sorted(kept):
        x = torch.tanh(layers[i](x))
    return F.linear(x, layers[0].weight).square().mean()

def reached(kept):
    return [p for i in [0, *kept] for p in layers[i].parameters()]

def gathered():
    out = {}
    for i, p in enumerate(params):
        g = p.grad.clone() if p.grad is not None else torch.full_like(p, float("nan"))
        both = [torch.empty_like(g) for _ in range(2)]
        td.all_gather(both, g)
        out[i] = (both[0] + both[1]) / 2
    return out

def clear():
    for p in params:
        p.grad = None

torch.manual_seed(100 + rank)  # different data per rank
# micro-step 1 keeps layers 1-4, micro-step 2 (the last) keeps 2 and 3: layers 1 and 4 hold
# gradients from micro-step 1 only, layer 5 none at all.
micro = [(torch.randn(8, 64), {1, 2, 3, 4}), (torch.randn(8, 64), {2, 3})]
for overlap in (True, False):
    clear()
    for k, (x, kept) in enumerate(micro):
        loss = run(x, kept)
        if overlap and k == len(micro) - 1:
            reducer.expect(reached(kept))
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
        assert 1 < planned < 10 and launched_in_backward == planned, (launched_in_backward, planned)
    else:
        assert launched_in_backward == 0

# the caller's list must be right: an announced parameter without a gradient, or a gradient that
# was not announced, is an error on every rank
for announced, message in ((reached({1, 5}), "got no gradient"), (reached(set()), "did not announce")):
    clear()
    loss = run(micro[0][0], {1})
    reducer.expect(announced)
    loss.backward()
    try:
        reducer.finish()
    except RuntimeError as e:
        assert message in str(e), str(e)
    else:
        raise AssertionError(f"finish() did not report: {message}")
    assert not reducer.buckets and not reducer.launched
print(f"rank {rank} ok")
dist.shutdown()
"""


def test_gradient_reducer_averages_exactly_and_overlaps_backward(tmp_path: Path) -> None:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    done = torchrun_two([str(script)], timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "rank 0 ok" in done.stdout and "rank 1 ok" in done.stdout
