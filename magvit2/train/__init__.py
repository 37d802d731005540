"""Trainers on Lightning: `common/` (the Trainer builder, checkpoint IO, resume, config reading, EMA, non-finite
guard, NPU accelerator) and one folder per trainer (`tokenizer/`, `ar/`), each with config, data, module and fit;
presets in `configs/<kind>/`. Needs the `train` extra (lightning, pyyaml); nothing in nn, ops or eval imports it.
"""
