"""The ``fastq`` command line (click). ``fastq -A proj.tasks:app worker`` and
``fastq worker -A proj.tasks:app`` both work, as in Celery.

Layer: apps; may import any layer.
"""

from __future__ import annotations

import datetime as dt
import importlib
import ipaddress
import json
import logging
import os
import sys
import time
from typing import Any

import click
import msgspec

from . import __version__
from ._speedups import COMPILED
from .app import FastQ
from .beat import Beat
from .bench import bench_command
from .broker.connect import describe_error
from .broker.keys import validate_queue_name
from .control import online_workers
from .events import tail
from .exceptions import BrokerError, FastQError, ImproperlyConfigured
from .logs import JsonFormatter, text_formatter
from .monitor import QueueRates, dead_letters, find_dead_letters, locate_task, queue_rows, short_args
from .worker import Worker
from .worker.naming import NameTaken


def load_app(spec: str):
    """``"proj.tasks:app"``, ``"proj.tasks"`` (attribute ``app``, or the one FastQ
    instance in the module) -> the app."""
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
    handler.setFormatter(JsonFormatter() if fmt == "json" else text_formatter())
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


class _AppState:
    def __init__(self) -> None:
        self.spec: str | None = None
        self.broker: str | None = None
        self.loaded = None  # the app, once loaded: its URL names the server in errors

    def app(self, check_broker: bool = False, wait: bool = False):
        """The app; ``check_broker`` (long-running commands: worker, beat,
        dashboard) also pings Redis, so a wrong password fails at once with one
        line, and an unreachable server after ``broker_startup_wait`` seconds
        (``wait``: worker and beat, which may start before their Redis) or at
        once. Once running, they ride out outages."""
        if not self.spec:
            raise click.UsageError("no app given: use -A proj.tasks:app (before or after the command)")
        app = load_app(self.spec)
        if self.broker:
            app.conf.broker_url = self.broker
            app.reset()
        self.loaded = app
        app.check_config()  # a malformed setting fails here, at start-up, naming itself
        if check_broker:
            app.broker.check_connection(app.conf.broker_startup_wait if wait else 0.0)
        return app


#: Optional modules -> the extra that installs them.
_EXTRAS = {"prometheus_client": "metrics", "starlette": "dashboard", "uvicorn": "dashboard",
           "sentry_sdk": "sentry", "opentelemetry": "otel"}


def _one_line(exc: BaseException, state: _AppState | None) -> str | None:
    """The one-line message for an error the user caused (no traceback), or None."""
    app = state.loaded if state is not None else None
    url = app.broker_url if app is not None else (state.broker if state and state.broker else "")
    if url and (message := describe_error(exc, url)):
        return message
    if isinstance(exc, FastQError):
        return " ".join(str(exc).split())
    missing = exc.name.partition(".")[0] if isinstance(exc, ImportError) and exc.name else None
    if missing in _EXTRAS:
        return f"this needs {missing}, which is not installed: pip install 'fastq[{_EXTRAS[missing]}]'"
    return describe_error(exc, "the broker") if not url else None


