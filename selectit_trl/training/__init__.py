"""The drop-in SFTTrainer and its config, and what a training run records of its selection."""
