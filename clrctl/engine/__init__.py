"""The training engine: one step, the loop and its events, the strategy (one process or DDP)."""
