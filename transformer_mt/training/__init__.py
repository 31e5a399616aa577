"""Loss, optimiser and schedule, checkpoints, distributed set-up, FLOPs and the training loop."""
