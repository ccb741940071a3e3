"""The producers scenario for the peers (compare.py ``--scenario producers``).

Runs one row of ``fastq bench -s producers`` (src/fastq/bench_producers.py, loaded by
path: the same shapes, timing and figures) with one peer's own send call, into an
empty queue nobody drains, and prints the same JSON shape as ``fastq bench --json``.
Each peer runs the shapes it has an API for:

- Celery:   ``task.delay()`` (sync only: 1 caller, threads);
- Dramatiq: ``actor.send()`` (sync only);
- arq:      ``await pool.enqueue_job()`` (asyncio only; its "1 caller" is one coroutine);
- taskiq:   ``await task.kiq()`` on taskiq-redis's ``ListQueueBroker`` (asyncio only).

A shape a peer has no API for prints ``{"results": [], "unsupported": ...}``.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os

from _common import emit

HERE = os.path.dirname(os.path.abspath(__file__))
PRODUCERS_PATH = os.path.normpath(os.path.join(HERE, os.pardir, os.pardir, "src", "fastq", "bench_producers.py"))


def load_producers():
    spec = importlib.util.spec_from_file_location("bench_producers", PRODUCERS_PATH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class CelerySender:
    def __init__(self, url: str) -> None:
        import celery  # only this peer's runs need it (its own venv)

        app = celery.Celery("producers", broker=url, backend=url)
        app.conf.broker_connection_retry_on_startup = True

        @app.task(name="producers.noop", ignore_result=True)
        def noop(i):
            return None

        self.delay = noop.delay
        self.version = celery.__version__


class DramatiqSender:
    def __init__(self, url: str) -> None:
        import dramatiq  # only this peer's runs need it (its own venv)
        from dramatiq.brokers.redis import RedisBroker

        dramatiq.set_broker(RedisBroker(url=url))

        @dramatiq.actor(actor_name="producers_noop")
        def noop(i):
            return None

        self.delay = noop.send
        self.version = dramatiq.__version__


class ArqSender:
    """arq's pool belongs to one event loop: made on the loop's first send."""

    def __init__(self, url: str) -> None:
        import arq  # only this peer's runs need it (its own venv)
        from arq.connections import RedisSettings

        self._settings = RedisSettings.from_dsn(url)
        self._create = arq.create_pool
        self._pool = None
        self._loop = None
        self.version = getattr(arq, "VERSION", None) or getattr(arq, "__version__", "?")

    async def delay_async(self, i):
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._pool, self._loop = await self._create(self._settings), loop
        return await self._pool.enqueue_job("noop", i)


class TaskiqSender:
    def __init__(self, url: str) -> None:
        import taskiq  # only this peer's runs need it (its own venv)
        from taskiq_redis import ListQueueBroker

        self._broker = ListQueueBroker(url)

        @self._broker.task(task_name="producers_noop")
        async def noop(i):
            return None

        self._task = noop
        self._loop = None
        self.version = getattr(taskiq, "__version__", "?")

    async def delay_async(self, i):
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            await self._broker.startup()
            self._loop = loop
        return await self._task.kiq(i)


SENDERS = {"celery": CelerySender, "dramatiq": DramatiqSender, "arq": ArqSender, "taskiq": TaskiqSender}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--system", choices=sorted(SENDERS), required=True)
    p.add_argument("--broker", default="redis://127.0.0.1:6379/5")
    p.add_argument("--row", type=int, required=True, help="1-based row of fastq's producers rows")
    p.add_argument("--tasks", type=int, default=None)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    producers = load_producers()
    row = producers.ROWS[args.row - 1]
    sender = SENDERS[args.system](args.broker)
    config = {"celery": "task.delay()", "dramatiq": "actor.send()", "arq": "await pool.enqueue_job()",
              "taskiq": "await task.kiq() (taskiq-redis ListQueueBroker)"}[args.system]
    if row == ("1 caller", 1) and not hasattr(sender, "delay"):
        row = ("asyncio", 1)  # an async-only queue's lone caller: one coroutine awaiting each send
    if not producers.supports(sender, row):
        emit(args.system, str(sender.version), args.broker, config, [])
        return
    result = producers.run_row(sender, row, args.tasks or producers.DEFAULT_TASKS)
    result["label"] = producers.label(producers.ROWS[args.row - 1])
    emit(args.system, str(sender.version), args.broker, config, [result])


if __name__ == "__main__":
    main()
