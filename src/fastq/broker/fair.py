"""The Redis side of fair queues (fastq.fairness is the user's side): the gate's
settings, how a message carries its tenant, and the commands of the gate's
scripts (fair_*.lua, gate.lua), which only the broker and the worker send.

Layer: broker; imports base modules and ``fastq.broker``, never the API, the worker or the apps.
"""

from __future__ import annotations

from typing import Any

from .._speedups import pack_command
from ..exceptions import ImproperlyConfigured
from ..messages import message_decoder_for
from ..options import parse_rate
from .due import delay_command
from .keys import CONSUMER_GROUP, validate_queue_name
from .scripts import SCRIPTS

#: Message header that carries the tenant (``self.request.headers["fastq-tenant"]``).
TENANT_HEADER = "fastq-tenant"
#: The header's name before the rename (#19): messages sent by older versions
#: and still queued carry it, and keep their tenant.
OLD_TENANT_HEADER = "fastq-group"
#: The tenant of messages sent to a fair queue without ``tenant_key``.
NO_TENANT = ""
#: Default ``fair_window``: counted messages a fair queue keeps in its streams.
DEFAULT_WINDOW = 1000
#: Longest tenant key accepted.
MAX_TENANT_KEY = 256
#: Options a ``task_queues`` entry may have.
QUEUE_OPTIONS = ("fair_tenants", "tenant_concurrency", "tenant_rate_limit", "fair_window")
#: Their names before the rename (#19), still accepted: old name -> new name.
OLD_QUEUE_OPTIONS = {"fair_groups": "fair_tenants", "group_concurrency": "tenant_concurrency",
                     "group_rate_limit": "tenant_rate_limit"}
#: A recount scans at most this many stream entries (a larger queue is skipped that round).
HEAL_MAX_ENTRIES = 200_000
#: Bucket size of a tenant rate limit, in seconds of the rate (as fastq.ratelimit).
BURST_SECONDS = 0.1


class FairQueue:
    """The gate settings of one fair queue."""

    __slots__ = ("base", "concurrency", "gate_args", "name", "rate", "rate_limit", "window")

    def __init__(self, prefix: str, name: str, window: int = DEFAULT_WINDOW, concurrency: int | None = None,
                 rate_limit: Any = None) -> None:
        self.name = name
        self.window = window
        self.concurrency = concurrency
        self.rate_limit = rate_limit
        self.rate = parse_rate(rate_limit, f"task_queues[{name!r}] tenant_rate_limit")
        #: The queue's key base: every gate key is under its hash tag (one slot).
        self.base = f"{prefix}{{{name}}}"
        burst = max(1.0, self.rate * BURST_SECONDS) if self.rate else 0.0
        #: What every gate script takes: base, window, cap (0 = none), rate (0 = none), burst.
        self.gate_args = (self.base.encode(), b"%d" % window, b"%d" % (concurrency or 0),
                          repr(self.rate or 0.0).encode(), repr(burst).encode())

    def key(self, suffix: str) -> str:
        return f"{self.base}:{suffix}"

    def __repr__(self) -> str:
        return (f"<FairQueue {self.name} window={self.window} tenant_concurrency={self.concurrency} "
                f"tenant_rate_limit={self.rate_limit!r}>")


# --- settings -----------------------------------------------------------------------------


