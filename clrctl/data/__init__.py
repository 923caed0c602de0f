"""Data sets -> batches on the device: built-in sets, IDX files, splits, the user's own data."""
