"""The worker: ``fastq worker``.

Layer: worker; imports base, broker and api, never the CLI or the dashboard.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time

from .. import __version__, signals
from .._speedups import COMPILED
from ..broker import safe_url
from ..broker.keys import validate_queue_name
from ..broker.memory import check_memory_policy
from ..broker.redis import AUTH_ERRORS, CONNECTION_ERRORS, auth_failed
from ..exceptions import BrokerOutOfMemory, ImproperlyConfigured
from ..fairness import warn_unconfigured
from ..logs import set_hostname
from ..metrics import WorkerMetrics
from .async_consumer import DEFAULT_CONCURRENCY
from .maintenance import HEARTBEAT_INTERVAL, HEARTBEAT_TTL, instance_id
from .naming import NameTaken, default_names, expand, holder_alive, process_identity
from .pool import AsyncioPool, ProcessPool, SoloPool
from .remote_control import WorkerControl

log = logging.getLogger("fastq.worker")

POOLS = ("process", "thread", "solo", "asyncio")


def default_hostname() -> str:
    """The first default name; a worker started without a name takes the first
    of fastq@<host>, fastq-2@<host>, ... that no live worker holds (naming.py)."""
    return next(default_names())


class Worker:
    """Runs a pool of consumers for an app until told to stop."""

    def __init__(self, app, queues: list[str] | None = None, concurrency: int | None = None, pool: str = "process",
                 hostname: str | None = None, prefetch: int | None = None, exclude: list[str] | None = None,
                 weights: dict[str, int] | None = None, autoscale: tuple[int, int] | None = None,
                 async_concurrency: int | None = None) -> None:
        if pool not in POOLS:
            raise ValueError(f"pool must be one of {', '.join(POOLS)}, not {pool!r}")
        self.app = app
        self.weights = dict(weights or {})
        if exclude:
            # -X: every queue known to Redis (and the default) except those.
            known = set(app.broker.known_queues()) | {app.conf.task_default_queue} | set(queues or ())
            queues = sorted(known - set(exclude))
            if not queues:
                raise ValueError(f"-X {','.join(exclude)} leaves no queue to consume")
        self.queues = [validate_queue_name(q) for q in (queues or [app.conf.task_default_queue])]
        app.broker.fair  # noqa: B018 - a bad task_queues setting fails here, before the pool starts
        self.pool_name = pool
        if pool == "asyncio":  # coroutines are cheap: the CPU count is far too few
            self.concurrency = int(concurrency or app.conf.worker_concurrency or DEFAULT_CONCURRENCY)
        else:
            self.concurrency = 1 if pool == "solo" else int(concurrency or app.conf.worker_concurrency or os.cpu_count() or 1)
        if self.concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        #: Coroutines at once in each process-pool child (0: children run no event loop).
        self.async_concurrency = int(async_concurrency or 0)
        if async_concurrency is not None and self.async_concurrency < 1:
            raise ValueError(f"--async-concurrency must be at least 1, not {async_concurrency!r}")
        if self.async_concurrency and pool != "process":
            raise ValueError(f"--async-concurrency runs an event loop in each child of the process pool (-P process), "
                             f"not the {pool} pool; for one process use -P asyncio -c N")
        #: An explicit name (expanded: -n worker1@%h); None: the first free default name, chosen at start.
        self.requested_name = expand(hostname) if hostname else None
        self.hostname = self.requested_name or default_hostname()
        #: Why the worker has its name, for the banner (default names).
        self.name_note = ""
        #: "json": the banner is a JSON log line (fastq worker --log-format json), not text on stdout.
        self.log_format = "text"
        self.prefetch = int(prefetch or app.conf.worker_prefetch)
        self.autoscale = autoscale
        if autoscale is not None:
            high, low = autoscale
            if pool != "process" or not 1 <= low <= high:
                raise ValueError("--autoscale MAX,MIN needs the process pool and 1 <= MIN <= MAX")
            self.concurrency = low
        self.started = time.time()
        self.pool = None

    def info(self) -> dict:
        base = {"pool": self.pool_name, "concurrency": self.concurrency, "started": self.started}
        if self.pool is not None and hasattr(self.pool, "info") and self.pool_name != "process":
            base.update(self.pool.info())
        return base

    def banner_fields(self) -> dict:
        """The banner's facts, for a JSON log line."""
        return {"worker": self.hostname, "name_note": self.name_note.strip(" ()") or None, "version": __version__,
                "core": "compiled" if COMPILED else "pure Python", "broker": safe_url(self.app.broker_url),
                "results": safe_url(self.app.backend_url), "queues": self.queues, "weights": self.weights,
                "pool": self.pool_name, "concurrency": self.concurrency, "async_concurrency": self.async_concurrency,
                "prefetch": self.prefetch, "lease": self.app.conf.worker_lease_timeout,
                "max_deliveries": self.app.conf.worker_max_deliveries, "tasks": sorted(self.app.tasks)}

    def banner(self) -> str:
        tasks = "\n".join(f"  . {name}" for name in sorted(self.app.tasks)) or "  (none)"
        core = "compiled" if COMPILED else "pure Python"
        return (
            f"fastq {__version__} ({core} core) worker {self.hostname}{self.name_note}\n"
            f"- broker:      {safe_url(self.app.broker_url)}\n"
            f"- results:     {safe_url(self.app.backend_url)}\n"
            f"- queues:      {', '.join(f'{q}:{self.weights[q]}' if q in self.weights else q for q in self.queues)}\n"
            f"- pool:        {self.pool_name} (concurrency {self.concurrency}"
            f"{f', async concurrency {self.async_concurrency}' if self.async_concurrency else ''}), prefetch {self.prefetch}\n"
            f"- lease:       {self.app.conf.worker_lease_timeout}s, max deliveries {self.app.conf.worker_max_deliveries}\n"
            f"[tasks]\n{tasks}\n"
        )

    def claim_name(self) -> None:
        """Take this worker's name (naming.py says how a holder is judged): the
        requested one, or the first default name no live worker holds. A name
        held by a live worker raises NameTaken. Taking a dead predecessor's name
        hands back what it held at once."""
        if self.requested_name:
            self._claim(self.requested_name)
            return
        taken = []
        for name in default_names():
            try:
                self._claim(name)
            except NameTaken as exc:
                taken.append(exc)
                continue
            self.hostname = name
            held = "".join(f"; {t.name} is held by a live worker ({t.who})" for t in taken[:3])
            self.name_note = f" (default name{held}{'; ...' if len(taken) > 3 else ''}; -n NAME chooses one)"
            return
        raise NameTaken(taken[-1].name, f"and every default name before it; {taken[-1].who}")

    def _claim(self, name: str) -> None:
        broker = self.app.broker
        mine = json.dumps({"hostname": name, "pid": os.getpid(), "instance": instance_id(), "queues": self.queues,
                           "ts": time.time(), "proc": process_identity(), **self.info()})
        stale_after = 2.5 * HEARTBEAT_INTERVAL
        while True:
            raw, ttl_ms = broker.read_worker(name)
            info = _heartbeat(raw)
            if raw is not None and info.get("instance") == instance_id():
                return  # this very process (fastq.testing runs workers in the caller's process)
            age = HEARTBEAT_TTL - ttl_ms / 1000 if ttl_ms >= 0 else stale_after
            alive = holder_alive(info) if raw is not None else False
            if alive:
                raise NameTaken(name, _who(info))
            if raw is not None and alive is None and age < stale_after:
                # A holder this host cannot see: alive if it heartbeats again, gone if it stays silent.
                log.info("Name %r is held by %s; waiting up to %.1fs to see whether it still heartbeats",
                         name, _who(info), stale_after - age)
                if self._heartbeats_again(name, raw, stale_after - age):
                    raise NameTaken(name, _who(info))
            if broker.claim_worker(name, raw, mine, HEARTBEAT_TTL):
                break
        if raw is not None and alive is False:  # known dead: hand back its messages now, not after the lease
            self._take_over(name, info)

    def _heartbeats_again(self, name: str, raw: bytes, wait: float) -> bool:
        deadline = time.monotonic() + wait + 0.25
        while time.monotonic() < deadline:
            time.sleep(0.25)
            if self.app.broker.read_worker(name)[0] != raw:
                return True
        return False

    def _take_over(self, name: str, info: dict) -> None:
        queues = set(self.queues)
        if isinstance(info.get("queues"), list):
            queues.update(q for q in info["queues"] if isinstance(q, str))
        moved = buried = 0
        broker = self.app.broker
        for q in sorted(queues):
            try:
                for physical in broker.expand_queues([validate_queue_name(q)]):
                    m, b = broker.release_worker(physical, name)
                    moved += m
                    buried += b
            except ImproperlyConfigured:  # a malformed queue name in the heartbeat: skip it
                continue
            except CONNECTION_ERRORS as exc:  # the lease returns them if Redis stays away
                log.warning("Could not hand back the messages of the dead worker %r on %r now (%s); "
                            "they come back after the lease", name, q, exc)
        log.warning("Took over the name %r from a dead worker (%s): handed back %d message(s) it held "
                    "(%d dead-lettered)", name, _who(info), moved, buried)

    def wait_for_broker(self) -> None:
        """Retry the first connection with backoff; one line per attempt, no traceback."""
        delay = 0.5
        while True:
            try:
                self.app.broker.ping()
                self.app.broker.load_scripts()
                for q in self.queues:
                    self.app.broker.ensure_queue(q)
                check_memory_policy(self.app.broker, refuse=not self.app.conf.worker_allow_eviction)
                return
            except AUTH_ERRORS as exc:
                if not self.app.conf.broker_retry_on_auth_failure:
                    raise auth_failed(self.app.broker_url, exc) from None
                log.error("%s. Trying again in %.1fs (broker_retry_on_auth_failure).",
                          auth_failed(self.app.broker_url, exc), delay)
            except BrokerOutOfMemory as exc:
                log.error("%s. Trying again in %.1fs.", exc, delay)
            except CONNECTION_ERRORS as exc:
                log.error("Cannot connect to %s: %s. Trying again in %.1fs.", safe_url(self.app.broker_url), exc, delay)
            time.sleep(delay)
            delay = min(delay * 2, 10.0)

    def warn_about_limits(self) -> None:
        """A hard time limit needs a process to kill: say so where it cannot hold."""
        if self.pool_name in ("process", "asyncio"):  # asyncio: see aio.startup_checks
            return
        limited = sorted(name for name, t in self.app.tasks.items() if t.time_limit)
        if limited:
            log.warning("The %s pool cannot stop a running task at its hard time limit (%s); soft time limits "
                        "still apply. Use -P process to enforce hard limits.", self.pool_name, ", ".join(limited))

    def start(self) -> int:
        self.warn_about_limits()
        startup_checks(self)
        self.wait_for_broker()
        self.claim_name()  # before the banner: a refused worker prints one line only
        set_hostname(self.hostname)
        if self.log_format == "json":  # JSON logs are JSON lines only: the banner is one of them
            log.warning("fastq %s worker %s starting", __version__, self.hostname,
                        extra={"fields": {"event": "worker-banner", **self.banner_fields()}})
        else:
            sys.stdout.write(self.banner())
            sys.stdout.flush()
        warn_unconfigured(self.app, self.queues)
        if self.pool_name == "process":
            self.pool = ProcessPool(self, self.concurrency)
        elif self.pool_name == "asyncio":
            self.pool = AsyncioPool(self, self.concurrency)
        else:
            self.pool = SoloPool(self, self.concurrency)
        self._start_monitoring()
        signals.worker_ready.send(sender=self)
        log.warning("%s ready.", self.hostname)
        try:
            return self.pool.run()
        finally:
            self._stop_monitoring()
            signals.worker_shutdown.send(sender=self)
            log.warning("%s stopped.", self.hostname)

    def _start_monitoring(self) -> None:
        """Remote control, and the Prometheus endpoint when ``worker_metrics_port`` is set."""
        #: Answers ``app.control`` (inspect, ping, pool_grow, revoke, ...).
        self.control = WorkerControl(self)
        self.control.start()
        self.metrics = None
        port = self.app.conf.get("worker_metrics_port")
        if port:
            self.metrics = WorkerMetrics(self, int(port), self.app.conf.get("worker_metrics_address") or "127.0.0.1")
            self.metrics.start()

    def _stop_monitoring(self) -> None:
        for part in (getattr(self, "control", None), getattr(self, "metrics", None)):
            if part is not None:
                part.stop()


