"""``scrypath-sa``: a thin shell over the operator API.

Finds your configuration from ``--app package.module:obj`` (or ``SCRYPATH_SA_APP``):
``obj`` is the Config that ``scrypath_sa.configure()`` returned, or a callable returning
it; without ``:obj`` the module is imported and the configuration it installed is used.

Exit codes, for every command: 0 when it did what was asked and what it reports is
healthy; 2 when it worked and found something that needs attention, or did only part of
what was asked; 1 when it could not do its job (the search backend or the database
could not be reached, bad arguments, a refused request). ``--json`` on every command
prints one JSON object, errors included (``{"ok": false, "error": ...}``). No secret is
ever printed: errors pass through the same redaction as ``last_error``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import inspect
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

import scrypath_sa
from scrypath_sa.config import Config
from scrypath_sa.errors import ConfigurationError, ScrypathError
from scrypath_sa.install import current_config
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
        if not isinstance(found, Config) and _takes_no_arguments(found):
            found = found()  # a factory: create_app, or a function returning the Config
        if isinstance(found, Config):
            return found
        extensions = getattr(found, "extensions", None)  # a Flask app with FlaskSearch
        own = extensions.get("scrypath_sa") if isinstance(extensions, dict) else None
        if isinstance(own, Config):
            return own
        # An application object (a Flask or FastAPI app): making it configured the library.
        config = current_config()
        if config is None:
            raise ConfigurationError(
                f"{spec} is not a scrypath_sa Config, and loading it did not call "
                "scrypath_sa.configure(); point --app at the Config configure() returned")
        return config
    config = current_config()
    if config is None:
        raise ConfigurationError(f"importing {module_name} did not call scrypath_sa.configure()")
    return config


def _takes_no_arguments(obj: Any) -> bool:
    if not callable(obj):
        return False
    try:
        signature = inspect.signature(obj)
    except (TypeError, ValueError):
        return False
    return all(p.default is not p.empty or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
               for p in signature.parameters.values())


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
                overdue = (m.next_attempt_at is not None
                           and m.next_attempt_at <= report.generated_at)
                print(f"  retrying: {m.retrying}, next attempt {m.next_attempt_at}"
                      + (" (overdue: nothing retries it until a worker or sweep runs)"
                         if overdue else ""))
            if m.backend_error:
                print("  alias -> unknown; documents: unknown")
            else:
                health = m.health.status if m.health is not None else "unknown"
                print(f"  alias -> {', '.join(m.alias_points_to) or '(none)'}; "
                      f"documents: {m.documents if m.documents is not None else 'none'}; "
                      f"health: {health if m.alias_points_to else '-'}")
            if m.rebuild_in_progress:
                print(f"  rebuild in progress: {m.rebuild_in_progress}")
            run = m.distributed
            if run is not None and (not run.done or run.problems):
                rate = f", {run.rows_per_second:,.0f} rows/s" if run.rows_per_second else ""
                eta = f", ETA {run.eta_seconds:.0f}s" if run.eta_seconds is not None else ""
                print(f"  distributed rebuild of {run.index}: {run.state}, ranges "
                      f"{run.ranges_done}/{run.ranges}, rows {run.rows_done}/{run.rows}"
                      f"{rate}{eta}")
            match = {True: "matches", False: "DIFFERS", None: "unknown"}[m.contract_matches]
            print(f"  contract {m.contract_hash}: live index {match}")
            for problem in m.problems:
                print(f"  ! {problem}")
        for problem in report.problems:
            print(f"! {problem}")
    if any(m.backend_error for m in report.models):
        return ERROR
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
        print(f"redispatched {report.dispatched} events; confirmed {report.confirmed} "
              f"accepted writes ({report.unverified} could not be checked); sent "
              f"{report.rebuild_tasks} rebuild ranges again")
        for outcome in report.outcomes:
            print(f"  {outcome.describe()}")
    return OK if all(o.ok for o in report.outcomes) and not report.unverified else ATTENTION


def cmd_confirm(config: Config, args: argparse.Namespace) -> int:
    report = scrypath_sa.confirm(args.event_ids or None, config=config)
    if args.json:
        _print_json(report.to_dict())
    else:
        print(f"confirmed {len(report.confirmed)} events; {len(report.missing)} not found "
              "at their version")
        for missing in report.missing:
            found = missing["found_version"]
            print(f"  ! event {missing['event_id']} {missing['index']}/"
                  f"{missing['document_id']}: " + ("not in the index" if found is None else
                                                   f"found version {found}"))
        for unverified in report.unverified:
            print(f"  ! {len(unverified['event_ids'])} events in {unverified['index']} could "
                  f"not be verified; they stay backend_accepted: {unverified['error']}")
    if report.unverified:
        return ERROR
    return OK if report.ok else ATTENTION


def _progress_bar(progress: Any) -> None:
    """A bar redrawn in place on a terminal; nothing when stderr is not one."""
    if not sys.stderr.isatty():
        return
    eta = f"{progress.eta_seconds:.0f}s" if progress.eta_seconds is not None else "?"
    width = 30
    filled = int(width * progress.done / progress.total) if progress.total else width
    print(f"\r[{'#' * filled}{'.' * (width - filled)}] {progress.done}/{progress.total} "
          f"{progress.rate:,.0f} rows/s ETA {eta}", end="", file=sys.stderr, flush=True)


def cmd_reconcile(config: Config, args: argparse.Namespace) -> int:
    report = scrypath_sa.reconcile(args.model or None, action=args.action, force=args.force,
                                   config=config, stuck_after=_seconds(args.stuck_after))
    if args.json:
        _print_json(report.to_dict())
    else:
        for m in report.models:
            if m.error:
                print(f"{m.model} -> {m.index}: unknown (could not compare)")
                print(f"  ! could not compare: {m.error}")
                continue
            print(f"{m.model} -> {m.index}: {m.rows} rows ({m.indexable_rows} indexable), "
                  f"{m.documents} documents")
            print(f"  missing from index: {m.missing_from_index}; orphaned in index: "
                  f"{m.orphaned_in_index}; behind newest completed write: "
                  f"{m.behind_completed_version}; content differs: {m.content_differs}; "
                  f"ahead of the database: {m.ahead_of_database}")
            print(f"  in flight: {m.in_flight}; stuck: {m.stuck}; retrying: {m.retrying}; "
                  f"discarded: {m.discarded}")
            print(f"  recommendation: {m.recommendation}")
            for reason in m.reasons:
                print(f"    - {reason}")
            for kind, ids in m.samples.items():
                print(f"  e.g. {kind}: {', '.join(ids[:5])}")
        for taken in report.actions_taken:
            action, model = taken["action"], taken["model"]
            result = taken.get("result")
            if "reason" in taken:
                print(f"{action} on {model}: {taken['reason']}")
            elif "error" in taken:
                print(f"{action} on {model} failed: {taken['error']}")
            elif not taken["done"]:
                print(f"{action} on {model} ran but did not check out:")
                for line in _trouble(result)[:10]:
                    print(f"    ! {line}")
            else:
                print(f"did {action} on {model}")
            if "result" in taken or "error" in taken:
                print(f"  afterwards: recommendation {taken['after']}")
                for reason in taken.get("after_reasons", []):
                    print(f"    - {reason}")
    if report.failed:
        return ERROR
    return ATTENTION if report.needs_attention else OK


def _trouble(result: Any) -> list[str]:
    """What went wrong in a repair's result: a rebuild's problems or rejected documents,
    or a retry's dispatch errors and failed events."""
    if isinstance(result, dict):
        return list(result.get("problems") or [
            f"{f['document_id']}: {f['error']}" for f in result.get("failures", [])])
    lines = []
    for outcome in result or []:
        if outcome["error"]:
            lines.append(f"mode {outcome['mode']}: {outcome['error']}")
        lines.extend(f"event {f['event_id']} {f['state']}: {f['error']}"
                     for f in outcome["failures"])
    return lines


