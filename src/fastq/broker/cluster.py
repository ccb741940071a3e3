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

Layer: broker; imports base modules and ``fastq.broker``, never the API, the worker or the apps.
"""

from __future__ import annotations

from collections import deque

from redis.exceptions import ResponseError

from .._speedups import pack_command, split_packed
from .channel import Channel

_REDIRECTS = ("MOVED", "ASK", "TRYAGAIN", "CLUSTERDOWN", "READONLY", "MASTERDOWN", "LOADING")


def is_redirect(reply) -> bool:
    """An error reply meaning "not here, or not now": the command did not run; send it again."""
    return isinstance(reply, ResponseError) and str(reply).split(" ", 1)[0] in _REDIRECTS


class ClusterChannel:
    """``Channel``'s interface over every master of a cluster."""

    def __init__(self, cluster) -> None:
        self.cluster = cluster  #: a RedisCluster client: its slot table and node connections
        self._channels: dict[str, Channel] = {}
        self._owed: deque[str] = deque()  #: node name per command whose reply is unread
        self._plans: dict[bytes, tuple] = {}  #: routes of commands sent often (valid until a refresh)
        self._slot_nodes: dict[int, object] = {}  #: the slot table, as looked up so far (until a refresh)

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
        self._forget_routes()
        try:  # whoever uses this channel next must not trust the old slot table
            self.refresh()
        except Exception:  # noqa: BLE001 - the cluster is unreachable: the next send fails and says so
            pass

    def refresh(self) -> None:
        """Read the slot table again (after MOVED); the node connections stay."""
        self._forget_routes()
        self.cluster.nodes_manager.initialize()

    def _forget_routes(self) -> None:
        self._plans.clear()
        self._slot_nodes.clear()

    def probes_for(self, data: bytes) -> list[bytes]:
        """One harmless keyed command (EXISTS) per master the packed commands go to,
        so a command sent right after each reaches that master (see ``_node_for``)."""
        probes: dict[str, bytes] = {}
        for _, _, key, slot in split_packed(data):
            if key is not None:
                probes.setdefault(self._node_of_slot(slot).name, pack_command((b"EXISTS", key)))
        return list(probes.values()) or [pack_command((b"PING",))]

    def _default_node(self):
        return self.cluster.get_default_node()

    def _node_of_slot(self, slot: int):
        node = self._slot_nodes.get(slot)
        if node is None:
            node = self._slot_nodes[slot] = self.cluster.nodes_manager.get_node_from_slot(slot)
        return node

    def _node_for(self, slot: int, previous):
        """WAIT asks the node the command before it went to; keyless commands go anywhere."""
        if slot >= 0:  # KEYLESS and WAIT_SLOT are negative
            return self._node_of_slot(slot)
        return previous or self._default_node()

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
        """(node name per command, [(node, the bytes it gets)]) for packed commands.
        Each node gets its commands as slices of ``data``: runs of neighbours going
        to the same node stay one slice (on a one-master cluster, all of ``data``)."""
        runs: dict[str, list[list[int]]] = {}  # node name -> [[start, end], ...]
        nodes = {}
        owed = []
        previous = None
        for start, end, _, slot in split_packed(data):
            node = self._node_for(slot, previous)
            name = node.name
            if node is not previous:
                nodes[name] = node
                runs.setdefault(name, []).append([start, end])
            else:
                runs[name][-1][1] = end
            previous = node
            owed.append(name)
        parts = []
        for name, spans in runs.items():
            payload = data if len(spans) == 1 and spans[0] == [0, len(data)] else b"".join(data[s:e] for s, e in spans)
            parts.append((nodes[name], payload))
        return owed, parts

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
