"""Run by tests/train/ar/test_fit_ddp.py: the AR trainer on 2 CPU processes (Lightning DDP over gloo).

argv: token folder, output folder. Each rank writes rank<r>.pt: its first batch, the initial transformer weights,
the gradients the optimizer saw at the first step (after DDP's all-reduce), and the final parameters.
"""

import sys

import torch
from lightning.pytorch.callbacks import Callback

from magvit2.train.ar.config import load_ar_config
from magvit2.train.ar.fit import fit_ar


class Probe(Callback):
    def __init__(self):
        self.state = {}

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if not self.state:
            self.state["batch"] = [t.clone() for t in batch]
            self.state["initial"] = {k: v.clone() for k, v in module.transformer.state_dict().items()}

    def on_before_optimizer_step(self, trainer, module, optimizer):
        if "grads" not in self.state:
            self.state["grads"] = {k: p.grad.clone() for k, p in module.transformer.named_parameters()}

    def on_train_end(self, trainer, module):
        self.state["params"] = {k: v.detach().clone() for k, v in module.transformer.state_dict().items()}
        self.state["steps"] = module.global_step
        torch.save(self.state, f"{sys.argv[2]}/rank{trainer.global_rank}.pt")


if __name__ == "__main__":
    tokens, out = sys.argv[1], sys.argv[2]
    config = load_ar_config(
        "ar-tiny",
        [f"data.tokens={tokens}", "trainer.max_steps=3", "trainer.devices=2", "trainer.accelerator=cpu",
         "trainer.checkpoint_every_n_steps=3", "data.batch_size=4", "optim.grad_clip=0", "model.token_drop=0",
         "model.resid_dropout_p=0", "model.ffn_dropout_p=0", "model.class_dropout_prob=0"],
    )  # fmt: skip
    fit_ar(config, out, progress=False, callbacks=[Probe()])