class _Main(click.Group):
    """Every command's errors pass here: an unreachable Redis, a refused password,
    a bad setting or a missing optional extra ends the command with one line on
    stderr and exit status 1, never a traceback. Other exceptions are bugs, and
    keep theirs."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except Exception as exc:
            message = _one_line(exc, ctx.find_object(_AppState))
            if message is None:
                raise
            raise click.ClickException(message) from None


def _app_option(f):
    """-A and -b on a subcommand (Celery's form puts them before the command; both work)."""

    def store(attr: str):
        def cb(ctx: click.Context, param: Any, value: str | None) -> None:
            if value:
                setattr(ctx.ensure_object(_AppState), attr, value)

        return cb

    f = click.option("-b", "--broker", "broker_url", expose_value=False, callback=store("broker"),
                     help="Broker URL (overrides the app's).")(f)
    return click.option("-A", "--app", "app_spec", expose_value=False, callback=store("spec"),
                        help="The app: module:attribute, or a module with an `app`.")(f)


def _version(ctx: click.Context, param: Any, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        core = "compiled core (fastq._core)" if COMPILED else "pure-Python core (fastq._core_py)"
        click.echo(f"fastq {__version__}, {core}, Python {sys.version.split()[0]}")
        ctx.exit()


@click.group(cls=_Main, context_settings={"help_option_names": ["-h", "--help"]})
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
    return [q.strip().split(":")[0] for q in value.split(",") if q.strip()]


def _weights(value: str | None) -> dict[str, int]:
    """``-Q a:3,b:1`` -> {"a": 3, "b": 1} (queues without a weight get 1)."""
    out: dict[str, int] = {}
    for item in (value or "").split(","):
        name, _, weight = item.strip().partition(":")
        if name and weight:
            if not weight.isdigit() or int(weight) < 1:
                raise click.BadParameter(f"queue weight must be a positive integer: {item!r}", param_hint="-Q")
            out[name] = int(weight)
    return out


@main.command()
@_app_option
@click.option("-c", "--concurrency", type=click.IntRange(min=1),
              help="Pool size (default: CPU count; -P asyncio: 100 tasks at once).")
@click.option("-P", "--pool", type=click.Choice(["process", "thread", "solo", "asyncio"]), default="process",
              show_default=True)
@click.option("--async-concurrency", type=click.IntRange(min=1),
              help="-P process: run an event loop in each child, with this many tasks at once (see docs/asyncio.md).")
@click.option("-Q", "--queues",
              help="Comma-separated queues to consume, optionally weighted: a:3,b:1 (default: the default queue).")
@click.option("-X", "--exclude-queues", help="Consume every known queue except these (comma-separated).")
@click.option("-l", "--loglevel", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"],
              case_sensitive=False), default="WARNING", show_default=True)
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.option("-n", "--hostname",
              help="Worker name; %h host name, %n its first label, %d domain, %i/%I process index, %% a %; "
                   "without @ it gets @<host name> (default: the first of fastq@<host>, fastq-2@<host>, ... "
                   "that no live worker holds).")
@click.option("--prefetch", type=click.IntRange(min=1), help="Most messages per fetch (default 100; fewer for slow tasks).")
@click.option("--lease-timeout", type=click.FloatRange(min=0.5),
              help="Seconds before a silent worker's messages are recovered (default 30).")
@click.option("--max-deliveries", type=click.IntRange(min=1),
              help="Deliveries without finishing before dead-lettering (default 5).")
@click.option("--ack-flush-interval", type=click.FloatRange(min=0),
              help="Seconds: send acks mid-batch after this (default 0.01).")
@click.option("-B", "--beat", "with_beat", is_flag=True,
              help="Also run beat (periodic tasks) in this worker; safe on several workers.")
@click.option("--metrics-port", type=click.IntRange(min=1, max=65535),
              help="Serve Prometheus metrics on this port (needs fastq[metrics]).")
@click.option("--metrics-address", default="127.0.0.1", show_default=True, help="Address for --metrics-port.")
@click.option("--without-events", is_flag=True, help="Do not publish task and worker events.")
@click.option("--time-limit", type=click.FloatRange(min=0, min_open=True),
              help="Hard time limit in seconds for tasks without their own (process pool: the process is killed).")
@click.option("--soft-time-limit", type=click.FloatRange(min=0, min_open=True),
              help="Soft time limit in seconds: SoftTimeLimitExceeded is raised in the task.")
@click.option("--max-tasks-per-child", type=click.IntRange(min=1), help="Replace a pool process after this many tasks.")
@click.option("--autoscale", help="MAX,MIN: grow toward MAX processes while messages wait, shrink to MIN when idle.")
@click.option("--allow-eviction", is_flag=True,
              help="Start even if Redis's maxmemory-policy may evict queued tasks (allkeys-*); not advised.")
@click.option("--max-memory-per-child", type=click.IntRange(min=1),
              help="Replace a pool process once its resident memory passes this many KiB.")
@click.pass_obj
def worker(state: _AppState, concurrency, pool, queues, exclude_queues, loglevel, log_format, hostname, prefetch,
           lease_timeout, max_deliveries, ack_flush_interval, with_beat=False, metrics_port=None,
           metrics_address="127.0.0.1", without_events=False, time_limit=None, soft_time_limit=None,
           max_tasks_per_child=None, max_memory_per_child=None, autoscale=None, async_concurrency=None,
           allow_eviction=False) -> None:
    """Start a worker."""
    _setup_logging(loglevel, log_format)
    app = state.app(check_broker=True, wait=True)
    _apply_worker_limits(app, time_limit, soft_time_limit, max_tasks_per_child, max_memory_per_child)
    if without_events:
        app.conf.worker_send_task_events = False
    if allow_eviction:
        app.conf.worker_allow_eviction = True
    if metrics_port:
        import prometheus_client  # noqa: F401 - optional (fastq[metrics]): fail here, before the banner
        app.conf.worker_metrics_port = metrics_port
        app.conf.worker_metrics_address = metrics_address
    if lease_timeout is not None:
        app.conf.worker_lease_timeout = lease_timeout
    if max_deliveries is not None:
        app.conf.worker_max_deliveries = max_deliveries
    if ack_flush_interval is not None:
        app.conf.worker_ack_flush_interval = ack_flush_interval
    try:
        w = Worker(app, _queues(queues), concurrency, pool, hostname, prefetch, exclude=_queues(exclude_queues),
                   weights=_weights(queues), autoscale=_autoscale(autoscale), async_concurrency=async_concurrency)
    except (ValueError, FastQError) as exc:
        raise click.UsageError(str(exc)) from None
    w.log_format = log_format
    beat_service = _make_beat(app) if with_beat else None
    if beat_service is not None:  # a thread of this (the parent) process, leader-elected like `fastq beat`
        beat_service.start()
    try:
        code = w.start()
    except NameTaken as exc:  # one line, before any banner; exit 2 as for other bad start-up input
        raise _Refused(str(exc)) from None
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    except FastQError as exc:  # refused credentials, an evicting Redis: one line, no traceback
        raise click.ClickException(str(exc)) from None
    finally:
        if beat_service is not None:
            beat_service.stop()
    sys.exit(code)


class _Refused(click.ClickException):
    """A one-line ``Error: ...`` with exit code 2 (no usage text: the command line was fine)."""

    exit_code = 2


def _autoscale(value: str | None) -> tuple[int, int] | None:
    if not value:
        return None
    try:
        high, low = (int(x) for x in value.split(","))
    except ValueError:
        raise click.BadParameter("give MAX,MIN, e.g. --autoscale 8,2", param_hint="--autoscale") from None
    return high, low


def _apply_worker_limits(app, time_limit, soft_time_limit, max_tasks, max_memory) -> None:
    """Worker-wide defaults for tasks that have no limits of their own."""
    if max_tasks:
        app.conf.worker_max_tasks_per_child = max_tasks
    if max_memory:
        app.conf.worker_max_memory_per_child = max_memory
    if time_limit:
        app.conf.task_time_limit = time_limit
    if soft_time_limit:
        app.conf.task_soft_time_limit = soft_time_limit
    for task in app.tasks.values():
        if time_limit and not task.time_limit:
            task.time_limit = time_limit
        if soft_time_limit and not task.soft_time_limit:
            task.soft_time_limit = soft_time_limit
        task._refresh()


def _fail(exc: Exception) -> None:
    raise click.ClickException(str(exc))


@main.command()
@_app_option
@click.argument("task_id")
@click.option("--json", "as_json", is_flag=True, help="Print the stored fields as JSON.")
@click.pass_obj
def result(state: _AppState, task_id: str, as_json: bool) -> None:
    """Show a task's state and result."""
    app = state.app()
    try:
        meta = app.backend.get_meta(task_id)
        # No stored state: a message still in a queue is a known task (PENDING);
        # one found nowhere is not (a mistyped id, or a result that expired).
        location = locate_task(app, task_id) if meta is None else None
    except BrokerError as exc:
        _fail(exc)
    if as_json:

        fields = msgspec.structs.asdict(meta) if meta else {"state": "PENDING", "known": location is not None}
        if location is not None:
            fields["location"] = {k: v for k, v in location.items() if k != "request"}
        click.echo(msgspec.json.encode(fields).decode())
    elif meta is None:
        click.echo("PENDING")
        if location is not None and location["state"] == "DEAD":
            click.echo(f"dead-lettered on {location['queue']}: {location['reason']}: {location['error']} "
                       f"(fastq dlq requeue {task_id})")
        elif location is not None:
            click.echo(f"{location['where']} in queue {location['queue']}")
    if meta is None:
        if location is None:
            raise click.ClickException(
                f"no task with id {task_id!r} is known: the result backend has no state for it and no queue "
                "holds its message (a mistyped id, a result that expired, or a task with ignore_result)")
        return
    if as_json:
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
@click.option("--interval", type=click.FloatRange(min=0), default=1.0, show_default=True,
              help="Seconds to measure the in/out rates over (0: no rates).")
@click.pass_obj
def queues(state: _AppState, as_json: bool, interval: float) -> None:
    """Per queue: waiting, in flight, delayed, dead-lettered, and in/out rates (messages/s)."""

    app = state.app()
    rates = None
    if interval > 0:
        sampler = QueueRates(app)
        names = app.broker.known_queues()
        sampler.sample(names)
        time.sleep(interval)
        rates = sampler.sample(names)
    rows = queue_rows(app, rates)
    if as_json:
        click.echo(json.dumps(rows))
        return

    def rate(v) -> str:
        return "-" if v is None else f"{v:.1f}"

    click.echo(f"{'queue':<24}{'waiting':>10}{'in flight':>11}{'delayed':>10}{'dead':>8}{'in/s':>10}{'out/s':>10}")
    for r in rows:
        click.echo(f"{r['queue']:<24}{r['waiting']:>10}{r['in_flight']:>11}{r['delayed']:>10}{r['dead']:>8}"
                   f"{rate(r['rate_in']):>10}{rate(r['rate_out']):>10}")


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
@click.option("-d", "--destination", help="Comma-separated worker names to show.")
@click.pass_obj
def status(state: _AppState, destination: str | None) -> None:
    """List the workers that are online."""
    online = online_workers(state.app())
    if destination:
        wanted = set(_queues(destination) or [])
        online = [h for h in online if h in wanted]
    for h in online:
        click.echo(f"{h}: OK")
    click.echo(f"{len(online)} node(s) online.")


@main.command()
@_app_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.pass_obj
def events(state: _AppState, as_json: bool) -> None:
    """Tail task and worker events live."""

    app = state.app()
    try:
        for ev in tail(app.broker, client=app.broker.new_client(socket_timeout=None)):
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
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True, help="At most this many per queue.")
@click.option("--json", "as_json", is_flag=True, help="A JSON list of the decoded dead letters.")
@click.pass_obj
def dlq_list(state: _AppState, queue_name: str | None, limit: int, as_json: bool) -> None:
    """Show dead letters: when, which task (id, name, arguments), why, after how many deliveries."""

    app = state.app()
    rows = dead_letters(app, _dlq_queues(app, queue_name), limit)
    if as_json:
        click.echo(json.dumps(rows, default=str))
        return
    for r in rows:
        when = "?" if r["dead_lettered_at"] is None else \
            dt.datetime.fromtimestamp(r["dead_lettered_at"]).strftime("%Y-%m-%d %H:%M:%S")
        task = f"{r['task']}[{r['task_id']}] {short_args(r['args'], r['kwargs'])}" if r["task_id"] else \
            "(undecodable message)"
        click.echo(f"{when}  {r['queue']}  {task}  {r['reason'] or '?'}: {r['error'] or ''} "
                   f"(deliveries: {r['deliveries']}, entry {r['id']})")
    click.echo(f"{len(rows)} dead letter(s).")


