"""The `metalcore` command: one module per subcommand, each with ``add_parser(subparsers)``."""

from __future__ import annotations

import argparse
import importlib
import sys

from metalcore import config

SUBCOMMANDS = ("tap", "status", "lab", "trace")


def settings_for_cli(args: argparse.Namespace):
    """Settings without a stage: the CLI needs the run dir, not the stages' required values."""
    try:
        settings = config.load("")
    except config.ConfigError as e:
        sys.exit(f"metalcore: configuration error: {e}")
    return settings


def run_dir(args: argparse.Namespace) -> str:
    return args.run_dir or settings_for_cli(args).run_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="metalcore", description="metalcore: the per-rack Metal Core.")
    parser.add_argument("--run-dir", help="bus socket directory (default: METAL_CORE_RUN_DIR or the config)")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in SUBCOMMANDS:
        try:
            module = importlib.import_module(f"metalcore.cli.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"metalcore.cli.{name}":
                raise
            continue
        module.add_parser(sub)
    args = parser.parse_args(argv)
    return args.func(args) or 0


if __name__ == "__main__":
    sys.exit(main())
