"""`clrctl compare` (being written)."""
