"""``dekr-train`` with one extra callback that prints what the distributed tests check.

The tests run this script (as ``python tests/ddp_train.py`` or under torchrun) in place of
``dekr-train``: every rank must end with bit-identical weights, and every validation must have
evaluated each image of the split exactly once.
"""

from __future__ import annotations

import hashlib
import sys

import pytorch_lightning as pl
import torch

from dekr.config import load_recipe
from dekr.training import train


class WeightDigest(pl.Callback):
    """Prints ``[rank N] weights sha1 HEX`` of the trained network on every rank, and after each
    validation ``[rank N] validated images IDS`` (the gathered image ids, comma-separated)."""

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        ids = pl_module.evaluator.image_ids if pl_module.evaluator is not None else []
        text = ",".join(str(i) for i in ids)
        print(f"[rank {trainer.global_rank}] validated images {text}", flush=True)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        digest = hashlib.sha1()
        for name, tensor in sorted(pl_module.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        print(f"[rank {trainer.global_rank}] weights sha1 {digest.hexdigest()}", flush=True)


def main(argv: list[str]) -> int:
    recipe = load_recipe(argv[0], argv[1:])
    torch.set_num_threads(1)
    train(recipe, callbacks=[WeightDigest()])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
