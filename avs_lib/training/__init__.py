"""Training: preparing the inputs, the loop, run folders and their reuse rule, checkpoints, tracking, losses and inference."""
