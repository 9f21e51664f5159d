"""The loopline command: demo, serve, summary, the registry's promote, rollback and history,
and monitoring's incidents and circuit breaker."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import sys

logger = logging.getLogger(__name__)


def _date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid date {text!r}; use YYYY-MM-DD, e.g. 2013-01-28") from None


def build_parser() -> argparse.ArgumentParser:
    from loopline import demo

    parser = argparse.ArgumentParser(prog="loopline", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    run_demo = commands.add_parser("demo", help="run the loop over a window of 2013 through Airflow backfills")
    run_demo.add_argument("--start", type=_date, default=demo.DEFAULT_HISTORY_START, help="first day of history (default: %(default)s)")
    run_demo.add_argument("--live-start", type=_date, default=demo.DEFAULT_LIVE_START, help="first scored and monitored day (default: %(default)s)")
    run_demo.add_argument("--end", type=_date, default=demo.DEFAULT_END, help="last day, included (default: %(default)s)")
    run_demo.add_argument("--timeout", type=float, default=1500, help="maximum wait per phase, in seconds (default: %(default)s)")

    serve = commands.add_parser("serve", help="start the model server for models:/<name>@champion")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    serve.add_argument("--port", type=int, default=8000, help="TCP port (default: %(default)s)")
    serve.add_argument("--poll-seconds", type=float, default=10.0, help="how often to check the alias, in seconds (default: %(default)s)")
    serve.add_argument(
        "--no-access-log",
        dest="access_log",
        action="store_false",
        help="turn off uvicorn's line per request; validation, timings and the monitoring log stay on",
    )

    rollback = commands.add_parser("rollback", help="move @champion back to the version it replaced")
    rollback.add_argument("--reason", required=True, help="why, recorded in the audit log and on the version")

    promote = commands.add_parser("promote", help="move @champion to a given model version")
    promote.add_argument("version", help="registered model version number, e.g. 3")
    promote.add_argument("--reason", required=True, help="why, recorded in the audit log and on the version")

    commands.add_parser("history", help="print every alias move from the registry audit log")

    commands.add_parser("summary", help="print the demo summary for the running services")

    experiment = commands.add_parser(
        "experiment", help="replay 2013 and compare static, monthly, weekly and policy-driven retraining"
    )
    experiment.add_argument("--start", type=_date, default=dt.date(2013, 4, 1), help="first scored day (default: %(default)s)")
    experiment.add_argument("--end", type=_date, default=dt.date(2013, 12, 31), help="last scored day, included (default: %(default)s)")
    experiment.add_argument("--window-days", type=int, default=90, help="days of labelled history per training (default: %(default)s)")
    experiment.add_argument("--out", default="docs/experiment", help="output folder (default: %(default)s)")
    experiment.add_argument(
        "--policy", default=None, help="YAML file of monitoring settings and rules for the policy strategy (default: the config's)"
    )

    incidents = commands.add_parser("incidents", help="list monitoring incidents, newest first")
    incidents.add_argument("--all", action="store_true", help="include closed incidents (default: open ones only)")

    breaker = commands.add_parser("breaker", help="show or reset the circuit breaker that stops retrain loops")
    breaker_commands = breaker.add_subparsers(dest="breaker_command", required=True)
    status = breaker_commands.add_parser("status", help="print whether the breaker is open as of a data day, and why")
    status.add_argument("--date", type=_date, default=None, help="data day to evaluate (default: the newest checked day)")
    reset = breaker_commands.add_parser("reset", help="close the breaker: earlier failed retrains stop counting")
    reset.add_argument("--reason", required=True, help="why retraining may resume, recorded in the monitoring store")

    report = commands.add_parser("report", help="write a report from the monitoring store")
    report.add_argument(
        "kind",
        choices=["latency", "monitoring"],
        help="latency: the model server's time per request stage; monitoring: the HTML monitoring report of one data day",
    )
    report.add_argument("--day", type=_date, default=None, help="data day of the monitoring report, YYYY-MM-DD (required for monitoring)")
    report.add_argument(
        "--out",
        default=None,
        help="latency: output folder (default: <LOOPLINE_HOME>/reports/latency); "
        "monitoring: output HTML file (default: <LOOPLINE_HOME>/reports/monitoring/monitoring_<day>.html)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parser = build_parser()
    args = parser.parse_args(argv)

    if args.command == "serve":
        from loopline.serving.app import run

        run(host=args.host, port=args.port, poll_seconds=args.poll_seconds, access_log=args.access_log)
        return 0

    if args.command in ("rollback", "promote", "history"):
        return _registry_command(args)

    if args.command in ("incidents", "breaker"):
        return _monitoring_command(args)

    if args.command == "experiment":
        from pathlib import Path

        from loopline import experiment
        from loopline.config import apply_policy_file, cached_config

        command = "loopline " + " ".join(argv if argv is not None else sys.argv[1:])
        try:
            config = cached_config()
            if args.policy:
                config = apply_policy_file(config, args.policy)
            summary = experiment.run(config, Path(args.out), args.start, args.end, args.window_days, command)
        except ValueError as error:
            print(f"experiment failed: {error}", file=sys.stderr)
            return 1
        print((Path(args.out) / "experiment.md").read_text())
        return 0 if summary else 1

    if args.command == "report" and args.kind == "monitoring":
        return _monitoring_report(parser, args)

    if args.command == "report":
        from pathlib import Path

        if args.day is not None:
            parser.error("--day applies to the monitoring report only; the latency report covers every logged request")
        from loopline import settings
        from loopline.monitoring import store
        from loopline.serving import latency_report

        folder = Path(args.out) if args.out else settings.home() / "reports" / "latency"
        try:
            result = latency_report.write_report(store.get_engine(), folder)
        except ValueError as error:
            print(f"report failed: {error}", file=sys.stderr)
            return 1
        print(Path(result["markdown"]).read_text(encoding="utf-8"))
        print(f"pie chart: {result['png']}")
        return 0

    from loopline import demo

    # The demo prints its own progress lines; library INFO logs would bury them.
    logging.getLogger().setLevel(logging.WARNING)
    try:
        if args.command == "demo":
            summary = demo.run_demo(args.start, args.live_start, args.end, args.timeout)
        else:
            summary = demo.summarize(demo.AirflowApi(demo._airflow_url(), demo._password_file()))
    except demo.DemoError as error:
        print(f"demo failed: {error}", file=sys.stderr)
        return 1
    demo.print_summary(summary)
    return 0


def _monitoring_report(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """Write the HTML monitoring report of one data day; it needs the store, not MLflow."""
    from pathlib import Path

    from loopline.config import cached_config
    from loopline.monitoring import report, store

    if args.day is None:
        parser.error("report monitoring needs --day YYYY-MM-DD, the data day to report on, e.g. --day 2013-01-28")
    result = report.write_report(cached_config(), store.get_engine(), args.day, Path(args.out) if args.out else None)
    if result["days"] == 0:
        print(
            f"note: the monitoring store has no metrics up to {args.day}; run the monitoring DAG for that day first",
            file=sys.stderr,
        )
    print(f"monitoring report of {args.day}: {result['path']} ({result['days']} data days, {result['alerts']} alerts that day)")
    return 0


# MLflow's HTTP client retries a failed request 7 times with exponential backoff and waits
# up to 120 s for each response (MLflow 3.17 defaults, about 4 minutes in all). A command
# that a person types should report a registry that is down within seconds, so the
# registry commands lower both unless the environment sets them already.
REGISTRY_COMMAND_MLFLOW_ENV = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}


def _registry_command(args: argparse.Namespace) -> int:
    import os

    for name, value in REGISTRY_COMMAND_MLFLOW_ENV.items():
        os.environ.setdefault(name, value)
    from loopline import registry

    if args.command == "history":
        return _print_history(registry)

    from mlflow.exceptions import MlflowException

    from loopline import settings
    from loopline.config import cached_config

    try:
        if args.command == "rollback":
            result = registry.rollback(cached_config(), args.reason)
        else:
            result = registry.promote(cached_config(), args.version, args.reason)
    except registry.RegistryError as error:
        print(f"{args.command} failed: {error}", file=sys.stderr)
        return 1
    except MlflowException as error:
        # The registry passed the reachability check, but a later request failed.
        print(
            f"{args.command} failed: the MLflow registry at {settings.mlflow_tracking_uri()} returned an error "
            f"({registry.error_cause(error)}); check the tracking server's log and run the command again",
            file=sys.stderr,
        )
        return 1
    print(json.dumps(result))
    return 0


def _monitoring_command(args: argparse.Namespace) -> int:
    import sqlalchemy as sa

    from loopline.config import cached_config
    from loopline.monitoring import breaker, incidents, store

    engine = store.get_engine()
    if args.command == "incidents":
        rows = incidents.list_incidents(engine, None if args.all else "open")
        if not rows:
            print("no open incidents" if not args.all else "no incidents recorded")
        for row in rows:
            where = row["feature_key"] or "model"
            closed = f"closed {row['closed_date']}: {row['closed_reason']}" if row["closed_date"] else "open"
            retrain = f" retrain={row['retrain_run_id']}" if row["retrain_run_id"] else ""
            action = f" action={row['action_taken']}" if row["action_taken"] else ""
            print(f"{row['id']:>5}  {row['opened_date']}  {row['rule']}[{where}] {row['severity']}{retrain}{action}  {closed}")
        return 0

    if args.breaker_command == "reset":
        try:
            result = breaker.reset(engine, args.reason)
        except ValueError as error:
            print(f"breaker reset failed: {error}", file=sys.stderr)
            return 1
        print(json.dumps(result))
        return 0

    day = args.date
    if day is None:
        with engine.connect() as connection:
            newest = connection.execute(sa.select(sa.func.max(store.metric_values.c.partition_date))).scalar_one()
        if newest is None:
            print("no monitored day yet; the breaker is closed")
            return 0
        day = dt.date.fromisoformat(newest)
    state = breaker.state(engine, day, cached_config().monitoring.breaker_max_failed_retrains)
    if state.is_open:
        print(f"{day}: {state.reason()}")
    else:
        print(f"{day}: closed ({state.failed_retrains} of {state.max_failed_retrains} failed retrains in a row)")
    return 0


def _print_history(registry) -> int:
    """Print the audit log, one alias move or rejection per line. It needs no registry."""
    entries = registry.history()
    if not entries:
        print(f"no alias moves recorded yet in {registry.audit_log_path()}")
        return 0
    for entry in entries:
        if entry["action"] == "reject":
            move = f"version {entry.get('challenger_version')} rejected, @champion stays {entry.get('from_version')}"
        else:
            move = f"@champion {entry.get('from_version')} -> {entry.get('to_version')}"
        print(f"{entry['at']}  {entry['action']:<8} {move}  cause={entry.get('cause', '-')}  {entry.get('reason', '')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
