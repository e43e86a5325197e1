"""``python -m training methods``: list registered methods and their config fields with defaults."""

from __future__ import annotations

import argparse
import dataclasses

from training.methods.base import available_methods, get_method_class


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", nargs="?", help="show one method's config fields")


def run(args: argparse.Namespace) -> int:
    names = [args.name] if args.name else available_methods()
    for name in names:
        cls = get_method_class(name)
        doc = (cls.__doc__ or "").strip().splitlines()
        print(f"{name}: {doc[0] if doc else cls.__qualname__}")
        for f in dataclasses.fields(cls.config_class):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
            print(f"    {f.name} = {default!r}")
    return 0
