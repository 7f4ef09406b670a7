"""Fine-tuning the paper's router: a 2-label token-classification model over the annotated router input, with
cross entropy at the last token only (labels are -100 everywhere else), AdamW and linear warmup/decay, through
`transformers.Trainer`.

The base may be any causal LM or PRM checkpoint (hub id or local path): `AutoModelForTokenClassification`
keeps its body and puts a fresh 2-label head on it (a head of another shape, e.g. a PRM's, is replaced).
Inputs are tokenized exactly as the routers that serve the checkpoint tokenize them (`scoring.hf.HFRouter`,
`backends.pooling.PoolingRouter`): the question segment with special tokens, every later segment without.
"""

from __future__ import annotations

import math
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch

from ..errors import ConfigError, DataError
from ..formats import RouterFormat, write_router_meta
from .dataset import Example, class_counts, data_file, load_examples, read_meta
from .heads import class_edges, classes_of, positive_classes

LABELS = {0: "keep", 1: "escalate"}


def encode_example(
    tokenizer, ex: Example, separator: str, author_tags: bool, max_length: int | None = None, cache: dict | None = None
) -> list[int]:
    """Token ids of the router input, through the same `RouterFormat` the serving routers encode with; if
    longer than `max_length`, the oldest tokens are cut (the label is read at the last one)."""
    cache = {} if cache is None else cache

    def enc(text: str, special: bool = False) -> list[int]:
        key = (text, special)
        if key not in cache:
            cache[key] = tokenizer(text, add_special_tokens=special)["input_ids"]
        return cache[key]

    return RouterFormat(separator, author_tags).row_ids(enc, ex.question, ex.steps(), ex.draft["text"], max_length)


class _Rows(torch.utils.data.Dataset):
    def __init__(self, rows: list[dict]):
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        return self.rows[i]


def _rows(
    tokenizer, examples: Sequence[Example], labels: Sequence[int], separator: str, author_tags: bool, max_length: int
) -> list[dict]:
    cache: dict = {}
    rows = []
    for ex, y in zip(examples, labels):
        ids = encode_example(tokenizer, ex, separator, author_tags, max_length, cache)
        rows.append({"input_ids": ids, "labels": [-100] * (len(ids) - 1) + [int(y)]})
    return rows


class LastTokenCollator:
    """Right-pads a batch; labels are -100 on padding, so the loss stays at each row's last real token."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, rows: list[dict]) -> dict:
        n = max(len(r["input_ids"]) for r in rows)
        ids = torch.full((len(rows), n), self.pad_id, dtype=torch.long)
        labels = torch.full((len(rows), n), -100, dtype=torch.long)
        mask = torch.zeros((len(rows), n), dtype=torch.long)
        for i, r in enumerate(rows):
            k = len(r["input_ids"])
            ids[i, :k] = torch.tensor(r["input_ids"])
            labels[i, :k] = torch.tensor(r["labels"])
            mask[i, :k] = 1
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _trainer_base():
    from transformers import Trainer

    return Trainer


if TYPE_CHECKING:
    from transformers import Trainer as _TrainerBase
else:
    _TrainerBase = _trainer_base()


class OrdinalTrainer(_TrainerBase):
    """Trainer with the ordinal loss: at each row's last token, K-1 logits z_j = logit P(class > j), binary cross
    entropy against 1[class > j]."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs.pop("labels")
        outputs = model(**inputs)
        logits = outputs.logits
        rows, cols = (labels != -100).nonzero(as_tuple=True)
        z = logits[rows, cols].float()  # [B, K-1]
        y = labels[rows, cols]
        targets = (y[:, None] > torch.arange(z.shape[1], device=z.device)[None, :]).float()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(z, targets)
        return (loss, outputs) if return_outputs else loss


def _use_cuda(device: str) -> bool:
    if device == "auto":
        return torch.cuda.is_available()
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: CUDA is not available on this machine")
    return device.startswith("cuda")


