"""Files whole or not at all: atomic writes, strict JSON, checkpoints read as data only."""
