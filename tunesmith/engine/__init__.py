"""The training loop, optimizer/schedule, checkpoints and precision choice."""
