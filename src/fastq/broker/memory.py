"""Redis's eviction policy, checked by workers at start and after a reconnect.

fastq's queues are keys without a TTL. Under ``maxmemory-policy allkeys-*`` Redis
deletes any key when it runs out of memory, queued tasks included, and nobody
is told: a producer's send succeeded, the task is simply gone. Under
``volatile-*`` only keys with a TTL go (results, locks, heartbeats), so tasks are
safe but results may vanish early. ``noeviction`` refuses the write instead,
which fastq reports (BrokerOutOfMemory) and never acknowledges a task over
(docs/reliability.md, "Memory").

Layer: broker; imports base modules and ``fastq.broker``, never the API, the worker or the apps.
"""

from __future__ import annotations

import logging

from redis.exceptions import ResponseError

from ..exceptions import ImproperlyConfigured
from .connect import safe_url

log = logging.getLogger("fastq.worker")


def memory_policy(client) -> tuple[str | None, int]:
    """(maxmemory-policy, maxmemory in bytes) of the server, or (None, 0) when this
    user may not read them (an ACL without CONFIG and INFO, a managed Redis)."""
    try:
        conf = client.config_get("maxmemory*")
        return conf.get("maxmemory-policy"), int(conf.get("maxmemory") or 0)
    except (ResponseError, AttributeError, ValueError, TypeError):
        pass
    try:
        info = client.info("memory")
        return info.get("maxmemory_policy"), int(info.get("maxmemory") or 0)
    except (ResponseError, AttributeError, ValueError, TypeError):
        return None, 0


def check_memory_policy(broker, refuse: bool, client=None) -> None:
    """Warn when Redis may evict fastq's keys; with ``refuse``, raise
    ImproperlyConfigured for a policy that may evict queued tasks (allkeys-*)
    while a memory limit is set (``--allow-eviction`` overrides)."""
    policy, maxmemory = memory_policy(client or broker.client)
    where = safe_url(broker.url)
    if policy is None:
        log.info("Could not read maxmemory-policy of Redis at %s (no CONFIG/INFO permission); "
                 "fastq needs noeviction to never lose a queued task", where)
        return
    if policy == "noeviction":
        return
    if policy.startswith("allkeys-"):
        text = (f"Redis at {where} has maxmemory-policy {policy}: when it is full it deletes queued tasks "
                f"without telling anyone. Set it to noeviction (CONFIG SET maxmemory-policy noeviction)")
        if refuse and maxmemory:
            raise ImproperlyConfigured(f"{text}, or start the worker with --allow-eviction to run anyway")
        log.error("%s%s.", text, "" if maxmemory else " before setting a maxmemory")
        return
    log.warning("Redis at %s has maxmemory-policy %s: when it is full it deletes keys with a TTL, so results, "
                "locks and heartbeats may vanish early (queued tasks are safe); noeviction is safest", where, policy)
