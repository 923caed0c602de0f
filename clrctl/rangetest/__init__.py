"""The LR range test and its suggestion rules."""
