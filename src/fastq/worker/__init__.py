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
from ..broker.redis import CONNECTION_ERRORS

log = logging.getLogger("fastq.worker")

POOLS = ("process", "thread", "solo")


def default_hostname() -> str:
    return f"fastq@{socket.gethostname()}"


class Worker:
    """Runs a pool of consumers for an app until told to stop."""

    def __init__(self, app, queues: list[str] | None = None, concurrency: int | None = None, pool: str = "process",
                 hostname: str | None = None, prefetch: int | None = None) -> None:
        if pool not in POOLS:
            raise ValueError(f"pool must be one of {', '.join(POOLS)}, not {pool!r}")
        self.app = app
        self.queues = [validate_queue_name(q) for q in (queues or [app.conf.task_default_queue])]
        self.pool_name = pool
        self.concurrency = 1 if pool == "solo" else int(concurrency or app.conf.worker_concurrency or os.cpu_count() or 1)
        if self.concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.hostname = hostname or default_hostname()
        self.prefetch = int(prefetch or app.conf.worker_prefetch)
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
            f"- queues:      {', '.join(self.queues)}\n"
            f"- pool:        {self.pool_name} (concurrency {self.concurrency}), prefetch {self.prefetch}\n"
            f"- lease:       {self.app.conf.worker_lease_timeout}s, max deliveries {self.app.conf.worker_max_deliveries}\n"
            f"[tasks]\n{tasks}\n"
        )

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
                return
            except CONNECTION_ERRORS as exc:
                log.error("Cannot connect to %s: %s. Trying again in %.1fs.", safe_url(self.app.broker_url), exc, delay)
                time.sleep(delay)
                delay = min(delay * 2, 10.0)

    def start(self) -> int:
        from .pool import ProcessPool, SoloPool

        sys.stdout.write(self.banner())
        sys.stdout.flush()
        self.wait_for_broker()
        if self.pool_name == "process":
            self.pool = ProcessPool(self, self.concurrency)
        else:
            self.pool = SoloPool(self, self.concurrency)
        signals.worker_ready.send(sender=self)
        log.warning("%s ready.", self.hostname)
        try:
            return self.pool.run()
        finally:
            signals.worker_shutdown.send(sender=self)
            log.warning("%s stopped.", self.hostname)