def _distributed(config: Config, args: argparse.Namespace, run: Any) -> int:
    """Print a started distributed rebuild; with ``--wait``, follow it to its end."""
    if not args.wait:
        if args.json:
            _print_json(run.to_dict())
        else:
            print(f"{run.model}: started a distributed rebuild of {run.index} in "
                  f"{run.ranges} ranges ({run.rows} rows); follow it with `scrypath-sa "
                  "status` or wait with --wait")
        return OK
    while not run.done:
        _progress_bar(_RunBar(run))
        time.sleep(1.0)  # polling the checkpoints the workers write
        run = scrypath_sa.rebuild_progress(run.index, config=config) or run
    if args.json:
        _print_json(run.to_dict())
    else:
        if sys.stderr.isatty():
            print(file=sys.stderr)
        cut = f"; alias {run.reindex_of} -> {run.index}" if run.cut_over else ""
        print(f"{run.model}: {run.state}: {run.rows_done} rows in {run.ranges_done}/"
              f"{run.ranges} ranges{cut}")
        for problem in [*run.problems, *([run.error] if run.error else [])]:
            print(f"  ! {problem}")
    if run.state == "failed":
        return ERROR
    return OK if run.ok else ATTENTION


class _RunBar:
    """A distributed run as the progress bar reads it."""

    def __init__(self, run: Any) -> None:
        self.done, self.total = run.rows_done, max(run.rows, run.rows_done)
        self.rate = run.rows_per_second or 0.0
        self.eta_seconds = run.eta_seconds


