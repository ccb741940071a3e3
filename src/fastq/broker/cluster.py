"""The raw channel on a Redis Cluster: packed commands routed by slot.

fastq's hot paths write packed RESP commands (``pack_command``) and read the
replies in order. On a cluster each command has to go to the master that owns
its key's slot, so ``ClusterChannel`` splits what it is given into commands,
sends each to its node's own raw ``Channel``, and remembers which node owes the
next reply: reading returns replies in exactly the order the commands were
sent, as on one server, so callers need not know they talk to a cluster.

A redirection reply (MOVED, ASK: the slot moved, e.g. after a failover) means
the command did not run. It is returned in place like any error reply;
``is_redirect`` tells callers to treat it like a lost connection: drop the
channel (a new one reads the new slot table) and send again.
"""

from __future__ import annotations

from collections import deque

from redis.crc import key_slot
from redis.exceptions import ResponseError

from .channel import Channel

_REDIRECTS = ("MOVED", "ASK", "TRYAGAIN", "CLUSTERDOWN", "READONLY", "MASTERDOWN", "LOADING")


def is_redirect(reply) -> bool:
    """An error reply meaning "not here, or not now": the command did not run; send it again."""
    return isinstance(reply, ResponseError) and str(reply).split(" ", 1)[0] in _REDIRECTS


def split_commands(data: bytes) -> list[list[bytes]]:
    """Parse packed RESP commands (arrays of bulk strings) back into argument lists."""
    out = []
    pos, end = 0, len(data)
    while pos < end:
        if data[pos] != 0x2A:  # '*'
            raise ValueError("not a packed command")
        nl = data.index(b"\r\n", pos)
        argc = int(data[pos + 1 : nl])
        pos = nl + 2
        args = []
        for _ in range(argc):
            nl = data.index(b"\r\n", pos)
            size = int(data[pos + 1 : nl])
            start = nl + 2
            args.append(data[start : start + size])
            pos = start + size + 2
        out.append(args)
    return out


def command_key(args: list[bytes]) -> bytes | None:
    """The key that decides a command's slot (None: any node will do)."""
    name = args[0].upper()
    if name in (b"EVALSHA", b"EVAL", b"EVALSHA_RO", b"EVAL_RO"):
        return args[3] if int(args[2]) > 0 else None
    if name in (b"XREADGROUP", b"XREAD"):
        upper = [a.upper() for a in args]
        return args[upper.index(b"STREAMS") + 1]
    if name in (b"PUBLISH", b"PING", b"WAIT", b"SCRIPT", b"INFO"):
        return None
    return args[1] if len(args) > 1 else None


def _pack(args: list[bytes]) -> bytes:
    parts = [b"*%d\r\n" % len(args)]
    for a in args:
        parts.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(parts)


class ClusterChannel:
    """``Channel``'s interface over every master of a cluster."""

    def __init__(self, cluster) -> None:
        self.cluster = cluster  #: a RedisCluster client: its slot table and node connections
        self._channels: dict[str, Channel] = {}
        self._owed: deque[str] = deque()  #: node name per command whose reply is unread
        self._plans: dict[bytes, tuple] = {}  #: routes of commands sent often (valid until a refresh)

    def connect(self) -> None:
        self._default_node()

    @property
    def connected(self) -> bool:
        return bool(self._channels)

    def close(self) -> None:
        for ch in self._channels.values():
            ch.close()
        self._channels.clear()
        self._owed.clear()
        self._plans.clear()
        try:  # whoever uses this channel next must not trust the old slot table
            self.refresh()
        except Exception:  # noqa: BLE001 - the cluster is unreachable: the next send fails and says so
            pass

    def refresh(self) -> None:
        """Read the slot table again (after MOVED); the node connections stay."""
        self._plans.clear()
        self.cluster.nodes_manager.initialize()

    def probes_for(self, data: bytes) -> list[bytes]:
        """One harmless keyed command (EXISTS) per master the packed commands go to,
        so a command sent right after each reaches that master (see ``_node_for``)."""
        probes: dict[str, bytes] = {}
        for args in split_commands(data):
            key = command_key(args)
            if key is not None:
                node = self.cluster.nodes_manager.get_node_from_slot(key_slot(key))
                probes.setdefault(node.name, _pack([b"EXISTS", key]))
        return list(probes.values()) or [_pack([b"PING"])]

    def _default_node(self):
        return self.cluster.get_default_node()

    def _node_for(self, args: list[bytes], previous):
        """WAIT asks the node the command before it went to; keyless commands go anywhere."""
        if args[0].upper() == b"WAIT" and previous is not None:
            return previous
        key = command_key(args)
        if key is None:
            return previous or self._default_node()
        return self.cluster.nodes_manager.get_node_from_slot(key_slot(key))

    def _channel(self, node) -> Channel:
        ch = self._channels.get(node.name)
        if ch is None:
            ch = Channel(node.redis_connection.connection_pool.make_connection())
            ch.connect()
            self._channels[node.name] = ch
        return ch

    def send(self, data: bytes) -> None:
        plan = self._plans.get(data)
        if plan is None:
            plan = self._plan(data)
            if len(data) <= 4096 and len(self._plans) < 256:
                # A consumer sends the same fetch commands over and over: route them once.
                self._plans[data] = plan
        owed, parts = plan
        self._owed.extend(owed)
        for node, payload in parts:
            self._channel(node).send(payload)

    def _plan(self, data: bytes) -> tuple[list[str], list]:
        """(node name per command, [(node, the bytes it gets)]) for packed commands."""
        by_node: dict[str, list[bytes]] = {}
        nodes = {}
        owed = []
        previous = None
        for args in split_commands(data):
            node = self._node_for(args, previous)
            previous = node
            nodes[node.name] = node
            by_node.setdefault(node.name, []).append(_pack(args))
            owed.append(node.name)
        return owed, [(nodes[name], b"".join(cmds)) for name, cmds in by_node.items()]

    def read_one(self):
        """The next reply; an error reply is returned, not raised."""
        return self._channels[self._owed.popleft()].read_one()

    def read(self):
        """The next reply; an error reply is raised."""
        reply = self.read_one()
        if isinstance(reply, ResponseError):
            raise reply
        return reply

    def read_many(self, n: int) -> list:
        nxt = self.read_one
        return [nxt() for _ in range(n)]
