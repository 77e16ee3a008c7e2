"""The `kiwi` subcommands, grouped by area; each module's ``register`` adds its parsers."""

from __future__ import annotations

import argparse


class Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    pass


def add_config_args(p: argparse.ArgumentParser, default: str) -> None:
    p.add_argument("--config", default=default, help="job config (YAML) under configs/ or a path")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one config key, e.g. --set train.steps=200 (repeatable)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="apply the config's `quick` preset: tiny data and budgets for smoke tests",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def load_job(args, cls):
    from ..config import load_config

    return load_config(args.config, cls, args.overrides, "quick" if args.quick else None)


def set_threads(n: int) -> None:
    import torch

    torch.set_num_threads(n)


def command(sub, name: str, func, help: str, description: str, example: str):
    """A subparser whose --help teaches: a description and at least one example."""
    p = sub.add_parser(
        name,
        help=help,
        description=description,
        formatter_class=Formatter,
        epilog="example:\n" + "\n".join(f"  {line}" for line in example.splitlines()),
    )
    p.set_defaults(func=func)
    return p
