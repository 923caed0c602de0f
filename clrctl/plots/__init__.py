"""Plotting: the only package that imports matplotlib. Each function draws what it is given
(numbers already computed elsewhere) and writes a PNG; nothing here computes results."""
