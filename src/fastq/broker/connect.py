"""Broker URLs -> redis-py clients, for one server, a Redis Cluster, or Sentinel.

    redis://[user:password@]host:6379/0           one server (rediss:// for TLS)
    redis+cluster://[user:password@]h1:7000,h2:7001[/0][?options]
                                                   Redis Cluster (rediss+cluster:// for TLS);
                                                   any reachable node is enough to start
    sentinel://[:password@]h1:26379;sentinel://h2:26379/0?master=mymaster
                                                   the master Sentinel names ``mymaster``;
                                                   ``sentinel_password=`` for the sentinels

Everything else (timeouts, RESP2) is the same for every kind, so the rest of
fastq never asks which one it talks to, except the worker's blocking fetch and
the raw channel, which route by slot on a cluster (``cluster.py``).

Layer: broker; imports base modules and ``fastq.broker``, never the API, the worker or the apps.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, unquote

import redis
import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode as AsyncClusterNode
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.cluster import ClusterNode, RedisCluster
from redis.exceptions import AuthenticationError, AuthorizationError, RedisClusterException, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.sentinel import Sentinel

from ..exceptions import ImproperlyConfigured

#: Refused credentials: ConnectionError subclasses in redis-py, but no outage (not retried).
AUTH_ERRORS = (AuthenticationError, AuthorizationError)

#: An error reply (the server refused one command); channels return or raise it.
#: Re-exported so the code above the broker need not import the client library.
ReplyError = ResponseError

#: Errors that mean "Redis could not be reached"; worth retrying.
#: On a cluster, RedisClusterException is what "no node answers" raises while a failover is under way.
CONNECTION_ERRORS = (RedisConnectionError, RedisTimeoutError, ConnectionError, OSError, RedisClusterException)

# The password runs to the last "@" of the URL's authority: a raw "@" in it (not
# percent-encoded, as users write them) must not leave its tail in the open.
_USERINFO = re.compile(r"(?P<scheme>[a-z+]+://)(?P<user>[^:@/;]*):(?P<password>[^/;]*)@")

#: URL query options that are not connection keyword arguments.
_FASTQ_OPTIONS = {"master", "sentinel_password", "sentinel_username"}


def safe_url(url: str) -> str:
    """The URL with every password replaced by ``********`` (for logs, banners and
    reports; Celery's mask)."""
    return _USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:********@", url)


def describe_error(exc: BaseException, url: str) -> str | None:
    """One line for a Redis error a user can cause (server down, wrong password,
    no password, out of memory), naming the server (password hidden); None for
    other errors."""
    cause = exc.__cause__ if isinstance(exc, ConnectionError) and exc.__cause__ else exc
    text = " ".join(str(cause).split())
    where = safe_url(url)
    if isinstance(cause, redis.AuthenticationError) or (
            isinstance(cause, redis.ResponseError) and text.startswith(("NOAUTH", "WRONGPASS", "NOPERM"))):
        return f"Redis at {where} refused the login ({text}): check the password in the URL"
    if isinstance(cause, redis.exceptions.OutOfMemoryError):
        return f"Redis at {where} is out of memory and refused a write ({text})"
    if isinstance(cause, (redis.ConnectionError, redis.TimeoutError, RedisClusterException, OSError)):
        return f"Redis at {where} is unreachable: {text}"
    return None


@dataclass
class BrokerTarget:
    """A parsed broker URL."""

    kind: str  #: "redis", "cluster" or "sentinel"
    url: str
    hosts: list[tuple[str, int]] = field(default_factory=list)
    db: int = 0
    username: str | None = None
    password: str | None = None
    ssl: bool = False
    options: dict[str, str] = field(default_factory=dict)

    @property
    def is_cluster(self) -> bool:
        return self.kind == "cluster"


def parse_url(url: str) -> BrokerTarget:
    """Parse a broker URL; a malformed one raises ImproperlyConfigured naming the problem."""
    if not isinstance(url, str) or "://" not in url:
        raise ImproperlyConfigured(f"broker URL {safe_url(str(url))!r} has no scheme (redis://host:6379/0)")
    scheme = url.split("://", 1)[0].lower()
    if scheme in ("redis", "rediss", "unix"):
        return BrokerTarget("redis", url)
    if scheme in ("redis+cluster", "rediss+cluster"):
        return _parse_multi_host(url, "cluster", ssl=scheme.startswith("rediss"))
    if scheme == "sentinel":
        return _parse_multi_host(url, "sentinel", ssl=False)
    raise ImproperlyConfigured(
        f"broker URL {safe_url(url)!r}: unknown scheme {scheme!r} "
        "(use redis://, rediss://, unix://, redis+cluster://, rediss+cluster:// or sentinel://)"
    )


def _parse_multi_host(url: str, kind: str, ssl: bool) -> BrokerTarget:
    # Sentinel lists hosts as "sentinel://h1:p1;sentinel://h2:p2/0?...", a cluster as "h1:p1,h2:p2".
    segments = url.split(";") if kind == "sentinel" else [url]
    target = BrokerTarget(kind, url, ssl=ssl)
    tail = ""
    for seg in segments:
        if "://" not in seg:
            raise ImproperlyConfigured(f"broker URL {safe_url(url)!r}: {seg!r} lacks a scheme")
        rest = seg.split("://", 1)[1]
        netloc, sep, after = _split_netloc(rest)
        if sep:
            tail = sep + after
        if "@" in netloc:
            userinfo, netloc = netloc.rsplit("@", 1)
            user, _, password = userinfo.partition(":")
            target.username = unquote(user) or target.username
            target.password = unquote(password) or target.password
        for hp in filter(None, netloc.split(",")):
            target.hosts.append(_host_port(hp, url, 26379 if kind == "sentinel" else 6379))
    if not target.hosts:
        raise ImproperlyConfigured(f"broker URL {safe_url(url)!r} names no host")
    path, _, query = tail.partition("?")
    path = path.strip("/")
    if path:
        if not path.isdigit():
            raise ImproperlyConfigured(f"broker URL {safe_url(url)!r}: database {path!r} is not a number")
        target.db = int(path)
    target.options = dict(parse_qsl(query))
    if kind == "cluster" and target.db != 0:
        raise ImproperlyConfigured(f"broker URL {safe_url(url)!r}: Redis Cluster has only database 0")
    if kind == "sentinel" and not target.options.get("master"):
        raise ImproperlyConfigured(
            f"broker URL {safe_url(url)!r}: name the master Sentinel monitors (?master=mymaster)"
        )
    return target


def _split_netloc(rest: str) -> tuple[str, str, str]:
    for i, ch in enumerate(rest):
        if ch in "/?":
            return rest[:i], ch, rest[i + 1 :]
    return rest, "", ""


def _host_port(hp: str, url: str, default_port: int) -> tuple[str, int]:
    host, _, port = hp.rpartition(":") if ":" in hp else (hp, "", str(default_port))
    if not port.isdigit():
        raise ImproperlyConfigured(f"broker URL {safe_url(url)!r}: bad port in {hp!r}")
    return host.strip("[]"), int(port)


def _connection_options(target: BrokerTarget) -> dict:
    opts = {k: v for k, v in target.options.items() if k not in _FASTQ_OPTIONS}
    # Query values are strings; the few numeric/boolean ones redis-py needs typed.
    for k, v in list(opts.items()):
        if k.endswith("_timeout"):
            opts[k] = float(v)
        elif v.lower() in ("true", "false"):
            opts[k] = v.lower() == "true"
    if target.ssl:
        opts["ssl"] = True
    return opts


def make_client(target: BrokerTarget, **kwargs):
    """A redis-py client (its own connection pool) for the target."""
    if target.kind == "redis":
        return redis.Redis.from_url(target.url, **kwargs)
    auth = {"username": target.username, "password": target.password}
    if target.kind == "cluster":
        kwargs.pop("db", None)
        return RedisCluster(
            startup_nodes=[ClusterNode(h, p) for h, p in target.hosts],
            **auth, **_connection_options(target), **kwargs,
        )
    sentinel_kwargs = {
        "password": target.options.get("sentinel_password"),
        "username": target.options.get("sentinel_username"),
        "socket_timeout": kwargs.get("socket_connect_timeout", 5.0),
        "socket_connect_timeout": kwargs.get("socket_connect_timeout", 5.0),
    }
    sentinel = Sentinel(target.hosts, sentinel_kwargs=sentinel_kwargs)
    return sentinel.master_for(target.options["master"], db=target.db, **auth,
                               **_connection_options(target), **kwargs)


def make_async_client(target: BrokerTarget, **kwargs):
    """The ``redis.asyncio`` counterpart of ``make_client`` (for the asyncio sends and waits)."""

    kwargs.pop("health_check_interval", None)
    if target.kind == "redis":
        return aioredis.Redis.from_url(target.url, **kwargs)
    auth = {"username": target.username, "password": target.password}
    if target.kind == "cluster":
        return AsyncRedisCluster(startup_nodes=[AsyncClusterNode(h, p) for h, p in target.hosts],
                                 **auth, **_connection_options(target), **kwargs)
    sentinel = AsyncSentinel(target.hosts, sentinel_kwargs={
        "password": target.options.get("sentinel_password"),
        "username": target.options.get("sentinel_username"),
        "socket_timeout": kwargs.get("socket_connect_timeout", 5.0),
    })
    return sentinel.master_for(target.options["master"], db=target.db, **auth, **_connection_options(target), **kwargs)
