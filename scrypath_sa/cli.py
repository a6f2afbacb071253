"""``scrypath-sa``: a thin shell over the operator API.

Finds your configuration from ``--app package.module:obj`` (or ``SCRYPATH_SA_APP``):
``obj`` is the Config that ``scrypath_sa.configure()`` returned, or a callable returning
it; without ``:obj`` the module is imported and the configuration it installed is used.

Exit codes: 0 healthy, 2 needs attention, 1 error. ``--json`` on every command. No
secret is ever printed: errors pass through the same redaction as ``last_error``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import scrypath_sa
from scrypath_sa.config import Config
from scrypath_sa.errors import ConfigurationError, ScrypathError
from scrypath_sa.listeners import current_config
from scrypath_sa.redaction import redact

OK, ERROR, ATTENTION = 0, 1, 2


def load_app(spec: str | None) -> Config:
    spec = spec or os.environ.get("SCRYPATH_SA_APP")
    if not spec:
        raise ConfigurationError(
            "say where your configuration is: --app package.module[:obj] or SCRYPATH_SA_APP")
    module_name, _, attr = spec.partition(":")
    sys.path.insert(0, os.getcwd())
    module = importlib.import_module(module_name)
    if attr:
        found: Any = module
        for part in attr.split("."):
            found = getattr(found, part)
        if callable(found) and not isinstance(found, Config):
            found = found()
        if not isinstance(found, Config):
            raise ConfigurationError(f"{spec} is not a scrypath_sa Config (got {found!r})")
        return found
    config = current_config()
    if config is None:
        raise ConfigurationError(f"importing {module_name} did not call scrypath_sa.configure()")
    return config


def _seconds(value: str) -> dt.timedelta:
    return dt.timedelta(seconds=float(value))


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=True, default=str))


# ------------------------------------------------------------------------- commands

def cmd_status(config: Config, args: argparse.Namespace) -> int:
    report = scrypath_sa.status(args.model or None, config=config,
                                stuck_after=_seconds(args.stuck_after))
    if args.json:
        _print_json(report.to_dict())
    else:
        for m in report.models:
            counts = " ".join(f"{k}={v}" for k, v in m.counts.items() if v)
            print(f"{m.model} -> {m.index}")
            print(f"  events: {counts or 'none'}")
            if m.oldest_unfinished_age_seconds is not None:
                print(f"  oldest unfinished: {m.oldest_unfinished_age_seconds:.0f}s ago")
            if m.retrying:
                print(f"  retrying: {m.retrying}, next attempt {m.next_attempt_at}")
            print(f"  alias -> {', '.join(m.alias_points_to) or '(none)'}; "
                  f"documents: {m.documents if m.documents is not None else '?'}")
            if m.rebuild_in_progress:
                print(f"  rebuild in progress: {m.rebuild_in_progress}")
            match = {True: "matches", False: "DIFFERS", None: "unknown"}[m.contract_matches]
            print(f"  contract {m.contract_hash}: live index {match}")
            for problem in m.problems:
                print(f"  ! {problem}")
    return ATTENTION if report.needs_attention else OK


def cmd_failed(config: Config, args: argparse.Namespace) -> int:
    report = scrypath_sa.failed(args.model or None, config=config,
                                states=args.state or ("retrying", "discarded"),
                                error_kind=args.error_kind, limit=args.limit,
                                after_id=args.after_id)
    if args.json:
        _print_json(report.to_dict())
    else:
        for e in report.events:
            print(f"{e.id} {e.model}/{e.document_id} {e.operation} {e.state} "
                  f"attempts={e.attempts} {e.failure_class}: {e.last_error}")
        if report.next_after_id is not None:
            print(f"(more: --after-id {report.next_after_id})")
        if not report.events:
            print("no failed events")
    return ATTENTION if report.events else OK


def cmd_retry(config: Config, args: argparse.Namespace) -> int:
    outcome = scrypath_sa.retry(args.event_id, mode=args.mode, config=config)
    if args.json:
        _print_json(outcome.to_dict())
    else:
        print(outcome.describe())
    return OK if outcome.ok else ATTENTION


def cmd_sweep(config: Config, args: argparse.Namespace) -> int:
    report = scrypath_sa.sweep(config, older_than=_seconds(args.older_than),
                               stale_after=_seconds(args.stale_after))
    if args.json:
        _print_json(report.to_dict())
    else:
        print(f"redispatched {report.dispatched} events")
        for outcome in report.outcomes:
            print(f"  {outcome.describe()}")
    return OK if all(o.ok for o in report.outcomes) else ATTENTION


def cmd_confirm(config: Config, args: argparse.Namespace) -> int:
    report = scrypath_sa.confirm(args.event_ids or None, config=config)
    if args.json:
        _print_json(report.to_dict())
    else:
        print(f"confirmed {len(report.confirmed)} events; {len(report.missing)} not found "
              "at their version")
        for missing in report.missing:
            print(f"  ! event {missing['event_id']} {missing['index']}/"
                  f"{missing['document_id']}: found version {missing['found_version']}")
    return OK if report.ok else ATTENTION


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scrypath-sa", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--app", help="package.module[:obj] holding your configuration "
                                      "(default: $SCRYPATH_SA_APP)")
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, fn: Callable[[Config, argparse.Namespace], int],
                text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=text, description=text)
        p.add_argument("--json", action="store_true", help="print JSON")
        p.set_defaults(fn=fn)
        return p

    p = command("status", cmd_status, "events by state, index posture, contract match")
    p.add_argument("--model", action="append", help="model class name or index alias")
    p.add_argument("--stuck-after", default="300", help="seconds (default 300)")
    p = command("failed", cmd_failed, "retrying and discarded events")
    p.add_argument("--model", action="append")
    p.add_argument("--state", action="append", choices=["retrying", "discarded"])
    p.add_argument("--error-kind")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--after-id", type=int)
    p = command("retry", cmd_retry, "send exactly one event again")
    p.add_argument("event_id", type=int)
    p.add_argument("--mode", help="dispatch through this mode instead of the event's own")
    p = command("sweep", cmd_sweep, "push requested, due retrying and stale work again")
    p.add_argument("--older-than", default="30", help="seconds (default 30)")
    p.add_argument("--stale-after", default="900", help="seconds (default 900)")
    p = command("confirm", cmd_confirm, "verify backend_accepted events and complete them")
    p.add_argument("event_ids", type=int, nargs="*")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = load_app(args.app)
        code: int = args.fn(config, args)
    except ScrypathError as exc:
        print(f"scrypath-sa: error: {redact(exc)}", file=sys.stderr)
        return ERROR
    except Exception as exc:  # noqa: BLE001 - the user's app or a driver failed; say so safely
        print(f"scrypath-sa: error: {type(exc).__name__}: {redact(exc)}", file=sys.stderr)
        return ERROR
    return code


if __name__ == "__main__":
    sys.exit(main())
