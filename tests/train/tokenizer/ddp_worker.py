"""Run by tests/train/tokenizer/test_fit_ddp.py: the tokenizer trainer on 2 CPU processes (Lightning DDP over gloo).

Each rank writes rank<r>.pt: its first batch, the codebook entropy the LFQ computed for it with the global
(all-reduced) average, the initial weights, and its final parameters and EMA.
"""

import sys

import torch
from lightning.pytorch.callbacks import Callback

from magvit2.demos.photos_data import PhotoDataModule
from magvit2.train.tokenizer.config import load_config
from magvit2.train.tokenizer.fit import fit_tokenizer


class Probe(Callback):
    def __init__(self):
        self.first = None

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if batch_idx == 0 and self.first is None:
            with torch.no_grad():
                lfq = module.quantize(module.encoder(batch))
            self.first = {
                "batch": batch.clone(),
                "codebook_entropy": lfq.codebook_entropy.clone(),
                "initial": {k: v.clone() for k, v in module.tokenizer.state_dict().items()},
            }

    def on_train_end(self, trainer, module):
        state = {
            **self.first,
            "params": {k: v.detach().clone() for k, v in module.named_parameters()},
            "ema": {k: v.clone() for k, v in module.model_ema.state_dict().items()},
            "steps": module.batch_step,
        }
        torch.save(state, f"{sys.argv[1]}/rank{trainer.global_rank}.pt")


if __name__ == "__main__":
    out = sys.argv[1]
    config = load_config(
        "tiny",
        [
            "trainer.max_steps=3",
            "trainer.devices=2",
            "trainer.accelerator=cpu",
            "trainer.checkpoint_every_n_steps=3",
            "trainer.image_every_n_steps=0",
            "loss.disc_start=1",
            "model.global_entropy=true",
            "data.batch_size=4",
        ],
    )
    datamodule = PhotoDataModule(config.data, train_crops=32, val_crops=8)
    fit_tokenizer(config, out, datamodule=datamodule, progress=False, callbacks=[Probe()])