def parse_task_queues(conf) -> dict[str, FairQueue]:
    """The fair queues of ``conf.task_queues``; a bad entry raises ImproperlyConfigured naming it."""
    spec = conf.get("task_queues")
    if spec is None:
        return {}
    if not isinstance(spec, dict):
        raise ImproperlyConfigured(
            f"task_queues must be a dict of queue name -> options, e.g. {{'reports': {{'fair_tenants': True}}}}, "
            f"not {type(spec).__name__}"
        )
    out: dict[str, FairQueue] = {}
    for name, opts in spec.items():
        where = f"task_queues[{name!r}]"
        try:
            validate_queue_name(name)
        except ImproperlyConfigured as exc:
            raise ImproperlyConfigured(f"{where}: {exc}") from None
        if opts is None:
            continue
        if not isinstance(opts, dict):
            raise ImproperlyConfigured(f"{where} must be a dict of options, not {type(opts).__name__}")
        opts = _renamed_options(where, opts)
        unknown = sorted(set(opts) - set(QUEUE_OPTIONS))
        if unknown:
            raise ImproperlyConfigured(f"{where}: unknown option(s) {', '.join(unknown)} "
                                       f"(known: {', '.join(QUEUE_OPTIONS)})")
        fair = opts.get("fair_tenants", False)
        if not isinstance(fair, bool):
            raise ImproperlyConfigured(f"{where}: fair_tenants must be True or False, not {fair!r}")
        concurrency = opts.get("tenant_concurrency")
        if concurrency is not None and (not isinstance(concurrency, int) or isinstance(concurrency, bool)
                                        or concurrency < 1):
            raise ImproperlyConfigured(f"{where}: tenant_concurrency must be None or an integer >= 1, "
                                       f"not {concurrency!r}")
        window = opts.get("fair_window", DEFAULT_WINDOW)
        if not isinstance(window, int) or isinstance(window, bool) or window < 1:
            raise ImproperlyConfigured(f"{where}: fair_window must be an integer >= 1, not {window!r}")
        rate_limit = opts.get("tenant_rate_limit")
        if rate_limit is not None and not isinstance(rate_limit, (str, int, float)):
            raise ImproperlyConfigured(f"{where}: tenant_rate_limit {rate_limit!r} is not like '10/s', '10/m' or '5/h'")
        if not fair:
            set_ = [k for k in ("tenant_concurrency", "tenant_rate_limit", "fair_window") if opts.get(k) is not None]
            if set_:
                raise ImproperlyConfigured(f"{where}: {', '.join(set_)} set but 'fair_tenants' is not True "
                                           "(these options only work on a fair queue)")
            continue
        out[name] = FairQueue(conf.key_prefix, name, window, concurrency, rate_limit)
    return out


def _renamed_options(where: str, opts: dict) -> dict:
    """``opts`` with the options' old names (``fair_groups``, ...) changed to the new ones."""
    old = [k for k in opts if k in OLD_QUEUE_OPTIONS]
    if not old:
        return opts
    out = dict(opts)
    for k in old:
        new = OLD_QUEUE_OPTIONS[k]
        if new in opts:
            raise ImproperlyConfigured(f"{where}: both {k!r} and {new!r} set ({k!r} is the old name of {new!r})")
        out[new] = out.pop(k)
    return out


# --- messages -------------------------------------------------------------------------------

def tenant_of(field: bytes, payload: bytes) -> str:
    """The tenant of an encoded message (its ``fastq-tenant`` header; NO_TENANT without one)."""
    decode = message_decoder_for(field)
    if decode is None:
        return NO_TENANT
    try:
        headers = decode(payload).headers
    except Exception:  # noqa: BLE001 - an undecodable message is dead-lettered by the worker
        return NO_TENANT
    if headers:
        g = headers.get(TENANT_HEADER, headers.get(OLD_TENANT_HEADER))
        if isinstance(g, str):
            return g
    return NO_TENANT


def delayed_member(tenant: str, field: bytes, priority: int, payload: bytes) -> bytes:
    """A delayed-set member that carries its tenant: ``g``, field, priority, ``<n>:<tenant>``, payload."""
    g = tenant.encode()
    return b"g" + field + b"%d" % priority + b"%d:" % len(g) + g + payload


def split_member(member: bytes) -> tuple[str | None, bytes]:
    """(tenant or None, field + priority + payload) of a delayed-set member."""
    if member[:1] != b"g":
        return None, member
    colon = member.index(b":", 3)
    n = int(member[3:colon])
    return member[colon + 1 : colon + 1 + n].decode(errors="replace"), member[1:3] + member[colon + 1 + n :]


# --- commands ------------------------------------------------------------------------------------


def publish_commands(fq: FairQueue, items: list[tuple], field: bytes) -> list[bytes]:
    """Packed commands sending (priority, due, payload) items to fair queue ``fq``:
    ready ones through the gate (fair_publish.lua, 500 per call), delayed ones to the
    delayed set with their tenant (they pass the gate when due)."""
    ready: list[bytes] = []
    delayed: list = []
    for priority, due, payload in items:
        tenant = tenant_of(field, payload).encode()
        if due is None:
            ready.append(tenant)
            ready.append(field + b"%d" % priority + payload)
        else:
            delayed.append((due, delayed_member(tenant.decode(), field, priority, payload)))
    cmds = []
    sha = SCRIPTS.fair_publish.sha_bytes
    count_key = fq.key("gc")
    for i in range(0, len(ready), 1000):
        cmds.append(pack_command((b"EVALSHA", sha, 1, count_key, *fq.gate_args, *ready[i : i + 1000])))
    if delayed:
        cmds.append(delay_command(fq.key("delayed"), delayed))
    return cmds


