"""Training: the shared loop, checkpoints, metrics and the stages built on it."""
