"""Arguments and options that several commands take, declared once.

Each is a function returning a fresh typer declaration: the flag names, default and parsing
live here, while a command whose meaning differs passes its own ``help`` (``sweep``'s
``--run-dir`` is the sweep directory, ``range-test``'s ``--seeds`` also says what it repeats).
Beside each option is what every command does with it (``--tensorboard`` as an override,
``--nproc`` dropped from the workers' command line). Cheap to import: typer only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from clrctl.config.seeds import SEEDS_HELP
from clrctl.errors import InputError

CONFIG_HELP = "YAML config file (see configs/)."
OVERRIDES_HELP = "Hydra-style overrides: key.path=value …"
RUN_DIR_HELP = "Put the run exactly here (must be new or empty)."
RUNS_ROOT_HELP = "Parent of timestamped run directories."
TENSORBOARD_HELP = "Also write TensorBoard events to RUN/tensorboard/ (train.tensorboard=true)."
NPROC_HELP = ("Run DistributedDataParallel with N processes on this machine (through torch's elastic "
              "launcher, as torchrun does; one GPU each on CUDA, gloo on CPU). dataset.batch_size stays the "
              "global batch and must divide by N. Several machines: torchrun ... -m clrctl train CONFIG.")


def config_argument(help: str = CONFIG_HELP) -> Any:
    """``CONFIG``: optional to typer, so that a missing one is :func:`require_config`'s one-line error."""
    return typer.Argument(None, help=help, show_default=False)


def overrides_argument(help: str = OVERRIDES_HELP) -> Any:
    """``OVERRIDES...``: ``key.path=value`` after the config."""
    return typer.Argument(None, help=help, show_default=False)


def run_dir_option(help: str = RUN_DIR_HELP) -> Any:
    """``--run-dir PATH`` (refused before any work when PATH is a file: :mod:`clrctl.cli`)."""
    return typer.Option(None, "--run-dir", help=help)


def runs_root_option(help: str = RUNS_ROOT_HELP) -> Any:
    """``--runs-root DIR``: where a run without ``--run-dir`` gets its timestamped directory."""
    return typer.Option(Path("runs"), "--runs-root", help=help)


def seeds_option(help: str = SEEDS_HELP) -> Any:
    """``--seeds``: parsed by :func:`clrctl.config.seeds.parse_seeds`, one meaning everywhere."""
    return typer.Option(None, "--seeds", show_default=False, help=help)


def quiet_option(help: str) -> Any:
    """``-q/--quiet``: each command says what it leaves out."""
    return typer.Option(False, "--quiet", "-q", help=help)


def tensorboard_option(help: str = TENSORBOARD_HELP) -> Any:
    """``--tensorboard``: the override ``train.tensorboard=true`` (:func:`tensorboard_override`)."""
    return typer.Option(False, "--tensorboard", help=help)


def nproc_option(help: str = NPROC_HELP) -> Any:
    """``--nproc N``: DDP in N local processes (:func:`without_nproc` is the workers' command line)."""
    return typer.Option(None, "--nproc", min=1, show_default=False, help=help)


def require_config(config: Optional[Path], example: str) -> Path:
    """The CONFIG argument, or the one-line error naming an ``example`` config."""
    if config is None:
        raise InputError(f"missing CONFIG (a YAML file, e.g. {example})")
    return config


def tensorboard_override(tensorboard: bool) -> list[str]:
    """The overrides that ``--tensorboard`` stands for."""
    return ["train.tensorboard=true"] if tensorboard else []


def without_nproc(args: list[str]) -> list[str]:
    """The command line for the workers: these arguments without ``--nproc N``."""
    out, skip = [], False
    for arg in args:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            out.append(arg)
    return out
