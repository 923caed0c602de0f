"""Jobs for a warm worker (tests/test_sweep_workers.py): what a job sees of the process, a job
that changes all of it, one that leaks memory where no reset reaches, one that hangs."""

import os
import random
import signal
import sys
import time
import warnings


def seen() -> dict:
    """What a job finds: the RNGs' next draws, threads, argv, cwd, path, environment, handlers."""
    import numpy as np
    import torch

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        warnings.warn("once per location", UserWarning)
    return {"random": random.random(), "numpy": float(np.random.rand()), "torch": float(torch.rand(1)),
            "threads": torch.get_num_threads(), "argv": list(sys.argv), "cwd": os.getcwd(),
            "path_tail": sys.path[-1], "env": os.environ.get("WARM_JOBS_MARK"),
            "sigint": getattr(signal.getsignal(signal.SIGINT), "__name__", str(signal.getsignal(signal.SIGINT))),
            "dtype": str(torch.get_default_dtype()), "warned": len(caught), "pid": os.getpid(),
            "user_module_loaded": "warm_user_module" in sys.modules}


def meddle() -> int:
    """Change everything :func:`seen` looks at (as a careless user module might)."""
    import numpy as np
    import torch

    import warm_user_module  # noqa: F401 - a user module: the next job must import it afresh

    random.seed(5)
    np.random.seed(5)
    torch.manual_seed(5)
    torch.set_num_threads(3)
    torch.set_default_dtype(torch.float64)
    sys.argv[:] = ["meddled"]
    sys.path.append("/nowhere")
    os.environ["WARM_JOBS_MARK"] = "left behind"
    os.chdir("/")
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    print("meddled")  # into the job's log
    return os.getpid()


def leak(mb: int) -> int:
    """Memory that no reset frees (held by a module that stays loaded)."""
    sys.__dict__.setdefault("_warm_jobs_leak", []).append(bytearray(mb * 2**20))
    return os.getpid()


def hang() -> None:
    while True:
        time.sleep(0.05)


def crash() -> None:
    import ctypes

    ctypes.string_at(0)
