"""Resume with data-loading worker processes (every open-magvit2 preset uses 8-16): a checkpoint at an epoch's
last batch resumes at the next epoch's first batch in that epoch's order, so the run continues exactly as an
uninterrupted one. (On resume Lightning creates the data iterator before it calls set_epoch, and workers draw their
first indices right then: the loader's restored state must already name the new epoch.)"""

import csv

import pytest
import torch

from magvit2.train.ar.config import load_ar_config
from magvit2.train.ar.fit import fit_ar
from magvit2.train.tokenizer.config import load_config
from magvit2.train.tokenizer.fit import fit_tokenizer

COMMON = [
    "data.batch_size=4",
    "data.num_workers=2",
    "trainer.log_every_n_steps=1",
    "trainer.threads=1",
    "trainer.checkpoint_every_n_steps=4",
]  # fmt: skip  (16 items: 4 batches an epoch, a checkpoint at its end)
LOSS = {"ar": "train/loss", "tokenizer": "train/total"}


def _fit(kind, tokens, out, steps, resume=None):
    if kind == "ar":
        config = load_ar_config("ar-tiny", [*COMMON, f"data.tokens={tokens / 'tokens'}", f"trainer.max_steps={steps}"])
        return fit_ar(config, out, resume=resume, progress=False)
    overrides = [*COMMON, f"data.train={tokens / 'images'}", "data.size=32", "loss.disc_start=1",
                 "trainer.image_every_n_steps=0", f"trainer.max_steps={steps}"]  # fmt: skip
    return fit_tokenizer(load_config("tiny", overrides), out, resume=resume, progress=False)


def _losses(out, kind):
    runs = []
    for version in sorted((out / "logs").iterdir()):
        with open(version / "metrics.csv") as f:
            runs.append([float(r[LOSS[kind]]) for r in csv.DictReader(f) if r.get(LOSS[kind])])
    return runs


@pytest.mark.parametrize("kind", ["ar", "tokenizer"])
def test_resume_at_an_epoch_end_with_workers_is_exact(tokens, tmp_path, kind):
    _, straight = _fit(kind, tokens, tmp_path / "straight", 8)
    _, first = _fit(kind, tokens, tmp_path / "split", 4)
    _, resumed = _fit(kind, tokens, tmp_path / "split", 8, resume="auto")
    (reference,) = _losses(tmp_path / "straight", kind)
    before, after = _losses(tmp_path / "split", kind)
    assert len(reference) == 8 and before == reference[:4]
    assert after == reference[4:]  # the second epoch's batches in the second epoch's order, bit for bit
    a, b = straight.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
