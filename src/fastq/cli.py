"""The ``fastq`` command line (click). ``fastq -A proj.tasks:app worker`` and
``fastq worker -A proj.tasks:app`` both work, as in Celery."""

from __future__ import annotations

import importlib
import json
import logging
import os
import sys
from typing import Any

import click

from . import __version__
from ._speedups import COMPILED


def load_app(spec: str):
    """``"proj.tasks:app"``, ``"proj.tasks"`` (attribute ``app``, or the one FastQ
    instance in the module) -> the app."""
    from .app import FastQ

    if os.getcwd() not in sys.path:  # like Celery: the current directory is importable
        sys.path.insert(0, os.getcwd())
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise click.BadParameter(f"cannot import {module_name!r}: {exc}", param_hint="-A/--app") from None
    if attr:
        app = getattr(module, attr, None)
    else:
        app = getattr(module, "app", None)
        if not isinstance(app, FastQ):
            found = [v for v in vars(module).values() if isinstance(v, FastQ)]
            app = found[0] if len(found) == 1 else None
    if not isinstance(app, FastQ):
        raise click.BadParameter(f"no FastQ app found at {spec!r}", param_hint="-A/--app")
    return app


def _setup_logging(level: str, fmt: str = "text") -> None:
    root = logging.getLogger()
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("[%(asctime)s: %(levelname)s/%(processName)s] %(message)s"))
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": record.created, "level": record.levelname, "logger": record.name,
               "process": record.processName, "message": record.getMessage()}
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out)


class _AppState:
    def __init__(self) -> None:
        self.spec: str | None = None
        self.broker: str | None = None

    def app(self):
        if not self.spec:
            raise click.UsageError("no app given: use -A proj.tasks:app (before or after the command)")
        app = load_app(self.spec)
        if self.broker:
            app.conf.broker_url = self.broker
            app._reset()
        return app


def _app_option(f):
    """-A on a subcommand (Celery's form puts it before the command; both work)."""

    def store(ctx: click.Context, param: Any, value: str | None) -> None:
        if value:
            ctx.ensure_object(_AppState).spec = value

    return click.option("-A", "--app", "app_spec", expose_value=False, callback=store,
                        help="The app: module:attribute, or a module with an `app`.")(f)


def _version(ctx: click.Context, param: Any, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        core = "compiled core (fastq._core)" if COMPILED else "pure-Python core (fastq._core_py)"
        click.echo(f"fastq {__version__}, {core}, Python {sys.version.split()[0]}")
        ctx.exit()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--version", is_flag=True, expose_value=False, is_eager=True, callback=_version,
              help="Print the version and which core is in use.")
@click.option("-A", "--app", "app_spec", help="The app: module:attribute, or a module with an `app`.")
@click.option("-b", "--broker", help="Broker URL (overrides the app's).")
@click.pass_context
def main(ctx: click.Context, app_spec: str | None, broker: str | None) -> None:
    """fastq: a fast, reliable task queue on Redis."""
    state = ctx.ensure_object(_AppState)
    state.spec = app_spec
    state.broker = broker


def _queues(value: str | None) -> list[str] | None:
    if not value:
        return None
    return [q.strip() for q in value.split(",") if q.strip()]


@main.command()
@_app_option
@click.option("-c", "--concurrency", type=click.IntRange(min=1), help="Pool size (default: CPU count).")
@click.option("-P", "--pool", type=click.Choice(["process", "thread", "solo"]), default="process", show_default=True)
@click.option("-Q", "--queues", help="Comma-separated queues to consume (default: the default queue).")
@click.option("-l", "--loglevel", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"],
              case_sensitive=False), default="WARNING", show_default=True)
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.option("-n", "--hostname", help="Worker name (default fastq@<hostname>).")
@click.option("--prefetch", type=click.IntRange(min=1), help="Messages per fetch round trip (default 100).")
@click.option("--lease-timeout", type=click.FloatRange(min=0.5),
              help="Seconds before a silent worker's messages are recovered (default 30).")
@click.option("--max-deliveries", type=click.IntRange(min=1),
              help="Deliveries without finishing before dead-lettering (default 5).")
@click.option("--ack-flush-interval", type=click.FloatRange(min=0),
              help="Seconds: send acks mid-batch after this (default 0.01).")
