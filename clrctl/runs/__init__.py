"""Run directories and their lifecycle: files, checkpoints, starting, resuming, plots of a run."""
