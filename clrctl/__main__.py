"""``python -m clrctl`` and the ``clrctl`` console script.

Importing the CLI (typer, rich, pydantic) takes about a second; a Ctrl-C or SIGTERM in that
second is recorded and reported by ``main()`` like any other interruption (exit 130, one
line) instead of ending in a traceback from the middle of an import.
"""

import gc

from clrctl import interrupts


def main() -> None:
    interrupts.record_early()
    from clrctl.cli import main as cli_main

    try:
        cli_main()
    finally:
        if interrupts.is_stopping():  # the interrupt is reported: more signals must not turn exit
            interrupts.ignore()  # 130 into death by SIGTERM (Python's exit resets its handlers)
        _exit_without_collecting()


def _exit_without_collecting() -> None:
    """The process ends now: spare its exit the garbage collections over every object that
    torch, torch._dynamo (loaded by the optimizer) and matplotlib created, ~0.4 s after a
    training run. Objects are still freed by reference count and atexit handlers run; only
    objects in reference cycles keep their memory, which the exit returns anyway (and Python
    never promised their ``__del__`` at exit). clrctl closes its files itself."""
    gc.freeze()


if __name__ == "__main__":
    main()
