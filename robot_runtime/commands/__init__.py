"""The `kiwi` subcommands, grouped by area; each module's ``register`` adds its parsers."""

from __future__ import annotations

import argparse


class Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Descriptions kept as written; defaults shown, except empty ones (None, False)."""

    def _get_help_string(self, action):
        if action.default in (None, False, []) or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def add_set_arg(p: argparse.ArgumentParser, help: str) -> None:
    """--set KEY=VALUE (repeatable), collected in ``args.overrides``."""
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=help
    )


def add_config_args(p: argparse.ArgumentParser, default: str, presets: bool = True) -> None:
    """--config, --set (and, with ``presets``, --quick and --no-progress)."""
    p.add_argument("--config", default=default, help="job config (YAML) under configs/ or a path")
    add_set_arg(p, "override one config key, e.g. --set train.steps=200 (repeatable)")
    if not presets:
        return
    p.add_argument(
        "--quick",
        action="store_true",
        help="apply the config's `quick` preset: tiny data and budgets for smoke tests",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def load_job(args, cls):
    from ..config import load_config

    return load_config(args.config, cls, args.overrides, "quick" if args.quick else None)


def load_any_job(args):
    """A job file of any task (its ``task:`` key picks the schema)."""
    from ..config import load_job as load

    return load(args.config, args.overrides, "quick" if args.quick else None)


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
