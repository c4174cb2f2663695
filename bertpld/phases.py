"""The named phases of a training step: profiler ranges in a trace, and a clock for the step profile.

Each unit of the training step (`bertpld.train`) and each part of the model's forward runs inside
`phase(name)`, a `torch.profiler.record_function` range called `bertpld.<name>`, so a
torch.profiler trace shows a step under the names the code uses. Outside a profiler a range costs a
few microseconds.

`PhaseClock` times the same phases with the wall clock instead of the profiler (whose per-operator
overhead distorts a CPU step of many small operators). While a clock is active, each moment of the
step is charged to the innermost open phase; backward, one call into autograd, is split at the
encoder's boundaries by module hooks into the heads' part (the `backward` phase itself), the
blocks' and the embeddings'. On CUDA the clock synchronizes at every boundary: a profile, not a
production run. scripts/profile_step.py reports it.
"""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from collections.abc import Iterator

import torch
from torch.autograd.profiler import record_function

# The phases of one optimizer step, in the order the step runs them (scripts/profile_step.py prints
# them in this order). "backward" is the heads' and the loss's backward: autograd runs it first.
PHASES = {
    "data": "next micro-batch from the reader (masking included), token index, host to device",
    "gates": "PLD theta and gate draws",
    "forward.embeddings": "embeddings forward",
    "forward.blocks": "encoder blocks forward (the part PLD skips)",
    "forward.heads": "MLM head (+ NSP head) and loss forward",
    "backward": "MLM head (+ NSP head) and loss backward",
    "backward.blocks": "encoder blocks backward (the part PLD skips)",
    "backward.embeddings": "embeddings backward",
    "reduce": "gradient all-reduce left after backward (several ranks)",
    "optimizer": "grad clip, optimizer step, lr, zeroing",
    "bookkeeping": "loss sums, FLOPs and token counts, counters",
}
OTHER = "other"  # time inside a clocked step but outside every phase

_clock: PhaseClock | None = None


@contextlib.contextmanager
def phase(name: str) -> Iterator[None]:
    """Run the body as phase `name` (a key of PHASES): a profiler range, and clocked if a clock runs."""
    assert name in PHASES, name
    with record_function(f"bertpld.{name}"):
        if _clock is None:
            yield
            return
        _clock.enter(name)
        try:
            yield
        finally:
            _clock.exit(name)


class PhaseClock:
    """Wall-clock seconds per phase (self time: a phase's time excludes that of phases inside it).

    Use as a context manager around the steps to measure; `step()` marks the end of each step.
    `model`: the BertForPreTraining whose encoder's backward is split off (see the module doc).
    """

    def __init__(self, model: torch.nn.Module, device: torch.device) -> None:
        self.encoder = model.bert.encoder
        self.cuda = device.type == "cuda"
        self.totals: dict[str, float] = defaultdict(float)
        self.steps: list[float] = []
        self._stack: list[str] = []
        self._last = self._step_start = 0.0
        self._ranges: list[record_function] = []
        self._hooks: list = []

    def __enter__(self) -> PhaseClock:
        global _clock
        assert _clock is None, "one PhaseClock at a time"
        _clock = self
        self._hooks = [
            self.encoder.register_full_backward_pre_hook(lambda m, g: self._backward_into("backward.blocks")),
            self.encoder.register_full_backward_hook(
                lambda m, gi, go: self._backward_into("backward.embeddings")
            ),
        ]
        self._stack, self._last = [OTHER], self._now()
        self._step_start = self._last
        return self

    def __exit__(self, *exc) -> None:
        global _clock
        _clock = None
        for h in self._hooks:
            h.remove()

    def _now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    def _charge(self) -> None:
        now = self._now()
        self.totals[self._stack[-1]] += now - self._last
        self._last = now

    def enter(self, name: str) -> None:
        self._charge()
        self._stack.append(name)

    def exit(self, name: str) -> None:
        """Leave phase `name`, and the hook-made phases still open inside it."""
        self._charge()
        while self._stack.pop() != name:
            pass
        while self._ranges:
            self._ranges.pop().__exit__(None, None, None)

    def _backward_into(self, name: str) -> None:
        """An encoder hook fired inside phase `backward`: what follows, until the next hook or the
        end of `backward`, is charged to `name` (and shows in a trace as its range)."""
        if "backward" not in self._stack:  # a backward outside the step's phase (not profiled)
            return
        self._charge()
        if self._stack[-1] != "backward":
            self._stack.pop()
        self._stack.append(name)
        while self._ranges:
            self._ranges.pop().__exit__(None, None, None)
        self._ranges.append(record_function(f"bertpld.{name}"))
        self._ranges[-1].__enter__()

    def step(self) -> None:
        """End of one step: record its wall-clock."""
        self._charge()
        self.steps.append(self._last - self._step_start)
        self._step_start = self._last