@click.option("-B", "--beat", "with_beat", is_flag=True,
              help="Also run beat (periodic tasks) in this worker; safe on several workers.")
@click.pass_obj
def worker(state: _AppState, concurrency, pool, queues, loglevel, log_format, hostname, prefetch, lease_timeout,
           max_deliveries, ack_flush_interval, with_beat=False) -> None:
    """Start a worker."""
    _setup_logging(loglevel, log_format)
    app = state.app()
    if lease_timeout is not None:
        app.conf.worker_lease_timeout = lease_timeout
    if max_deliveries is not None:
        app.conf.worker_max_deliveries = max_deliveries
    if ack_flush_interval is not None:
        app.conf.worker_ack_flush_interval = ack_flush_interval
    from .worker import Worker

    try:
        w = Worker(app, _queues(queues), concurrency, pool, hostname, prefetch)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    beat_service = _make_beat(app) if with_beat else None
    if beat_service is not None:  # a thread of this (the parent) process, leader-elected like `fastq beat`
        beat_service.start()
    try:
        code = w.start()
    finally:
        if beat_service is not None:
            beat_service.stop()
    sys.exit(code)


def _fail(exc: Exception) -> None:
    raise click.ClickException(str(exc))


@main.command()
@_app_option
@click.argument("task_id")
@click.option("--json", "as_json", is_flag=True, help="Print the stored fields as JSON.")
@click.pass_obj
def result(state: _AppState, task_id: str, as_json: bool) -> None:
    """Show a task's state and result."""
    from .exceptions import BrokerError

    app = state.app()
    try:
        meta = app.backend.get_meta(task_id)
    except BrokerError as exc:
        _fail(exc)
    if as_json:
        import msgspec

        click.echo(msgspec.json.encode(meta).decode() if meta else json.dumps({"state": "PENDING"}))
        return
    if meta is None:
        click.echo("PENDING")
        return
    click.echo(meta.state)
    if meta.exc_type:
        click.echo(f"{meta.exc_type}: {meta.exc_message}")
        if meta.traceback:
            click.echo(meta.traceback.rstrip())
    elif meta.meta and meta.state not in ("SUCCESS",):
        click.echo(json.dumps(meta.meta, default=str))
    else:
        click.echo(repr(meta.result))


@main.command()
@_app_option
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def queues(state: _AppState, as_json: bool) -> None:
    """Per queue: waiting, in flight, delayed, dead-lettered."""
    app = state.app()
    rows = [app.broker.queue_stats(q) for q in app.broker.known_queues()]
    if as_json:
        click.echo(json.dumps(rows))
        return
    click.echo(f"{'queue':<24}{'waiting':>10}{'in flight':>11}{'delayed':>10}{'dead':>8}")
    for r in rows:
        click.echo(f"{r['queue']:<24}{r['waiting']:>10}{r['in_flight']:>11}{r['delayed']:>10}{r['dead']:>8}")


@main.command()
@_app_option
@click.option("-Q", "--queues", "queue_list", help="Comma-separated queues (default: the default queue).")
@click.option("-f", "--force", is_flag=True, help="Do not ask for confirmation.")
@click.pass_obj
def purge(state: _AppState, queue_list: str | None, force: bool) -> None:
    """Delete waiting and delayed messages."""
    app = state.app()
    names = _queues(queue_list) or [app.conf.task_default_queue]
    if not force:
        click.confirm(f"Delete all waiting and delayed messages of {', '.join(names)}?", abort=True)
    total = sum(app.broker.purge(q) for q in names)
    click.echo(f"Purged {total} message(s).")


@main.command()
@_app_option
@click.pass_obj
def status(state: _AppState) -> None:
    """List the workers that are online."""
    import time

    app = state.app()
    keys = app.broker.keys
    now = time.time()
    online = [h.decode() for h, ts in app.broker.client.zrange(keys.workers, 0, -1, withscores=True) if now - ts < 10]
    for h in online:
        click.echo(f"{h}: OK")
    click.echo(f"{len(online)} node(s) online.")


