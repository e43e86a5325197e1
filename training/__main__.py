"""``python -m training SUBCOMMAND``: fit (the engine), baseline (k-means / random-CNN rows), methods.

Each subcommand lives in its own module exposing ``add_arguments(parser)`` and ``run(args) -> int``; this file
only dispatches, so adding a subcommand touches one line here.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from training.errors import TrainingError
from usseg_sdk.errors import UssegError

SUBCOMMANDS = {
    # name: (module, help)
    "fit": ("training.cli_fit", "train a method on images (presets, --set overrides, --resume)"),
    "baseline": ("training.cli_baseline", "score per-pixel k-means or random-CNN + k-means baselines"),
    "methods": ("training.cli_methods", "list the registered methods and their config fields"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    modules = {}
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if e.name != module_name:
                raise
            continue  # subcommand not built yet
        modules[name] = module
        module.add_arguments(sub.add_parser(name, help=help_text, description=help_text))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        return int(modules[args.command].run(args) or 0)
    except (TrainingError, UssegError) as e:  # the user's input is wrong: say what, no traceback
        print(f"error: {user_message(e)}", file=sys.stderr)
        return 2


def user_message(err: Exception) -> str:
    """The error's own message. One raised in a DataLoader worker arrives re-raised with the worker's traceback in
    its text ("Caught DataError in DataLoader worker process 0. Original Traceback ..."): keep what follows the
    traceback's last ``DataError: ``."""
    text = str(err)
    marker = f"{type(err).__name__}: "
    if "Original Traceback" in text and marker in text:
        return text[text.rindex(marker) + len(marker):].strip()
    return text


if __name__ == "__main__":
    sys.exit(main())
