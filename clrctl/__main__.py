"""``python -m clrctl`` and the ``clrctl`` console script.

Importing the CLI (typer, rich, pydantic) takes about a second; a Ctrl-C or SIGTERM in that
second is recorded and reported by ``main()`` like any other interruption (exit 130, one
line) instead of ending in a traceback from the middle of an import.
"""

from clrctl import interrupts


def main() -> None:
    interrupts.record_early()
    from clrctl.cli import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()