def cmd_backfill(config: Config, args: argparse.Namespace) -> int:
    if args.distributed:
        return _distributed(config, args, scrypath_sa.start_backfill(
            args.model, ranges=args.ranges, batch_size=args.batch_size, mode=args.mode,
            config=config))
    report = scrypath_sa.backfill(
        args.model, batch_size=args.batch_size, resume=not args.restart,
        remove_orphans=args.remove_orphans, config=config,
        progress=None if args.json else _progress_bar)
    if args.json:
        _print_json(report.to_dict())
    else:
        if sys.stderr.isatty():
            print(file=sys.stderr)  # end the progress bar's line
        resumed = f" (resumed after {report.resumed_from})" if report.resumed_from else ""
        print(f"{report.model}: {report.rows_seen} rows in {report.seconds:.1f}s{resumed}: "
              f"{report.indexed} indexed, {report.deleted} deleted, {report.orphans_removed} "
              f"orphans removed, {len(report.failures)} failed")
        for failure in report.failures[:20]:
            print(f"  ! {failure['document_id']}: {failure['error']}")
    return OK if report.ok else ATTENTION


def _print_reindex(report: Any, args: argparse.Namespace) -> int:
    if args.json:
        _print_json(report.to_dict())
    else:
        print(f"{report.model}: built {report.new_index} ({report.documents} documents, "
              f"{report.expected_documents} expected, {report.replayed} replayed)")
        if report.cut_over:
            print(f"  alias {report.alias} -> {report.new_index}; previous kept for rollback: "
                  f"{', '.join(report.previous_indices) or '(none)'}")
        elif report.problems:
            print(f"  alias {report.alias} unchanged: {report.new_index} did not check out "
                  "(below); fix and reindex again, or cutover --force if you accept it")
        else:
            print(f"  alias {report.alias} unchanged; cut over with: scrypath-sa cutover "
                  f"{report.model} {report.new_index}")
        for problem in report.problems:
            print(f"  ! {problem}")
    return OK if report.ok else ATTENTION


def cmd_reindex(config: Config, args: argparse.Namespace) -> int:
    if args.distributed:
        return _distributed(config, args, scrypath_sa.start_reindex(
            args.model, ranges=args.ranges, cutover=args.cutover, batch_size=args.batch_size,
            mode=args.mode, config=config))
    report = scrypath_sa.reindex(args.model, cutover=args.cutover, batch_size=args.batch_size,
                                 config=config, progress=None if args.json else _progress_bar)
    if not args.json and sys.stderr.isatty():
        print(file=sys.stderr)  # end the progress bar's line
    return _print_reindex(report, args)


def _distributed_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--distributed", action="store_true",
                   help="split the rows into ranges and let the workers of --mode run them")
    p.add_argument("--ranges", type=int, default=None,
                   help="how many ranges (default: about 100,000 rows each)")
    p.add_argument("--mode", default="dramatiq", help="the mode whose workers run the ranges")
    p.add_argument("--wait", action="store_true",
                   help="follow the distributed run to its end (exit code: its result)")


def cmd_cutover(config: Config, args: argparse.Namespace) -> int:
    report = scrypath_sa.cutover(args.model, args.index, force=args.force, config=config)
    return _print_reindex(report, args)


def cmd_prune(config: Config, args: argparse.Namespace) -> int:
    report = scrypath_sa.prune(
        args.model or None, config=config,
        completed_older_than=dt.timedelta(days=args.completed_older_than_days),
        keep_previous_indices=args.keep_indices, include_failed=args.include_failed,
        failed_older_than=dt.timedelta(days=args.failed_older_than_days),
        dry_run=args.dry_run)
    if args.json:
        _print_json(report.to_dict())
    else:
        verb = "would delete" if report.dry_run else "deleted"
        print(f"{verb} {report.events_deleted} completed events, "
              f"{report.failed_events_deleted} discarded events, indices: "
              f"{', '.join(report.indices_deleted) or '(none)'}")
        for error in report.errors:
            print(f"  ! indices not pruned: {error}")
    return OK if report.ok else ERROR


