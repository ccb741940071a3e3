"""Typed, unique and debounced tasks (``-A tests.apps.typedapp:app``).

Tasks record their runs in the ledger (FASTQ_TEST_LEDGER), so tests count
executions outside the broker's keys.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import time
import uuid
from decimal import Decimal

import msgspec
import pydantic
from tests.apps.ledger import ledger

from fastq import FastQ

app = FastQ("typedtests")
app.conf.worker_lease_timeout = float(os.environ.get("FASTQ_TEST_LEASE", "30"))
if os.environ.get("FASTQ_TEST_SERIALIZER"):
    app.conf.task_serializer = os.environ["FASTQ_TEST_SERIALIZER"]


@dataclasses.dataclass
class Point:
    x: int
    y: int = 0


class Order(msgspec.Struct):
    id: uuid.UUID
    amount: Decimal
    placed: dt.datetime
    tags: list[str] = []


@app.task(name="typed.add", typed=True)
def add(x: int, y: int) -> int:
    return x + y


@app.task(name="typed.describe", typed=True)
def describe(p: Point, order: Order, when: dt.datetime, ident: uuid.UUID, *extra: float, **labels: str) -> dict:
    """Reports the Python types it received, to prove the worker converted them."""
    return {
        "p": [type(p).__name__, p.x, p.y],
        "order": [type(order).__name__, type(order.id).__name__, type(order.amount).__name__, str(order.amount),
                  type(order.placed).__name__, order.tags],
        "when": [type(when).__name__, when.isoformat()],
        "ident": [type(ident).__name__, str(ident)],
        "extra": [type(e).__name__ for e in extra],
        "labels": labels,
    }


@app.task(name="typed.move", typed=True)
def move(p: Point, dx: int) -> Point:
    return Point(p.x + dx, p.y)


@app.task(name="typed.who", typed=True, bind=True)
def who(self, n: int) -> list:
    return [self.request.id, n, type(n).__name__]


@app.task(name="typed.retrying", typed=True, autoretry_for=(Exception,), max_retries=3, default_retry_delay=0.1)
def retrying(n: int) -> int:
    ledger().hincrby("retrying", str(n), 1)
    return n


@app.task(name="typed.plain")
def plain(x, y):
    return x + y


# --- unique and debounced ---------------------------------------------------------------------


@app.task(name="uniq.record")
def record(key: str, item: str, seconds: float = 0.0) -> str:
    """Count a run of ``item`` in the ledger hash ``key`` (after sleeping ``seconds``)."""
    if seconds:
        time.sleep(seconds)
    ledger().hincrby(key, item, 1)
    return item


@app.task(name="uniq.last")
def last(key: str, value: str) -> str:
    """Count a run and remember the argument it ran with (debounce: the latest wins)."""
    ledger().hincrby(key, "runs", 1)
    ledger().rpush(f"{key}:values", value)
    return value


@app.task(name="uniq.report", unique=True, unique_for=60)
def report(account: int, kind: str = "daily", seconds: float = 0.0) -> str:
    if seconds:
        time.sleep(seconds)
    ledger().hincrby("report", f"{account}:{kind}", 1)
    return f"{account}:{kind}"


@app.task(name="uniq.fail")
def fail(key: str) -> None:
    ledger().hincrby(key, "runs", 1)
    raise ValueError("boom")


@app.task(name="uniq.flaky", bind=True, max_retries=2)
def flaky(self, key: str, delay: float) -> int:
    """Fails its first try (retry after ``delay``), then succeeds."""
    n = ledger().hincrby(key, "runs", 1)
    if self.request.retries == 0:
        raise self.retry(countdown=delay)
    return n


class AddParams(pydantic.BaseModel):
    x: int
    y: int


class AddResult(pydantic.BaseModel):
    result: int


@app.task(name="pyd.add", pydantic=True)
def pyd_add(data: AddParams, scale: int = 1) -> AddResult:
    """Celery's pydantic=True: a model in (validated from a dict), a model out (stored as a dict)."""
    assert isinstance(data, AddParams), type(data)
    return AddResult(result=(data.x + data.y) * scale)
