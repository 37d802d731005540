"""What every trainer shares: the Lightning Trainer builder, atomic checkpoint IO, resumable data order, config
reading, the EMA of weights, the non-finite loss guard and the NPU accelerator."""
