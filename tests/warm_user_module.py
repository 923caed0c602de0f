"""A user module with state of its own (imported by tests/warm_jobs.py)."""

IMPORTED = True
