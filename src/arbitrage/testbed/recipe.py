"""The testbed's training recipe: model sizes and optimiser settings, kept free of torch so that the command
line can show them as defaults without loading it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelSpec:
    hidden: int
    heads: int
    layers: int
    intermediate: int

    @classmethod
    def parse(cls, text: str) -> "ModelSpec":
        """"HIDDENxHEADSxLAYERSxINTERMEDIATE", e.g. "64x2x4x256"."""
        parts = text.lower().split("x")
        if len(parts) != 4 or not all(p.isdigit() and int(p) > 0 for p in parts):
            raise ValueError(f"model spec {text!r}: expected HIDDENxHEADSxLAYERSxINTERMEDIATE, e.g. 64x2x4x256")
        hidden, heads, layers, inter = map(int, parts)
        if hidden % heads:
            raise ValueError(f"model spec {text!r}: hidden size {hidden} is not a multiple of {heads} heads")
        return cls(hidden, heads, layers, inter)

    def __str__(self) -> str:
        return f"{self.hidden}x{self.heads}x{self.layers}x{self.intermediate}"


# head_dim 32 for both: vLLM's CPU attention needs head sizes of 32..512. Same width, four times the depth:
# the target has 4x the draft's parameters, and since a decoding step of models this small costs about the
# same per layer whatever their width, a target step costs several draft steps, as in a real draft/target pair.
SPECS = {
    "draft": ModelSpec(hidden=64, heads=2, layers=2, intermediate=256),
    "target": ModelSpec(hidden=64, heads=2, layers=8, intermediate=256),
}


@dataclass
class TrainConfig:
    steps: int = 3000
    batch_size: int = 8
    lr: float = 5e-3
    warmup: int = 100
    weight_decay: float = 0.1
    seed: int = 0
    threads: int = 1
    device: str = "cpu"
    log_every: int = 50