class _Parser(argparse.ArgumentParser):
    """Bad arguments exit 1 (argparse's own 2 means "needs attention" here), as JSON
    when ``--json`` was given."""

    def error(self, message: str) -> NoReturn:
        if _json_requested:
            _print_json({"ok": False, "error": message})
        else:
            self.print_usage(sys.stderr)
            print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(ERROR)


_json_requested = False


def cmd_upgrade(config: Config, args: argparse.Namespace) -> int:
    from scrypath_sa import migrations

    before, after = migrations.upgrade(config.bind, args.revision)
    if args.json:
        _print_json({"ok": True, "from": before, "to": after})
    else:
        print(f"sync tables at {after}" + (f" (were at {before or 'nothing'})"
                                           if before != after else " (already)"))
    return OK


def build_parser(prog: str = "scrypath-sa") -> argparse.ArgumentParser:
    return _build_parser(prog)[0]


def _build_parser(prog: str) -> tuple[argparse.ArgumentParser, Any]:
    """The parser, and its subcommands' action (``.choices``: name -> parser)."""
    parser = _Parser(prog=prog, description=__doc__,
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
    p = command("reconcile", cmd_reconcile,
                "compare database and index both ways; recommend (or do) a repair")
    p.add_argument("--model", action="append")
    p.add_argument("--action", choices=["retry", "backfill", "reindex"],
                   help="perform this repair on the models for which it is the recommendation")
    p.add_argument("--force", action="store_true",
                   help="with --action: on every model that needs a repair, whatever the "
                        "recommendation")
    p.add_argument("--stuck-after", default="300",
                   help="seconds after which unfinished events count as stuck (default 300)")
    p = command("backfill", cmd_backfill, "write every row of a model into its index")
    p.add_argument("model", help="model class name or index alias")
    p.add_argument("--batch-size", type=int, default=1000)
    p.add_argument("--remove-orphans", action="store_true")
    p.add_argument("--restart", action="store_true", help="ignore a saved position")
    _distributed_options(p)
    p = command("reindex", cmd_reindex, "rebuild a model's index behind its alias")
    p.add_argument("model")
    p.add_argument("--batch-size", type=int, default=1000)
    p.add_argument("--cutover", action=argparse.BooleanOptionalAction, default=True,
                   help="move the alias when the new index checks out (default: yes)")
    _distributed_options(p)
    p = command("cutover", cmd_cutover, "move a model's alias to an index reindex built")
    p.add_argument("model")
    p.add_argument("index")
    p.add_argument("--force", action="store_true", help="even if the counts differ")
    p = command("prune", cmd_prune, "delete old completed events and old physical indices")
    p.add_argument("--model", action="append")
    p.add_argument("--completed-older-than-days", type=float, default=7)
    p.add_argument("--keep-indices", type=int, default=1)
    p.add_argument("--include-failed", action="store_true")
    p.add_argument("--failed-older-than-days", type=float, default=30)
    p.add_argument("--dry-run", action="store_true")
    p = command("upgrade", cmd_upgrade,
                "create or upgrade the sync tables (their own Alembic history and version "
                "table, apart from your app's)")
    p.add_argument("revision", nargs="?", default="heads")
    return parser, sub


def command_names() -> list[str]:
    """Every command, for shells that wrap this one (``flask search``)."""
    return list(_build_parser("scrypath-sa")[1].choices)


def main(argv: Sequence[str] | None = None, *, config: Config | None = None,
         prog: str = "scrypath-sa") -> int:
    """Run one command; ``config`` given (the ``flask search`` group), ``--app`` is not
    needed."""
    global _json_requested
    _json_requested = "--json" in (sys.argv[1:] if argv is None else list(argv))
    library_log = logging.getLogger("scrypath_sa")
    if not library_log.handlers:  # the commands print what they found; once is enough
        library_log.addHandler(logging.NullHandler())
    args = build_parser(prog).parse_args(argv)
    try:
        config = config or load_app(args.app)
        code: int = args.fn(config, args)
    except ScrypathError as exc:
        return _error(redact(exc), args.json)
    except Exception as exc:  # noqa: BLE001 - the user's app or a driver failed; say so safely
        return _error(f"{type(exc).__name__}: {redact(exc)}", args.json)
    return code


def _error(message: str, as_json: bool) -> int:
    if as_json:
        _print_json({"ok": False, "error": message})
    else:
        print(f"scrypath-sa: error: {message}", file=sys.stderr)
    return ERROR


if __name__ == "__main__":
    sys.exit(main())