def _dlq_queues(app, queue_name: str | None) -> list[str]:
    if not queue_name:
        return app.broker.known_queues()
    try:
        return [validate_queue_name(queue_name)]
    except ImproperlyConfigured as exc:
        raise click.BadParameter(str(exc), param_hint="-Q/--queue") from None


def _find_dead_letters(app, names: list[str], ids: tuple[str, ...]) -> dict[str, list[str]]:
    """Task ids or entry ids -> {queue: [entry id, ...]}; an id found nowhere is an error (and nothing is done)."""
    found, unknown = find_dead_letters(app, names, list(ids))
    if unknown:
        where = f"queue {names[0]!r}" if len(names) == 1 else "any queue"
        raise click.ClickException(f"no dead letter with task id or entry id {', '.join(unknown)} in {where}")
    return found


@dlq.command("requeue")
@_app_option
@click.argument("ids", nargs=-1)
@click.option("--all", "all_", is_flag=True, help="Requeue every dead letter.")
@click.option("-Q", "--queue", "queue_name", help="Queue (default: every known queue).")
@click.pass_obj
def dlq_requeue(state: _AppState, ids: tuple[str, ...], all_: bool, queue_name: str | None) -> None:
    """Move dead letters back to their queue: by task id or entry id (as `dlq list` shows them), or --all."""
    if not ids and not all_:
        raise click.UsageError("give task ids or dead-letter entry ids, or --all")
    app = state.app()
    names = _dlq_queues(app, queue_name)
    if all_:
        moved = sum(app.broker.dlq_requeue(q) for q in names)
    else:
        moved = sum(app.broker.dlq_requeue(q, entries) for q, entries in _find_dead_letters(app, names, ids).items())
    click.echo(f"Requeued {moved} message(s).")


