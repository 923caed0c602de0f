"""`clrctl range_test` (being written)."""
