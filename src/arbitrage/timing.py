"""Wall time inside a model's forward passes, for the engine-overhead figures and the assisted baseline."""

from __future__ import annotations

import time

import torch


class ForwardTimer:
    """Counts a module's top-level forward calls and the wall time inside them; on CUDA it synchronises at both
    ends, so the time is the GPU's work and not only the launch."""

    def __init__(self, module: torch.nn.Module):
        self.calls, self.seconds, self._t0 = 0, 0.0, 0.0
        self.cuda = next(module.parameters()).device.type == "cuda"
        self._handles = [module.register_forward_pre_hook(self._pre), module.register_forward_hook(self._post)]

    def _sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    @torch.compiler.disable  # a timer, not part of any compiled graph
    def _pre(self, *_) -> None:
        self._sync()
        self._t0 = time.perf_counter()

    @torch.compiler.disable
    def _post(self, *_) -> None:
        self._sync()
        self.seconds += time.perf_counter() - self._t0
        self.calls += 1

    def reset(self) -> None:
        self.calls, self.seconds = 0, 0.0

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
