"""The worker: ``fastq worker``."""

from __future__ import annotations

import logging
import os
import socket
import sys
import time

from .. import __version__, signals
from .._speedups import COMPILED
from ..broker import safe_url
from ..broker.keys import validate_queue_name
from ..broker.memory import check_memory_policy
from ..broker.redis import AUTH_ERRORS, CONNECTION_ERRORS, auth_failed
from ..exceptions import BrokerOutOfMemory

log = logging.getLogger("fastq.worker")

POOLS = ("process", "thread", "solo", "asyncio")


def default_hostname() -> str:
    return f"fastq@{socket.gethostname()}"


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
            from .aiopool import DEFAULT_CONCURRENCY

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
        self.hostname = hostname or default_hostname()
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

    def banner(self) -> str:
        tasks = "\n".join(f"  . {name}" for name in sorted(self.app.tasks)) or "  (none)"
        core = "compiled" if COMPILED else "pure Python"
        return (
            f"fastq {__version__} ({core} core) worker {self.hostname}\n"
            f"- broker:      {safe_url(self.app.broker_url)}\n"
            f"- results:     {safe_url(self.app.backend_url)}\n"
            f"- queues:      {', '.join(f'{q}:{self.weights[q]}' if q in self.weights else q for q in self.queues)}\n"
            f"- pool:        {self.pool_name} (concurrency {self.concurrency}"
            f"{f', async concurrency {self.async_concurrency}' if self.async_concurrency else ''}), prefetch {self.prefetch}\n"
            f"- lease:       {self.app.conf.worker_lease_timeout}s, max deliveries {self.app.conf.worker_max_deliveries}\n"
            f"[tasks]\n{tasks}\n"
        )

    def check_unique_name(self) -> None:
        """Two live workers must not share a name: their consumers, leases and
        control replies would mix. A heartbeat written less than 2.5 intervals ago
        by another process means the name is taken. "Another process" is told by
        the random instance id in the heartbeat, not the pid (workers on different
        hosts may have the same pid), and the heartbeat's age by its key's TTL, on
        Redis's clock (the hosts' clocks may differ)."""
        import json

        from .maintenance import HEARTBEAT_INTERVAL, HEARTBEAT_TTL, instance_id

        key = self.app.broker.keys.worker(self.hostname)
        pipe = self.app.broker.client.pipeline(transaction=False)
        pipe.get(key)
        pipe.pttl(key)
        raw, ttl_ms = pipe.execute()
        if raw is None:
            return
        try:
            info = json.loads(raw)
        except ValueError:  # not a heartbeat fastq wrote: nobody live holds the name
            return
        if not isinstance(info, dict):
            return
        if ("instance" in info and info["instance"] == instance_id()) or \
                ("instance" not in info and info.get("pid") == os.getpid()):  # this very process
            return
        age = HEARTBEAT_TTL - ttl_ms / 1000 if ttl_ms >= 0 else time.time() - float(info.get("ts", 0))
        if age < 2.5 * HEARTBEAT_INTERVAL:
            raise ValueError(f"another live worker is already named {self.hostname!r} (pid {info.get('pid')}); "
                             "give this one a different --hostname (if that worker just died, its name is free "
                             "a few seconds later)")

    def wait_for_broker(self) -> None:
        """Retry the first connection with backoff; one line per attempt, no traceback."""
        delay = 0.5
        while True:
            try:
                self.app.broker.client.ping()
                from ..broker.scripts import SCRIPTS

                SCRIPTS.load_all(self.app.broker.client)
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
        from .pool import ProcessPool, SoloPool

        sys.stdout.write(self.banner())
        sys.stdout.flush()
        self.warn_about_limits()
        from .aio import startup_checks

        startup_checks(self)
        self.wait_for_broker()
        self.check_unique_name()
        from ..fairness import warn_unconfigured

        warn_unconfigured(self.app, self.queues)
        if self.pool_name == "process":
            self.pool = ProcessPool(self, self.concurrency)
        elif self.pool_name == "asyncio":
            from .aiopool import AsyncioPool

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
        from ..control import WorkerControl

        #: Answers ``app.control`` (inspect, ping, pool_grow, revoke, ...).
        self.control = WorkerControl(self)
        self.control.start()
        self.metrics = None
        port = self.app.conf.get("worker_metrics_port")
        if port:
            from ..metrics import WorkerMetrics

            self.metrics = WorkerMetrics(self, int(port), self.app.conf.get("worker_metrics_address") or "127.0.0.1")
            self.metrics.start()

    def _stop_monitoring(self) -> None:
        for part in (getattr(self, "control", None), getattr(self, "metrics", None)):
            if part is not None:
                part.stop()
