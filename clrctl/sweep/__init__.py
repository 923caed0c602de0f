"""``clrctl sweep``: grids of training runs, run in parallel, resumable and shardable.

- :mod:`.grid`   — the ``--grid KEY=V1,V2`` syntax, the product, point names (torch-free)
- :mod:`.plan`   — every point's full config, validated before anything runs
- :mod:`.store`  — the sweep directory, run status from the runs' own files, ``sweep.json``
- :mod:`.locks`  — claiming a run with an exclusive-create lock file; stale-lock takeover
- :mod:`.runner` — running the runs (each ``clrctl train``), signals, shards, ``--timeout``
- :mod:`.workers` — warm worker processes that run jobs in turn, reset between them
"""
