"""Lua scripts: loaded once from ``lua/*.lua`` and called by SHA.

Layer: broker; imports base modules and ``fastq.broker``, never the API, the worker or the apps.
"""

from __future__ import annotations

import hashlib
from importlib import resources

from redis.exceptions import NoScriptError

from .._speedups import pack_command


class Script:
    """One Lua script. ``sha`` is computed locally, so calling by SHA needs no
    round trip; a NOSCRIPT reply (Redis restarted, or a fresh server) loads it."""

    __slots__ = ("name", "sha", "sha_bytes", "source")

    def __init__(self, name: str, prelude: str | None = None) -> None:
        self.name = name
        lua = resources.files(__package__).joinpath("lua")
        self.source = lua.joinpath(f"{name}.lua").read_text()
        if prelude:  # shared Lua functions (gate.lua) go in front of the script
            self.source = lua.joinpath(f"{prelude}.lua").read_text() + self.source
        self.sha = hashlib.sha1(self.source.encode()).hexdigest()
        self.sha_bytes = self.sha.encode()

    def __call__(self, client, keys, args):
        """Run through a redis-py client or pipeline (EVALSHA, loading on NOSCRIPT)."""

        try:
            return client.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            client.script_load(self.source)
            return client.evalsha(self.sha, len(keys), *keys, *args)


class Scripts:
    """The broker's scripts, by name."""

    NAMES = ("fetch", "ack", "publish_many", "rate_claim", "release", "renew", "reap", "promote", "bury", "retry", "requeue_dead",
             "beat_lock", "beat_release", "beat_send", "chord_done", "chord_seal", "chord_reopen",
             "unique_publish", "unique_release", "debounce",
             "fair_publish", "fair_ack", "fair_promote", "fair_requeue", "fair_heal", "delay",
             "claim_name")
    #: Scripts that start with a shared Lua file (gate.lua: the fair-queue gate, fastq.fairness,
    #: and g_due: due times on Redis's clock).
    PRELUDES = {name: "gate" for name in (
        "delay", "unique_publish", "debounce", "beat_send", "promote", "release", "reap", "bury", "retry",
        "fair_publish", "fair_ack", "fair_promote", "fair_requeue", "fair_heal")}

    def __init__(self) -> None:
        for name in self.NAMES:
            setattr(self, name, Script(name, self.PRELUDES.get(name)))

    def all(self) -> list[Script]:
        return [getattr(self, n) for n in self.NAMES]

    def load_all(self, client) -> None:
        for s in self.all():
            client.script_load(s.source)

    def load_commands(self) -> list[bytes]:
        """``load_all`` as packed SCRIPT LOAD commands (the asyncio pipeline sends them)."""
        return [pack_command((b"SCRIPT", b"LOAD", s.source)) for s in self.all()]


SCRIPTS = Scripts()
#: The gate arguments (see fairness.FairQueue.gate_args) of a plain queue, for
#: the scripts that serve both kinds of queue: release, reap, bury, retry.
NO_GATE = (b"",) * 5
