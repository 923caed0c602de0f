"""Optimizers, parameter groups, LR policies (schedules) and a stage's optimizer."""
