"""Training: the settings, the run and its parts, one update, the loop, validation, checkpoints, FLOPs."""
