"""Command line: serve | migrate | keys {create,list,roll,revoke} | scan | check-config | demo."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any, Final

import structlog

from authproxy import __version__
from authproxy.cli.scan import check_paths, scan
from authproxy.config.schema import Config, LoggingConfig, load_config
from authproxy.errors import (
    AuthProxyError,
    ConfigError,
    Conflict,
    InvalidInput,
    MigrationError,
    NotFound,
    StoreUnavailable,
)
from authproxy.keys.format import ParsedKey
from authproxy.observability.logs import configure_logging

EXIT_OK: Final = 0
EXIT_FAILURE: Final = 1  # a dependency failed: database unreachable, migration failed
EXIT_USAGE: Final = 2  # bad arguments, bad config, bad input (argparse uses 2 too)
EXIT_NOT_FOUND: Final = 4
EXIT_FOUND: Final = 1  # authproxy scan: a key was found

log = structlog.get_logger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="authproxy", description=__doc__)
    parser.add_argument("--version", action="version", version=f"authproxy {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text)
        sub.add_argument("--config", help="YAML config file (default: $AUTHPROXY_CONFIG)")
        return sub

    serve = command("serve", "run the daemon")
    serve.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="worker processes sharing the port (default: server.workers)",
    )
    serve.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    command("migrate", "apply pending sql/ migrations (idempotent)")
    command("check-config", "validate the configuration; exit 2 listing every problem")
    command("demo", "embedded database + sample upstream + a first key, then serve")
    keys = commands.add_parser("keys", help="create, list and revoke API keys")
    key_commands = keys.add_subparsers(dest="keys_command", required=True)
    create = key_commands.add_parser("create", help="create a key; prints it once")
    create.add_argument("--space", required=True)
    create.add_argument("--name", required=True)
    create.add_argument("--expires-at", help="RFC 3339 date-time, in the future")
    create.add_argument(
        "--rate-limit",
        type=float,
        metavar="PER_SECOND",
        help="requests/s for this key (default: limits.key_rate_per_second)",
    )
    listing = key_commands.add_parser("list", help="list a space's keys, newest first")
    listing.add_argument("--space", required=True)
    listing.add_argument(
        "--unused-for",
        metavar="D",
        help="only active keys not used (or, never used, created) for longer than D: "
        "seconds, or a number with s, m, h or d (90d)",
    )
    roll = key_commands.add_parser(
        "roll", help="replace a key with a new one (printed once); the old one expires soon"
    )
    roll.add_argument("--space", required=True)
    roll.add_argument("key_id", metavar="KEY_ID")
    roll.add_argument(
        "--grace",
        metavar="D",
        help="how much longer the old key works, at most: 0 to 30d (default 1d)",
    )
    roll.add_argument("--name", help="the new key's name (default: the old key's)")
    revoke = key_commands.add_parser("revoke", help="revoke a key for good")
    revoke.add_argument("--space", required=True)
    revoke.add_argument("key_id", metavar="KEY_ID")
    for sub in (create, listing, roll, revoke):
        sub.add_argument("--config", help="YAML config file (default: $AUTHPROXY_CONFIG)")
    scan = command("scan", "find our keys in files (reported by prefix); exit 1 when found")
    scan.add_argument(
        "paths", nargs="*", default=["."], metavar="PATH", help="files and folders; - is stdin"
    )
    scan.add_argument(
        "--check",
        action="store_true",
        help="ask the database whether each key is active, revoked, expired or unknown",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "scan" and not args.check:
        # No config, no database, no logging set up: a pre-commit hook must not need them.
        return _scan(args.paths)
    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        return _config_problems(exc.problems)
    if args.command == "check-config":
        return _check_config(cfg)
    configure_logging(
        cfg.logging
        if args.command in ("serve", "demo")
        else LoggingConfig(level="warning", format=cfg.logging.format)
    )
    try:
        return _run(args, cfg)
    except ConfigError as exc:  # found at start: a TLS file that does not load
        return _config_problems(exc.problems)
    except AuthProxyError as exc:
        return _report(exc)


def _config_problems(problems: list[str]) -> int:
    for problem in problems:
        print(problem, file=sys.stderr)
    return EXIT_USAGE


def _check_config(cfg: Config) -> int:
    """The effective config, and the TLS files loaded as serve would load them; warnings
    (valid but likely wrong, exit 0) go to stderr, one ``warning: setting: …`` line each."""
    from authproxy.config.pooler import database_warnings
    from authproxy.tls.checkup import inspect_tls

    tls, problems = inspect_tls(cfg)
    if problems:
        return _config_problems(problems)
    report: dict[str, Any] = {"status": "ok", "config": redacted(cfg)}
    if tls:
        report["tls"] = tls
    db = cfg.db
    warnings = database_warnings(db.url, db.listen_url, db.is_transaction_pooled)
    if warnings:
        report["warnings"] = warnings
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(json.dumps(report, indent=2))
    return EXIT_OK


def _run(args: argparse.Namespace, cfg: Config) -> int:
    # Imported late: `check-config` and `--help` should not pay for aiohttp and asyncpg.
    from authproxy.cli import commands
    from authproxy.db.embedded import resolve_database

    cfg = resolve_database(cfg)
    if args.command == "serve":
        if args.workers is not None:
            cfg = dataclasses.replace(
                cfg, server=dataclasses.replace(cfg.server, workers=args.workers)
            )
        if args.worker:  # started by the supervisor, which has migrated already
            cfg = dataclasses.replace(cfg, db=dataclasses.replace(cfg.db, auto_migrate=False))
        return commands.serve(cfg, worker=args.worker, config_path=args.config)
    if args.command == "demo":
        return commands.demo(cfg)
    if args.command == "scan":
        return _scan(args.paths, lambda found: asyncio.run(commands.leak_statuses(cfg, found)))
    if args.command == "migrate":
        _print(asyncio.run(commands.migrate(cfg)))
        return EXIT_OK
    if args.keys_command == "create":
        _print(
            asyncio.run(
                commands.create_key(cfg, args.space, args.name, args.expires_at, args.rate_limit)
            )
        )
    elif args.keys_command == "list":
        _print(asyncio.run(commands.list_keys(cfg, args.space, args.unused_for)))
    elif args.keys_command == "roll":
        _print(asyncio.run(commands.roll_key(cfg, args.space, args.key_id, args.grace, args.name)))
    else:
        _print(asyncio.run(commands.revoke_key(cfg, args.space, args.key_id)))
    return EXIT_OK


def _scan(paths: list[str], check: Callable[[list[ParsedKey]], list[str]] | None = None) -> int:
    """One JSON line per key found: exit 1 when any, 0 when none; 2 when a path is
    missing or could not be read (nothing is known to be clean then)."""
    try:
        check_paths(paths)
    except InvalidInput as exc:
        return _report(exc)
    found = scan(paths, sys.stdin.buffer)
    statuses = check([f.key for f in found.findings]) if check and found.findings else None
    for i, finding in enumerate(found.findings):
        print(json.dumps(finding.as_json(None if statuses is None else statuses[i])))
    for path, reason in found.unreadable:
        error = {"code": "unreadable", "message": f"{path}: {reason}"}
        print(json.dumps({"error": error}), file=sys.stderr)
    if found.findings:
        return EXIT_FOUND
    return EXIT_USAGE if found.unreadable else EXIT_OK


def _report(exc: AuthProxyError) -> int:
    code, status = {
        InvalidInput: ("invalid_input", EXIT_USAGE),
        NotFound: ("not_found", EXIT_NOT_FOUND),
        StoreUnavailable: ("key_store_unavailable", EXIT_FAILURE),
        MigrationError: ("migration_failed", EXIT_FAILURE),
    }.get(type(exc), ("error", EXIT_FAILURE))
    message = "no such key in this space" if isinstance(exc, NotFound) else str(exc)
    if isinstance(exc, Conflict):  # the key's state forbids it: bad input, its own code
        code, status = exc.code, EXIT_USAGE
    print(json.dumps({"error": {"code": code, "message": message}}), file=sys.stderr)
    return status


def _print(payload: Any) -> None:
    print(json.dumps(payload, indent=2))


def redacted(cfg: Config) -> dict[str, Any]:
    """The effective config as JSON, secrets masked (for check-config's report)."""
    data = dataclasses.asdict(cfg)
    for name in ("url", "listen_url"):
        if data["db"][name]:
            data["db"][name] = "<redacted>"
    if data["admin"]["jwt_secret"]:
        data["admin"]["jwt_secret"] = "<redacted>"
    return data
