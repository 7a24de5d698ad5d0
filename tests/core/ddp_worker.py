"""A tiny deterministic training run, launched by test_train.py under torchrun.

    python -m torch.distributed.run --standalone --nproc_per_node=2 ddp_worker.py OUT_DIR

Rank 0 writes OUT_DIR/result.json (losses, world size) and OUT_DIR/params.safetensors.
test_train.py imports this file too, to run the same training in one process.
"""

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from minirepro.core.train import TrainConfig, lm_loss, rank, train, world_size

VOCAB, SEQ_LEN = 11, 6
CFG = TrainConfig(steps=8, lr=1e-2, warmup_steps=2, batch_size=8, grad_clip=0.5, log_every=1)


class TinyLM(nn.Module):
    """Ids (B, S) -> logits (B, S, V): embedding, optional dropout, norm, linear."""

    def __init__(self, vocab_size: int = VOCAB, d_model: int = 16, dropout: float = 0.0):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, d_model)
        self.drop = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.drop(self.embed(x))))  # (B, S, V)


def make_model(seed: int = 0, dropout: float = 0.0) -> TinyLM:
    torch.manual_seed(seed)
    return TinyLM(dropout=dropout)


def get_batch(step: int, g: torch.Generator) -> dict[str, torch.Tensor]:
    """A dict batch, to exercise sharding of structures: predict (token + 1) mod V."""
    x = torch.randint(0, VOCAB, (CFG.batch_size, SEQ_LEN), generator=g)  # (B, S)
    return {"x": x, "y": (x + 1) % VOCAB}


def dict_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return lm_loss(model, (batch["x"], batch["y"]))


def main(out: Path) -> None:
    shard_sizes = set()

    def loss_fn(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        shard_sizes.add(batch["x"].shape[0])
        return dict_loss(model, batch)

    state = train(make_model(), CFG, get_batch, loss_fn=loss_fn, out_dir=out / "run")
    if rank() == 0:
        losses = [r["loss"] for r in state.history]
        result = {"world_size": world_size(), "shard_sizes": sorted(shard_sizes), "losses": losses}
        (out / "result.json").write_text(json.dumps(result))
        save_file({k: v.contiguous() for k, v in state.model.state_dict().items()},
                  str(out / "params.safetensors"))  # fmt: skip


if __name__ == "__main__":
    main(Path(sys.argv[1]))