@dlq.command("purge")
@_app_option
@click.argument("ids", nargs=-1)
@click.option("-Q", "--queue", "queue_name", help="Queue (default: every known queue).")
@click.option("-f", "--force", is_flag=True, help="Do not ask for confirmation.")
@click.pass_obj
def dlq_purge(state: _AppState, ids: tuple[str, ...], queue_name: str | None, force: bool) -> None:
    """Delete dead letters: those with these task ids or entry ids, else all of them."""
    app = state.app()
    names = _dlq_queues(app, queue_name)
    if ids:
        found = _find_dead_letters(app, names, ids)
        if not force:
            click.confirm(f"Delete {sum(len(v) for v in found.values())} dead letter(s)?", abort=True)
        n = sum(app.broker.dlq_purge(q, entries) for q, entries in found.items())
    else:
        if not force:
            click.confirm(f"Delete all dead letters of {', '.join(names)}?", abort=True)
        n = sum(app.broker.dlq_purge(q) for q in names)
    click.echo(f"Deleted {n} dead letter(s).")


# --- inspect and control ------------------------------------------------------------------


class _UnderscoreGroup(click.Group):
    """Accepts ``pool-grow`` for ``pool_grow`` (Celery spells them with underscores)."""

    def get_command(self, ctx: click.Context, cmd_name: str):
        return super().get_command(ctx, cmd_name.replace("-", "_"))


