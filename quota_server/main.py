"""`quota-server`: run the quota-and-credit authorization service."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import sys

from .config import ConfigError, load_config, parse_storage_url
from .server import StartupError, run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="quota-server",
        description="gRPC quota-and-credit authorization service (reserve / commit / release, rate limits).",
    )
    parser.add_argument("--config", metavar="PATH", help="TOML config file (default: built-in defaults)")
    parser.add_argument("--listen", metavar="HOST:PORT", help="override [server] listen")
    parser.add_argument("--storage-url", metavar="URL", help="override [storage] url")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return parser


def apply_overrides(config, args):
    """The config with the command-line overrides applied (validated like the file)."""
    if args.listen:
        from .config import parse_config  # validate through the same rules as the file

        parse_config({"server": {"listen": args.listen}}, source="--listen")
        config = dataclasses.replace(config, server=dataclasses.replace(config.server, listen=args.listen))
    if args.storage_url:
        try:
            url = parse_storage_url(args.storage_url)
        except ValueError as exc:
            raise ConfigError("--storage-url", str(exc)) from None
        config = dataclasses.replace(config, storage=dataclasses.replace(config.storage, url=url))
    return config


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = apply_overrides(load_config(args.config), args)
    except ConfigError as exc:
        print(f"quota-server: bad configuration: {exc}", file=sys.stderr)
        return 2
    for warning in config.warnings:
        logging.getLogger("quota.config").warning("%s", warning)
    try:
        import uvloop  # noqa: F401

        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    try:
        return runner(run(config))
    except StartupError as exc:
        print(f"quota-server: cannot start: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