def ack_gates(broker, queue_keys: list) -> dict:
    """stream key -> gate args, for the streams of the fair queues among ``queue_keys``."""
    fair = broker.fair
    return {k: fair[qk.name].gate_args for qk in queue_keys if qk.name in fair for k in qk.fetch_order}


# --- maintenance ------------------------------------------------------------------------------------


def promote_command(fq: FairQueue, limit: int = 1000) -> bytes:
    """fair_promote.lua, packed (due delayed messages through the gate, wake rate-limited
    tenants, fill the window)."""
    return pack_command((b"EVALSHA", SCRIPTS.fair_promote.sha_bytes, 2, fq.key("delayed"), fq.key("dlq"),
                         *fq.gate_args, limit, fq.name))


def heal(client, fq: FairQueue, holder: str, lock_ms: int) -> int:
    """Recount the gate from the streams and repair it (one worker per interval).
    Returns the number of tenants whose count was wrong; -1: another worker has the
    lock; -2: the streams were too long to scan this time."""
    return SCRIPTS.fair_heal(client, [fq.key("gheal")], [*fq.gate_args, holder, lock_ms, HEAL_MAX_ENTRIES])


def purge_backlogs(client, fq: FairQueue) -> int:
    """Drop every tenant's backlog (``fastq purge``); returns how many messages were dropped."""
    dropped = 0
    tenants = client.smembers(fq.key("gk"))
    pipe = client.pipeline(transaction=True)
    for g in tenants:
        pipe.llen(f"{fq.base}:gb:{g.decode()}")
    lengths = pipe.execute() if tenants else []
    dropped = sum(n for n in lengths if isinstance(n, int))
    pipe = client.pipeline(transaction=True)
    for g in tenants:
        pipe.delete(f"{fq.base}:gb:{g.decode()}")
    pipe.delete(fq.key("gk"), fq.key("gbn"), fq.key("gr"), fq.key("gs"), fq.key("gheal"))
    pipe.execute()
    return dropped


def backlog_size(client, fq: FairQueue) -> int:
    """Messages waiting in the backlogs of all tenants."""
    return int(client.get(fq.key("gbn")) or 0)


def fair_ack_command(gate_args: tuple, stream: str, ids: list) -> bytes:
    """The ack of ``ids`` on a fair queue's stream (fair_ack.lua): also frees their tenants' running slots."""
    return pack_command((b"EVALSHA", SCRIPTS.fair_ack.sha_bytes, 1, stream, CONSUMER_GROUP, *gate_args, *ids))


def tenant_counts(client, fq: FairQueue, streams: list[str]) -> dict[str, dict]:
    """Per tenant: its messages in ``streams`` (the queue's) and in its backlog."""
    active: dict[str, int] = {}
    for stream in streams:
        start = "-"
        while True:
            rows = client.xrange(stream, start, "+", count=1000)
            for _, fields in rows:
                g = fields.get(b"g")
                if g is not None:
                    active[g.decode(errors="replace")] = active.get(g.decode(errors="replace"), 0) + 1
            if len(rows) < 1000:
                break
            start = "(" + rows[-1][0].decode()
    names = {g.decode() for g in client.smembers(fq.key("gk"))} | set(active)
    pipe = client.pipeline(transaction=False)
    ordered = sorted(names)
    for g in ordered:
        pipe.llen(f"{fq.base}:gb:{g}")
    return {g: {"active": active.get(g, 0), "backlog": int(n)} for g, n in zip(ordered, pipe.execute())}


def queues_with_gates(client, key_prefix: str, queues: list[str]) -> list[str]:
    """Those of ``queues`` whose gate keys exist (a producer used them as fair queues)."""
    pipe = client.pipeline(transaction=False)
    for q in queues:
        pipe.exists(f"{key_prefix}{{{q}}}:gbn")
    return [q for q, used in zip(queues, pipe.execute()) if used]