def _remote_options(f):
    """-A, -d/--destination, -t/--timeout and --json, on the group or the command."""

    def store(name):
        def cb(ctx: click.Context, param: Any, value):
            if value is not None and value is not False:
                setattr(ctx.ensure_object(_AppState), name, value)

        return cb

    f = click.option("--json", "as_json", is_flag=True, expose_value=False, callback=store("as_json"),
                     help="Print the replies as JSON.")(f)
    f = click.option("-t", "--timeout", type=click.FloatRange(min=0.01), expose_value=False, callback=store("timeout"),
                     help="Seconds to wait for replies (default 1).")(f)
    f = click.option("-d", "--destination", expose_value=False, callback=store("destination"),
                     help="Comma-separated worker names (default: all workers).")(f)
    return _app_option(f)


def _print_replies(state: _AppState, replies: dict) -> None:
    if getattr(state, "as_json", False):
        click.echo(json.dumps(replies, default=str))
        return
    if not replies:
        raise click.ClickException("No nodes replied within time constraint.")
    for host, reply in sorted(replies.items()):
        error = isinstance(reply, dict) and "error" in reply
        click.echo(f"-> {host}: {'ERROR' if error else 'OK'}")
        if isinstance(reply, dict) and set(reply) <= {"ok", "error"}:
            click.echo(f"    {reply.get('ok') or reply.get('error')}")
        elif isinstance(reply, list) and not reply:
            click.echo("    - empty -")
        elif isinstance(reply, list):
            for item in reply:
                click.echo(f"    * {_describe(item)}")
        else:
            for line in json.dumps(reply, indent=2, default=str).splitlines():
                click.echo(f"    {line}")
    click.echo(f"\n{len(replies)} node(s) replied.")


def _describe(item) -> str:
    if isinstance(item, dict) and "request" in item:  # scheduled

        eta = dt.datetime.fromtimestamp(item["eta"], dt.timezone.utc).isoformat(timespec="seconds")
        return f"{eta} {_describe(item['request'])}"
    if isinstance(item, dict) and "id" in item and "name" in item:
        return f"{item['name']}[{item['id']}] args={item.get('args')!r} kwargs={item.get('kwargs')!r}"
    return str(item)


def _remote(state: _AppState):
    app = state.app()
    return app, getattr(state, "destination", None), getattr(state, "timeout", None) or 1.0


def _reply_dict(replies: list | None) -> dict:
    out: dict = {}
    for r in replies or []:
        out.update(r)
    return out


