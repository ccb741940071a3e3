"""Worker names: ``-n`` expansion, default names, and whether a name's holder is alive.

A name is held through the worker's registry key (``fastq:worker:<name>``, its
heartbeat, rewritten every 2 s with a 10 s TTL). A starting worker claims it with
a compare-and-set (claim_name.lua), so two workers starting at once cannot both
take it. The holder of a name is judged like this:

- no heartbeat, or one older than 2.5 heartbeat intervals: the name is free;
- a heartbeat of a process this host can see (same kernel boot id and same pid
  namespace): alive when that pid runs and started at the same clock tick
  (``/proc/<pid>/stat``), dead otherwise (gone, a zombie, or a new process that
  reuses the pid). A dead holder's name is taken at once, and what its consumers
  held is handed back at once (it is known dead);
- a heartbeat of a process this host cannot see (another host, or another
  container: a restarted container has a new pid namespace, even though its
  worker is pid 1 again): the new worker watches the heartbeat for up to 2.5
  intervals. A rewrite means it is alive (refused); silence means it is gone,
  and the name is taken. Its messages are then left to the lease (the reaper):
  silence does not prove that the process is dead.

Layer: worker; imports base, broker and api, never the CLI or the dashboard.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Iterator

#: Default names: fastq@<host>, then fastq-2@<host>, fastq-3@<host>, ...
DEFAULT_NAME = "fastq"
#: How many default names a host may use at once.
MAX_DEFAULT_NAMES = 100

_ESCAPE = re.compile(r"%(.?)")


class NameTaken(ValueError):
    """The name is held by a live worker (``who``: "pid N on host")."""

    def __init__(self, name: str, who: str) -> None:
        super().__init__(f"another live worker is already named {name!r} ({who}); "
                         "give this one a different -n/--hostname")
        self.name = name
        self.who = who


def expand(name: str, host: str | None = None) -> str:
    """Celery's node-name expansion: ``%h`` host name, ``%n`` the host name up to
    the first dot, ``%d`` the domain after it, ``%i`` the pool process index (0:
    the worker's main process, which is what a name is expanded in), ``%I`` the
    same with a separator (empty in the main process), ``%%`` a percent sign. A
    name without ``@`` gets ``@<host name>``, so ``-n worker1`` differs per host."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError("-n/--hostname: give a worker name, e.g. worker1@%h")
    host = host or socket.gethostname()
    short, _, domain = host.partition(".")
    table = {"h": host, "n": short, "d": domain, "i": "0", "I": "", "%": "%"}
    if "@" not in name:
        name = f"{name}@%h"

    def sub(m: re.Match) -> str:
        if m.group(1) not in table:
            raise ValueError(f"-n/--hostname {name!r}: unknown %{m.group(1)} (use %h, %n, %d, %i, %I or %%)")
        return table[m.group(1)]

    out = _ESCAPE.sub(sub, name)
    if "/" in out or any(ch.isspace() or not ch.isprintable() for ch in out):
        # "/" separates a worker's name from its consumers' (<name>/<pid>.<n>)
        raise ValueError(f"-n/--hostname {out!r}: a worker name cannot contain '/', spaces or control characters")
    return out


def default_names(host: str | None = None) -> Iterator[str]:
    host = host or socket.gethostname()
    yield f"{DEFAULT_NAME}@{host}"
    for i in range(2, MAX_DEFAULT_NAMES + 1):
        yield f"{DEFAULT_NAME}-{i}@{host}"


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, start time in clock ticks since boot) of a process, None when there is none."""
    raw = _read(f"/proc/{pid}/stat")
    if not raw:
        return None
    fields = raw.rsplit(")", 1)[-1].split()  # the command name may hold spaces and ")"
    try:
        return fields[0], int(fields[19])
    except (IndexError, ValueError):
        return None


_identity: tuple[int, dict] | None = None


def process_identity() -> dict:
    """Who this process is, in the heartbeat: host name, kernel boot id, pid
    namespace, pid, and start time in clock ticks since boot. Boot id plus pid
    namespace say whether another process can look the pid up; pid plus start time
    name one process for as long as the kernel runs."""
    global _identity
    if _identity is None or _identity[0] != os.getpid():
        try:
            pidns = os.readlink("/proc/self/ns/pid")
            if os.readlink("/proc/self") != str(os.getpid()):
                pidns = None  # /proc is another pid namespace's: its pids are not ours to look up
        except OSError:
            pidns = None
        st = _stat(os.getpid())
        _identity = (os.getpid(), {"host": socket.gethostname(), "boot": _read("/proc/sys/kernel/random/boot_id"),
                                   "pidns": pidns, "pid": os.getpid(), "start": st[1] if st else None})
    return _identity[1]


def holder_alive(info: dict) -> bool | None:
    """Whether the process that wrote heartbeat ``info`` runs: True or False when
    this process can see it (same boot and pid namespace), None when it cannot."""
    theirs = info.get("proc") if isinstance(info, dict) else None
    mine = process_identity()
    if not isinstance(theirs, dict) or mine["boot"] is None or mine["pidns"] is None or mine["start"] is None:
        return None
    if theirs.get("boot") != mine["boot"] or theirs.get("pidns") != mine["pidns"]:
        return None
    pid, start = theirs.get("pid"), theirs.get("start")
    if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0 or not isinstance(start, int):
        return None
    now = _stat(pid)
    if now is None or now[0] in ("Z", "X"):  # gone, or a zombie its parent has not reaped yet
        return False
    return now[1] == start


__all__ = ["NameTaken", "default_names", "expand", "holder_alive", "process_identity"]
