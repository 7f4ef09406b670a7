"""The testbed's training recipe: model sizes and optimiser settings per role, kept free of torch so that the
command line can show them as defaults without loading it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypedDict

# "plain": one phrasing per step (the first testbed, its models in testbed/models); "phrased": several phrasings
# per step and a style per role (testbed/phrasing.py; its models in testbed/models_phrased).
TASKS = ("plain", "phrased")


@dataclass(frozen=True)
class ModelSpec:
    hidden: int
    heads: int
    layers: int
    intermediate: int

    @classmethod
    def parse(cls, text: str) -> ModelSpec:
        """ "HIDDENxHEADSxLAYERSxINTERMEDIATE", e.g. "64x2x4x256"."""
        parts = text.lower().split("x")
        if len(parts) != 4 or not all(p.isdigit() and int(p) > 0 for p in parts):
            raise ValueError(f"model spec {text!r}: expected HIDDENxHEADSxLAYERSxINTERMEDIATE, e.g. 64x2x4x256")
        hidden, heads, layers, inter = map(int, parts)
        if hidden % heads:
            raise ValueError(f"model spec {text!r}: hidden size {hidden} is not a multiple of {heads} heads")
        return cls(hidden, heads, layers, inter)

    def __str__(self) -> str:
        return f"{self.hidden}x{self.heads}x{self.layers}x{self.intermediate}"


# head_dim 32 for both: vLLM's CPU attention needs head sizes of 32..512.
# The paper's regime: the target several times the draft's cost per token and clearly more accurate, the draft
# right on most steps. At these sizes a decoding step costs a fixed amount per layer plus the engine's own
# per-token work, whatever the width, so the target is 6x deeper (and 2x wider): measured through the engine at
# batch size 1 on the 2-core CPU, a draft token costs about a quarter of a target token (card.json, cost_ratio).
SPECS = {
    "draft": ModelSpec(hidden=64, heads=2, layers=2, intermediate=256),
    "target": ModelSpec(hidden=128, heads=4, layers=12, intermediate=512),
}


@dataclass
class TrainConfig:
    steps: int = 6000
    batch_size: int = 16
    lr: float = 5e-3
    warmup: int = 200
    weight_decay: float = 0.1
    seed: int = 0
    threads: int = 1
    device: str = "cpu"
    log_every: int = 100
    eval_every: int = 1000  # validation answer accuracy on `eval_n` problems every so many steps (0: never)
    eval_n: int = 100


class RoleDefaults(TypedDict):
    steps: int
    lr: float


# Per-role defaults (the same seeded problem stream for both). The deeper target needs a lower learning rate
# and more steps; the draft's budget puts it near half the target's answer accuracy.
ROLE_DEFAULTS: dict[str, RoleDefaults] = {
    "draft": {"steps": 6000, "lr": 5e-3},
    "target": {"steps": 8000, "lr": 2e-3},
}