def train_classifier(
    data_dir: str,
    out_dir: str,
    base: str | None,  # required: refused when missing
    seed: int = 0,
    *,
    lr: float = 1e-5,
    epochs: float = 3,
    batch_size: int = 8,
    grad_accum: int = 1,
    warmup: float = 0.1,
    weight_decay: float = 0.0,
    max_length: int = 4096,
    device: str = "auto",
    bf16: bool | None = None,
    gradient_checkpointing: bool = False,
    shuffle_labels: bool = False,
    logging_steps: int = 10,
    classes: int = 2,
    ordinal: bool = False,
    log: Callable[[str], None] = print,
) -> str:
    """Fine-tune BASE on DATA/train.jsonl (evaluating the loss on DATA/validation.jsonl each epoch when it has
    examples) and save a router checkpoint to OUT. Returns OUT. `classes` 4 or 10: classes by quantiles of the
    advantage on the training split (cross entropy over them); `ordinal`: K-1 cumulative logits P(class > j),
    each trained with binary cross entropy (heads.py documents how y_hat is read from either)."""
    from transformers import PreTrainedModel, Trainer, TrainingArguments, set_seed

    from ..backends.hf import load_model, load_tokenizer

    if not base:
        raise ConfigError("a classifier router needs --base: a causal LM or PRM checkpoint (id or path) to start from")
    for name, v in (
        ("lr", lr),
        ("epochs", epochs),
        ("batch_size", batch_size),
        ("grad_accum", grad_accum),
        ("max_length", max_length),
    ):
        if not v > 0:
            raise ConfigError(f"{name} must be positive, not {v}")
    if not 0 <= warmup < 1:
        raise ConfigError(f"warmup is a fraction of the training steps in [0, 1), not {warmup}")
    t0 = time.perf_counter()
    meta = read_meta(data_dir)
    separator, author_tags = meta.get("separator", "\n\n"), meta.get("author_tags", True)
    train = load_examples(data_file(data_dir, "train"))
    labels = [e.label for e in train]
    edges, positive, n_classes, head = None, [1], 2, "softmax"
    if classes > 2 or ordinal:
        edges = class_edges([e.advantage for e in train], classes)
        labels = classes_of([e.advantage for e in train], edges).tolist()
        n_classes = len(edges) + 1
        positive = positive_classes([e.advantage for e in train], labels, n_classes)
        head = "ordinal" if ordinal else "softmax"
    if shuffle_labels:  # the control: same inputs, labels permuted at random
        random.Random(seed).shuffle(labels)
    if len(set(labels)) < 2:
        raise DataError(
            f"{data_dir}: the training split has one class only ({class_counts(train)}); a router needs "
            f"both escalate and keep examples"
        )
    val_path = (
        os.path.join(os.path.expanduser(data_dir), "validation.jsonl")
        if os.path.isdir(os.path.expanduser(data_dir))
        else None
    )
    val = load_examples(val_path) if val_path and os.path.isfile(val_path) else []

    set_seed(seed)
    tokenizer = load_tokenizer(base)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token if tokenizer.eos_token is not None else tokenizer.unk_token
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    n_out = n_classes - 1 if ordinal else n_classes
    names = LABELS if n_classes == 2 and not ordinal else {i: f"class_{i}" for i in range(n_out)}
    model = load_model(
        base,
        "AutoModelForTokenClassification",
        device="cpu",
        dtype="float32",
        num_labels=n_out,
        ignore_mismatched_sizes=True,
        id2label=names,
        label2id={v: k for k, v in names.items()},
    )
    model.config.pad_token_id = pad_id
    cuda = _use_cuda(device)
    if bf16 is None:
        bf16 = cuda and torch.cuda.is_bf16_supported()
    train_rows = _rows(tokenizer, train, labels, separator, author_tags, max_length)
    val_labels = [e.label for e in val] if edges is None else classes_of([e.advantage for e in val], edges).tolist()
    val_rows = _rows(tokenizer, val, val_labels, separator, author_tags, max_length)
    world = int(os.environ.get("WORLD_SIZE", "1"))  # > 1 under torchrun / accelerate launch: DDP, one process each
    steps_per_epoch = math.ceil(len(train_rows) / (batch_size * grad_accum * world))
    total_steps = max(1, math.ceil(steps_per_epoch * epochs))
    work = tempfile.mkdtemp(prefix="arbitrage-router-")
    optional: dict[str, Any] = {}
    if world > 1:
        optional["ddp_backend"] = "nccl" if cuda else "gloo"
    if gradient_checkpointing:
        optional["gradient_checkpointing"] = True
    args = TrainingArguments(
        output_dir=work,
        per_device_train_batch_size=batch_size,
        per_device_eval_batch_size=batch_size,
        gradient_accumulation_steps=grad_accum,
        learning_rate=lr,
        num_train_epochs=epochs,
        warmup_steps=int(round(warmup * total_steps)),
        lr_scheduler_type="linear",
        optim="adamw_torch",
        weight_decay=weight_decay,
        seed=seed,
        data_seed=seed,
        logging_steps=logging_steps,
        save_strategy="no",
        eval_strategy="epoch" if val_rows else "no",
        report_to=[],
        use_cpu=not cuda,
        bf16=bool(bf16),
        dataloader_num_workers=0,
        disable_tqdm=True,
        **optional,
    )
    trainer = (OrdinalTrainer if ordinal else Trainer)(
        model=model,
        args=args,
        train_dataset=_Rows(train_rows),
        eval_dataset=_Rows(val_rows) if val_rows else None,
        data_collator=LastTokenCollator(pad_id),
    )
    rank0 = trainer.is_world_process_zero()
    if rank0:
        log(
            f"classifier router: {len(train_rows)} training examples ({class_counts(train)}), {len(val_rows)} "
            f"validation, {total_steps} optimizer steps on {'cuda' if cuda else 'cpu'}{' bf16' if bf16 else ''}"
            + (f", {world} processes (DDP, each on its share of every batch)" if world > 1 else "")
        )
    try:
        out = trainer.train()
        history = [h for h in trainer.state.log_history if "eval_loss" in h]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    seconds = time.perf_counter() - t0
    if not rank0:  # only one process writes the checkpoint and arbitrage_router.json
        return out_dir
    os.makedirs(out_dir, exist_ok=True)
    assert isinstance(trainer.model, PreTrainedModel)  # the model given to it, loaded by load_model
    trainer.model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    router_meta = {
        "kind": "classifier",
        "separator": separator,
        "author_tags": author_tags,
        "margin": meta.get("margin", 0.0),
        "base": base,
        "data": os.path.abspath(data_dir),
        "seed": seed,
        "shuffled_labels": shuffle_labels,
        "train_counts": class_counts(train),
        "hyper": {
            "lr": lr,
            "epochs": epochs,
            "batch_size": batch_size,
            "grad_accum": grad_accum,
            "warmup": warmup,
            "weight_decay": weight_decay,
            "max_length": max_length,
            "bf16": bool(bf16),
        },
        "n_classes": n_classes,
        "head": head,
        "edges": edges,
        "positive_classes": positive,
        "train_loss": round(float(out.training_loss), 5),
        "eval_loss": [round(h["eval_loss"], 5) for h in history],
        "train_seconds": round(seconds, 2),
        "device": "cuda" if cuda else "cpu",
        "processes": world,
    }
    write_router_meta(out_dir, router_meta)
    log(f"classifier router: trained in {seconds:.1f} s (train loss {out.training_loss:.4f}) -> {out_dir}")
    return out_dir