@main.group(cls=_UnderscoreGroup)
@_remote_options
def inspect() -> None:
    """Ask the workers: active, reserved, scheduled, registered, stats, revoked, active_queues, clock, conf,
    report, ping, query_task ID...."""


def _inspect_command(name: str, doc: str):
    @_remote_options
    @click.pass_obj
    def command(state: _AppState) -> None:
        app, dest, timeout = _remote(state)
        _print_replies(state, getattr(app.control.inspect(dest, timeout), name)())

    command.__doc__ = doc
    inspect.command(name)(command)


for _name, _doc in (
    ("active", "Tasks the workers are running."),
    ("reserved", "Messages the workers fetched and have not started."),
    ("scheduled", "Delayed messages (countdown, ETA, retries) of the workers' queues."),
    ("registered", "Task names the workers know."),
    ("stats", "Pool, counters, memory and uptime of the workers."),
    ("revoked", "Revoked task ids the workers know."),
    ("active_queues", "Queues the workers consume."),
    ("clock", "The workers' logical clocks."),
    ("conf", "The workers' settings changed from the defaults (passwords masked)."),
    ("report", "The workers' bug reports: versions, platform, settings."),
    ("ping", "Which workers answer."),
):
    _inspect_command(_name, _doc)


@inspect.command("query_task")
@click.argument("task_ids", nargs=-1, required=True)
@_remote_options
@click.pass_obj
def inspect_query_task(state: _AppState, task_ids: tuple[str, ...]) -> None:
    """Where the workers have these tasks: active, reserved or scheduled."""
    app, dest, timeout = _remote(state)
    _print_replies(state, app.control.inspect(dest, timeout).query_task(*task_ids))


@main.group(cls=_UnderscoreGroup)
@_remote_options
def control() -> None:
    """Tell the workers: ping, shutdown, pool_grow, pool_shrink, add_consumer, cancel_consumer, revoke,
    revoke_by_stamped_headers, rate_limit."""


def _control_call(state: _AppState, method: str, *args, **kwargs) -> None:
    app, dest, timeout = _remote(state)
    try:
        replies = getattr(app.control, method)(*args, destination=dest, reply=True, timeout=timeout, **kwargs)
    except ImproperlyConfigured as exc:
        raise click.BadParameter(str(exc)) from None
    _print_replies(state, _reply_dict(replies))


@control.command("ping")
@_remote_options
@click.pass_obj
def control_ping(state: _AppState) -> None:
    """Which workers answer."""
    app, dest, timeout = _remote(state)
    _print_replies(state, _reply_dict(app.control.ping(dest, timeout)))


@control.command("shutdown")
@_remote_options
@click.pass_obj
def control_shutdown(state: _AppState) -> None:
    """Warm shutdown: finish running tasks and exit."""
    _control_call(state, "shutdown")


@control.command("pool_grow")
@_remote_options
@click.argument("n", type=click.IntRange(min=1), default=1)
@click.pass_obj
def control_pool_grow(state: _AppState, n: int) -> None:
    """Add N processes (or threads) to the pools."""
    _control_call(state, "pool_grow", n)


@control.command("pool_shrink")
@_remote_options
@click.argument("n", type=click.IntRange(min=1), default=1)
@click.pass_obj
def control_pool_shrink(state: _AppState, n: int) -> None:
    """Remove N processes (or threads) from the pools."""
    _control_call(state, "pool_shrink", n)


@control.command("add_consumer")
@_remote_options
@click.argument("queue")
@click.pass_obj
def control_add_consumer(state: _AppState, queue: str) -> None:
    """Start consuming QUEUE."""
    _control_call(state, "add_consumer", queue)


@control.command("cancel_consumer")
@_remote_options
@click.argument("queue")
@click.pass_obj
def control_cancel_consumer(state: _AppState, queue: str) -> None:
    """Stop consuming QUEUE."""
    _control_call(state, "cancel_consumer", queue)


def _terminate_options(f):
    """--terminate and --signal, for the revoke commands."""
    f = click.option("--signal", "sig", default="SIGKILL", show_default=True, help="Signal for --terminate.")(f)
    return click.option("--terminate", is_flag=True,
                        help="Also kill the pool processes running the tasks (process pool).")(f)