def _heartbeat(raw: bytes | None) -> dict:
    """A registry entry, parsed; {} when absent or malformed (it is read from Redis)."""
    if raw is None:
        return {}
    try:
        info = json.loads(raw)
    except ValueError:
        return {}
    return info if isinstance(info, dict) else {}


def _who(info: dict) -> str:
    proc = info.get("proc") if isinstance(info.get("proc"), dict) else {}
    host = proc.get("host")
    return f"pid {info.get('pid', '?')}" + (f" on {host}" if host else "")


def async_task_names(app) -> list[str]:
    return sorted(name for name, t in app.tasks.items() if getattr(t, "is_async", False))


def startup_checks(worker) -> None:
    """Say at start-up what a pool does with coroutine tasks, and which limits it cannot hold."""
    names = async_task_names(worker.app)
    loop_pool = worker.pool_name == "asyncio" or bool(getattr(worker, "async_concurrency", 0))
    if names and not loop_pool:
        log.warning("Coroutine tasks (%s) run one at a time per %s with asyncio.run in the %s pool; for "
                    "concurrency use -P asyncio -c N, or -P process --async-concurrency M.",
                    ", ".join(names), "process" if worker.pool_name == "process" else "consumer", worker.pool_name)
    if loop_pool:
        sync_hard = sorted(name for name, t in worker.app.tasks.items()
                           if t.time_limit and not getattr(t, "is_async", False) and not name.startswith("fastq."))
        if sync_hard:
            log.warning("In an event loop worker, sync tasks run in threads: their hard time limits (%s) cannot be "
                        "enforced (soft limits still apply). Coroutine tasks are cancelled at both limits.",
                        ", ".join(sync_hard))
