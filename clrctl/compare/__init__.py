"""Compare runs: read run directories (CSV and JSON only), derive per-run metrics, judge
candidates against a baseline, and render the verdict as a table, markdown or JSON.

Never imports torch or matplotlib (``clrctl.plots.compare`` draws the overlay, on request).

- :mod:`.runs`    — load a run directory, a seed group (``group.json``) or a glob
- :mod:`.metrics` — per-run scalars: steps to target (censored), AUC of val acc, final/best
- :mod:`.stats`   — median and spread over seeds, the paired bootstrap CI, verdicts
- :mod:`.curves`  — curves for the overlay plot (a group's median and band)
- :mod:`.report`  — the report: plain data, the same for every output format
- :mod:`.render`  — markdown and JSON text, rich tables
"""