@control.command("revoke")
@_remote_options
@click.argument("task_ids", nargs=-1, required=True)
@_terminate_options
@click.pass_obj
def control_revoke(state: _AppState, task_ids: tuple[str, ...], terminate: bool, sig: str) -> None:
    """Revoke tasks: workers store REVOKED instead of running them."""
    _control_call(state, "revoke", list(task_ids), terminate=terminate, signal=sig)


@control.command("revoke_by_stamped_headers")
@_remote_options
@click.argument("headers", nargs=-1, required=True)
@_terminate_options
@click.pass_obj
def control_revoke_by_stamped_headers(state: _AppState, headers: tuple[str, ...], terminate: bool, sig: str) -> None:
    """Revoke the tasks stamped NAME=VALUE (one or more; a name given twice revokes both values)."""
    values: dict[str, list[str]] = {}
    for h in headers:
        name, eq, value = h.partition("=")
        if not eq or not name:
            raise click.BadParameter(f"{h!r} is not NAME=VALUE", param_hint="HEADERS")
        values.setdefault(name, []).append(value)
    _control_call(state, "revoke_by_stamped_headers", values, terminate=terminate, signal=sig)


@control.command("rate_limit")
@_remote_options
@click.argument("task_name")
@click.argument("rate")
@click.pass_obj
def control_rate_limit(state: _AppState, task_name: str, rate: str) -> None:
    """Set TASK_NAME's rate limit (e.g. 10/s, 100/m; 0 removes it)."""
    _control_call(state, "rate_limit", task_name, None if rate in ("0", "none", "None") else rate)


# --- dashboard --------------------------------------------------------------------------


@main.command()
@_app_option
@click.option("--port", type=click.IntRange(min=0, max=65535), default=5555, show_default=True,
              envvar="FASTQ_DASHBOARD_PORT", help="Port (or FASTQ_DASHBOARD_PORT).")
@click.option("--address", default="127.0.0.1", show_default=True, help="Address to bind (0.0.0.0: every interface).")
@click.option("--basic-auth", envvar="FASTQ_DASHBOARD_BASIC_AUTH",
              help="user:password required for every page and API call (or FASTQ_DASHBOARD_BASIC_AUTH).")
@click.option("--allow-host", "allow_hosts", multiple=True, metavar="NAME",
              help="A Host name the dashboard answers to besides localhost and --address (repeatable; '*': any).")
@click.option("-l", "--loglevel", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"],
              case_sensitive=False), default="WARNING", show_default=True)
@click.pass_obj
def dashboard(state: _AppState, port: int, address: str, basic_auth: str | None, loglevel: str,
              allow_hosts: tuple[str, ...] = ()) -> None:
    """Serve the web dashboard (needs fastq[dashboard])."""
    _setup_logging(loglevel)
    if basic_auth is not None and ":" not in basic_auth:
        raise click.BadParameter("use user:password", param_hint="--basic-auth")
    app = state.app(check_broker=True)
    try:
        import uvicorn  # noqa: F401 - optional (fastq[dashboard]): serve() imports it, too late to say so plainly

        from .dashboard import serve  # needs starlette (the optional fastq[dashboard])
    except ImportError as exc:
        raise click.ClickException(f"the dashboard needs: pip install 'fastq[dashboard]' ({exc})") from None
    if basic_auth is None and not _is_loopback(address):  # as Flower warns
        click.echo(f"Warning: the dashboard listens on {address} without --basic-auth: anyone who can reach port "
                   f"{port} sees task arguments and results and can requeue, retry and revoke tasks. Give "
                   "--basic-auth user:password (or FASTQ_DASHBOARD_BASIC_AUTH).", err=True)
    try:
        serve(app, address=address, port=port, basic_auth=basic_auth, allowed_hosts=allow_hosts)
    except OSError as exc:  # the port is in use, or the address is not this host's
        raise click.ClickException(f"cannot listen on {address}:{port}: {exc.strerror or exc}") from None


def _is_loopback(address: str) -> bool:

    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:  # a host name
        return False


def _register_bench() -> None:
    main.add_command(bench_command)


def _make_beat(app, lease: float | None = None):
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
    app = state.app(check_broker=True, wait=True)
    service = _make_beat(app, lease)
    if list_only:
        try:
            click.echo(service.format_schedule())
        except ImproperlyConfigured as exc:
            _fail(exc)
        return
    sys.exit(service.run_forever())


_register_bench()

if __name__ == "__main__":  # pragma: no cover
    main()
