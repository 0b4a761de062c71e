"""Training: the data sources that feed batches, the settings, and the loop with its checkpoints and resume."""