@main.command()
@_app_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.pass_obj
def events(state: _AppState, as_json: bool) -> None:
    """Tail task and worker events live."""
    import datetime as dt

    from .events import tail

    app = state.app()
    try:
        for ev in tail(app.broker.new_client(socket_timeout=None), app.broker.keys.events):
            if as_json:
                click.echo(json.dumps(ev, default=str))
                continue
            ts = dt.datetime.fromtimestamp(ev["timestamp"]).strftime("%H:%M:%S.%f")[:-3]
            task = f" {ev['name']}[{ev['uuid']}]" if "uuid" in ev else ""
            extra = {k: v for k, v in ev.items() if k not in ("type", "hostname", "timestamp", "uuid", "name")}
            click.echo(f"{ts} {ev['hostname']} {ev['type']}{task} {json.dumps(extra, default=str) if extra else ''}".rstrip())
    except KeyboardInterrupt:
        pass


@main.group()
def dlq() -> None:
    """The dead-letter queue."""


@dlq.command("list")
@_app_option
@click.option("-Q", "--queue", "queue_name", help="Queue (default: every known queue).")
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def dlq_list(state: _AppState, queue_name: str | None, limit: int, as_json: bool) -> None:
    """Show dead letters with their reasons."""
    app = state.app()
    names = [queue_name] if queue_name else app.broker.known_queues()
    rows = [r for q in names for r in app.broker.dlq_list(q, limit)]
    for r in rows:
        r["payload"] = repr(r.get("payload", b""))[:200]
    if as_json:
        click.echo(json.dumps(rows))
        return
    for r in rows:
        click.echo(f"{r['id']}  {r['queue']}  {r.get('reason', '?')}: {r.get('error', '')}")
    click.echo(f"{len(rows)} dead letter(s).")


@dlq.command("requeue")
@_app_option
@click.argument("ids", nargs=-1)
@click.option("--all", "all_", is_flag=True, help="Requeue every dead letter.")
@click.option("-Q", "--queue", "queue_name", help="Queue (default: every known queue).")
@click.pass_obj
def dlq_requeue(state: _AppState, ids: tuple[str, ...], all_: bool, queue_name: str | None) -> None:
    """Move dead letters back to their queue."""
    if not ids and not all_:
        raise click.UsageError("give dead-letter IDs or --all")
    app = state.app()
    names = [queue_name] if queue_name else app.broker.known_queues()
    moved = sum(app.broker.dlq_requeue(q, None if all_ else list(ids)) for q in names)
    click.echo(f"Requeued {moved} message(s).")


@dlq.command("purge")
@_app_option
@click.option("-Q", "--queue", "queue_name", help="Queue (default: every known queue).")
@click.option("-f", "--force", is_flag=True, help="Do not ask for confirmation.")
@click.pass_obj
def dlq_purge(state: _AppState, queue_name: str | None, force: bool) -> None:
    """Delete dead letters."""
    app = state.app()
    names = [queue_name] if queue_name else app.broker.known_queues()
    if not force:
        click.confirm(f"Delete all dead letters of {', '.join(names)}?", abort=True)
    n = sum(app.broker.dlq_purge(q) for q in names)
    click.echo(f"Deleted {n} dead letter(s).")


def _register_bench() -> None:
    from .bench import bench_command

    main.add_command(bench_command)


def _make_beat(app, lease: float | None = None):
    from .beat import Beat
    from .exceptions import ImproperlyConfigured

    try:
        return Beat(app, lease=lease)
    except ImproperlyConfigured as exc:
        raise click.ClickException(str(exc)) from None


@main.command()
@_app_option
@click.option("--list", "list_only", is_flag=True, help="Print the schedule with each entry's next run, then exit.")
@click.option("--lease", type=click.FloatRange(min=0.5),
              help="Seconds a leader holds the lock without renewing; a standby takes over within it (default 10).")
@click.option("-l", "--loglevel", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"],
              case_sensitive=False), default="INFO", show_default=True)
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.pass_obj
def beat(state: _AppState, list_only: bool, lease: float | None, loglevel: str, log_format: str) -> None:
    """Send periodic tasks (app.conf.beat_schedule). Run several for high availability: one leads."""
    _setup_logging(loglevel, log_format)
    app = state.app()
    service = _make_beat(app, lease)
    if list_only:
        from .exceptions import ImproperlyConfigured

        try:
            click.echo(service.format_schedule())
        except ImproperlyConfigured as exc:
            _fail(exc)
        return
    sys.exit(service.run_forever())


_register_bench()

if __name__ == "__main__":  # pragma: no cover
    main()
