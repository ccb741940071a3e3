"""Per-tenant fairness: fair queues with tenants.

``apply_async(tenant_key="customer-17")`` on a queue declared fair::

    app.conf.task_queues = {
        "reports": {"fair_tenants": True, "tenant_concurrency": 2, "tenant_rate_limit": "10/s"},
    }

Workers serve the tenants of a fair queue round-robin, so a tenant that sends
100,000 tasks cannot starve one that sends 10. The reliability machinery
(streams, consumer group, pending list, leases, reaper) is not changed: a
*gate* in front of the streams decides when a message enters them.

* A fair queue keeps at most ``fair_window`` messages in its streams (ready or
  in flight; default 1000), and with ``tenant_concurrency`` at most that many of
  one tenant's. A message that does not fit waits in its tenant's backlog (a Redis
  list) and is admitted when a message leaves the streams for good (ack, dead
  letter, a retry that waits), one turn of a ring of the tenants that have a
  backlog at a time, so the tenants take turns (a turn admits one message, or up
  to ``fair_window // 100`` (at most 10) with a large window).
* ``tenant_rate_limit`` is applied at admission, with a token bucket per tenant
  in Redis: a tenant without a token sleeps (off the ring) until one is due. The
  backlog stays in Redis; nothing is deferred to the delayed set and back.
* Every step is one Lua script (``broker/lua/gate.lua`` is the shared part) on
  the queue's hash tag, so nothing is torn by a crash. The window is the
  streams' length (XLEN), which cannot drift; the per-group counts kept under a
  cap, the backlog index and the ring are checked against the streams every few
  seconds by one worker (``fair_heal.lua``), which repairs hand-made deletes or
  processes with different settings, so no backlog stays stranded.

Messages sent to a fair queue without ``tenant_key`` share one tenant (the empty
name). The tenant rides in the message's headers (``fastq-tenant``, readable as
``self.request.headers``) and in the stream field ``g``. Plain queues take none
of these paths.

Layer: api (the producer side); imports base and broker, never ``fastq.worker`` or the apps.
"""

from __future__ import annotations

import logging
from typing import Any

from .broker.fair import MAX_TENANT_KEY, NO_TENANT, TENANT_HEADER, FairQueue, parse_task_queues
from .exceptions import ImproperlyConfigured


def check_tenant_key(value: Any, task_name: str) -> str:
    """A valid tenant key (a non-empty string of at most MAX_TENANT_KEY characters) or ValueError."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"task {task_name!r}: tenant_key must be a non-empty string, not {value!r}")
    if len(value) > MAX_TENANT_KEY:
        raise ValueError(f"task {task_name!r}: tenant_key is {len(value)} characters long, "
                         f"more than {MAX_TENANT_KEY}")
    return value


def with_tenant(app, task_name: str, queue: str, tenant_key: Any, headers: dict | None) -> dict:
    """The message headers carrying ``tenant_key``; the queue must be fair (at call time)."""
    check_tenant_key(tenant_key, task_name)
    if queue not in app.broker.fair:
        raise ImproperlyConfigured(
            f"task {task_name!r}: tenant_key={tenant_key!r} needs a fair queue, and queue {queue!r} is not one; "
            f"declare it: app.conf.task_queues = {{{queue!r}: {{'fair_tenants': True}}}}"
        )
    if headers is not None and not isinstance(headers, dict):
        raise TypeError(f"task {task_name!r}: headers must be a dict, not {type(headers).__name__}")
    return {**(headers or {}), TENANT_HEADER: tenant_key}


def tenants(app, queue: str) -> dict[str, dict]:
    """Per tenant of a fair queue: ``{"active": its messages in the streams (ready
    or running), "backlog": its messages waiting to be admitted}``. Reads the
    streams (at most about ``fair_window`` entries): for inspection, not hot paths."""
    fq = app.broker.fair.get(queue)
    if fq is None:
        raise ImproperlyConfigured(f"queue {queue!r} is not a fair queue")
    return app.broker.tenant_counts(queue)


#: The name of ``tenants`` before the rename (#19).
groups = tenants


def warn_unconfigured(app, queues: list[str]) -> None:
    """Log an error for each consumed queue that producers used as a fair queue
    (its gate keys exist) while this process's settings say it is plain: this
    worker's acknowledgements would not free the places of capped tenants."""
    plain = [q for q in queues if q not in app.broker.fair]
    for q in app.broker.queues_with_gates(plain) if plain else []:
        logging.getLogger("fastq.worker").error(
            "Queue %r has fair-queue keys in Redis but is not a fair queue in this worker's settings: "
            "give every process the same task_queues (docs/fairness.md)", q)


__all__ = ["TENANT_HEADER", "NO_TENANT", "FairQueue", "check_tenant_key", "tenants", "parse_task_queues"]
