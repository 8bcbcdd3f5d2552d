"""Class-incremental segmentation: fine-tuning, PLOP, or PLOP with the latent-space RL of Eq. 6, step after step.

With no arguments it runs task 6-4 of the embedded digit scenes (background + digits 0-5, then 6-9) with PLOP + RL
on the CPU (a few minutes):

    python examples/train_continual.py
    python examples/train_continual.py --task 6-1 --method plop          # 5 steps, PLOP alone

On PASCAL VOC (PLOP's overlap protocol; ADE20K: --preset ade20k-fcn-r50 --task 100-50):

    python examples/train_continual.py --task 15-5 --method plop+rl --data-root /data --preset voc-fcn-r50

Every main-job flag applies (``--help``: one flag per ``TrainConfig`` field, the ``continual`` group holds PLOP's);
``--max-iters`` is the first step's budget, ``--step-iters`` each later step's.  Each step's run folder is
``<out>/step_<t>``; ``<out>/continual.md`` holds the old / new / all mIoU after every step.  Exit codes as the main
job's (2 bad flags or data, 3 too many non-finite steps, 4 a file could not be written).
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agents.cli import build_parser, run_cli
from agents.config import config_from_args
from agents.continual import train_continual
from agents.fit import ConfigError
from segbandit.errors import DataError

DESCRIPTION = "Class-incremental segmentation (PLOP's protocol) with or without latent-space RL. No arguments: digits 6-4."


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Parse flags and run :func:`agents.continual.train_continual`; returns its result."""
    parser = build_parser(prog="train_continual.py", description=DESCRIPTION)
    args = parser.parse_args(argv)
    try:
        cfg = config_from_args(args)
        return train_continual(cfg)
    except DataError:
        raise  # run_cli: one line, exit code 2
    except (ConfigError, ValueError) as err:  # a bad value or task: argparse's one line, exit code 2
        parser.error(str(err))


def cli(argv: list[str] | None = None) -> int:
    """The command line: :func:`main`, with user errors as ``error: ...`` on stderr and an exit code."""
    return run_cli(main, argv)


if __name__ == "__main__":
    sys.exit(cli())
