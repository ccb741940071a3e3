"""Private Redis Clusters and Sentinel setups on loopback ports, for the scale-out tests.

``LocalCluster(masters=3, replicas=1)`` starts 6 ``redis-server --cluster-enabled``
processes and joins them with ``redis-cli --cluster create``; ``LocalSentinel()``
starts a master, a replica and three sentinels (``redis-server --sentinel``).
Both use short failure timeouts (1 s) so failovers happen within a test, and
clean up their processes and files on ``close()``.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import redis

from conftest import free_port, wait_for

_handed_out: set[int] = set()


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _cluster_port() -> int:
    """A free port whose cluster bus port (+10000) is free too, both below the
    kernel's ephemeral range (a client socket of the busy suite cannot take
    them between this check and the server's bind) and neither one handed out
    before (so one node's port is never another node's bus port)."""
    import random
    import socket

    top = min(_ephemeral_low(), 65536) - 10000
    while True:
        port = random.randrange(10000, top)
        if {port, port + 10000} & _handed_out:
            continue
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 10000))
        except OSError:
            continue
        _handed_out.update((port, port + 10000))
        return port


def _start(args: list[str], workdir: Path, name: str) -> subprocess.Popen:
    log = open(workdir / f"{name}.log", "wb")
    return subprocess.Popen(["redis-server", *args], cwd=workdir, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)


class _Server:
    def __init__(self, port: int, proc: subprocess.Popen, args: list[str] | None = None,
                 workdir: Path | None = None) -> None:
        self.port = port
        self.proc = proc
        self.args = args
        self.workdir = workdir

    def restart(self) -> None:
        """Start the killed server again with its old configuration (a cluster node
        rejoins, as a replica of whoever took over its slots)."""
        self.proc = _start(self.args, self.workdir, f"restarted-{self.port}")
        wait_for(lambda: _pings(self.port), 20, message=f"redis-server on {self.port} to restart")

    @property
    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=5)

    def kill(self) -> None:
        """SIGKILL: a host dying, with whatever was not yet replicated."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def alive(self) -> bool:
        return self.proc.poll() is None


class LocalCluster:
    """A Redis Cluster of ``masters`` masters with ``replicas`` replicas each."""

    def __init__(self, masters: int = 3, replicas: int = 1) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="fastq-cluster-"))
        self.servers: list[_Server] = []
        try:
            self._start(masters, replicas)
        except BaseException:
            self.close()  # no stray servers when the cluster does not come up
            raise

    def _start(self, masters: int, replicas: int) -> None:
        for i in range(masters * (1 + replicas)):
            self.servers.append(self._start_node(i))
        for i, s in enumerate(self.servers):
            for _ in range(3):  # a node that could not bind its ports (taken meanwhile) gets new ones
                wait_for(lambda s=s: _pings(s.port) or s.proc.poll() is not None, 20,
                         message=f"redis-server on {s.port}")
                if s.proc.poll() is None:
                    break
                s = self.servers[i] = self._start_node(i)
            wait_for(lambda s=s: _pings(s.port), 20, message=f"redis-server on {s.port}")
        if masters == 1 and replicas == 0:
            # `redis-cli --cluster create` wants three masters: assign the slots by hand.
            c = self.servers[0].client
            c.execute_command("CLUSTER", "ADDSLOTSRANGE", 0, 16383)
        else:
            subprocess.run(["redis-cli", "--cluster", "create", *[f"127.0.0.1:{s.port}" for s in self.servers],
                            "--cluster-replicas", str(replicas), "--cluster-yes"],
                           check=True, capture_output=True, timeout=60)
        wait_for(self._healthy, 60, interval=0.2, message="the cluster to be ok")

    def _start_node(self, i: int) -> _Server:
        port = _cluster_port()
        args = ["--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
                "--cluster-config-file", f"nodes-{port}.conf", "--cluster-node-timeout", "1000",
                "--save", "", "--appendonly", "no", "--dir", str(self.dir)]
        return _Server(port, _start(args, self.dir, f"node{i}-{port}"), args, self.dir)

    def _healthy(self) -> bool:
        try:
            for s in self.servers:
                if s.alive() and b"cluster_state:ok" not in s.client.execute_command("CLUSTER", "INFO"):
                    return False
            # Every replica attached and in sync: a failover then loses nothing acknowledged.
            return all(self.master_of(s) is None or _replica_synced(s) for s in self.servers if s.alive())
        except redis.RedisError:
            return False

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{s.port}" for s in self.servers[:3])

    def master_of(self, server: _Server) -> int | None:
        """The port of ``server``'s master, or None when it is a master."""
        info = server.client.info("replication")
        return None if info["role"] == "master" else int(info["master_port"])

    def masters(self) -> list[_Server]:
        return [s for s in self.servers if s.alive() and self.master_of(s) is None]

    def server_for_key(self, key: str) -> _Server:
        """The server that masters ``key``'s slot now."""
        from redis.crc import key_slot

        slot = key_slot(key.encode())
        for start, end, master, *_replicas in self.masters()[0].client.execute_command("CLUSTER", "SLOTS"):
            if start <= slot <= end:
                return next(x for x in self.servers if x.port == int(master[1]))
        raise AssertionError(f"no master serves slot {slot}")

    def wait_failover(self, dead: _Server, key: str, timeout: float = 60.0) -> None:
        """Until another server masters ``key``'s slot (the dead master's replica was
        promoted) and the cluster is ok. Only then may the dead node come back: a master
        restarted empty before its replica took over would wipe the replica on resync."""
        def promoted():
            try:
                live = [s for s in self.servers if s.alive()]
                return (self.server_for_key(key) is not dead and
                        all(b"cluster_state:ok" in s.client.execute_command("CLUSTER", "INFO") for s in live))
            except (redis.RedisError, StopIteration, AssertionError):
                return False
        wait_for(promoted, timeout, interval=0.2, message=f"failover of the master on {dead.port}")

    def close(self) -> None:
        for s in self.servers:
            s.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


class LocalSentinel:
    """A master, one replica and three sentinels watching it as ``mymaster``."""

    MASTER = "mymaster"

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="fastq-sentinel-"))
        self.sentinels: list[_Server] = []
        self.master = self.replica = None
        try:
            self._start()
        except BaseException:
            self.close()  # no stray servers when the setup does not come up
            raise

    def _start(self) -> None:
        common = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(self.dir)]
        mport, rport = free_port(), free_port()
        self.master = _Server(mport, _start(["--port", str(mport), *common], self.dir, "master"))
        wait_for(lambda: _pings(mport), 20, message="the master")
        self.replica = _Server(rport, _start(["--port", str(rport), "--replicaof", "127.0.0.1", str(mport),
                                              *common], self.dir, "replica"))
        wait_for(lambda: _pings(rport) and _replica_synced(self.replica), 30, message="the replica to sync")
        for i in range(3):
            port = free_port()
            conf = self.dir / f"sentinel{i}.conf"
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {self.dir}\n"
                f"sentinel monitor {self.MASTER} 127.0.0.1 {mport} 2\n"
                f"sentinel down-after-milliseconds {self.MASTER} 1000\n"
                f"sentinel failover-timeout {self.MASTER} 5000\n"
                f"sentinel parallel-syncs {self.MASTER} 1\n"
            )
            proc = subprocess.Popen(["redis-server", str(conf), "--sentinel"], cwd=self.dir,
                                    stdout=open(self.dir / f"sentinel{i}.log", "wb"), stderr=subprocess.STDOUT,
                                    start_new_session=True)
            self.sentinels.append(_Server(port, proc))
        for s in self.sentinels:
            wait_for(lambda s=s: _pings(s.port), 20, message="a sentinel")
        wait_for(self._sentinels_agree, 30, interval=0.2, message="the sentinels to see each other and the replica")

    def _sentinels_agree(self) -> bool:
        try:
            for s in self.sentinels:
                info = s.client.sentinel_master(self.MASTER)
                if int(info["num-other-sentinels"]) < 2 or int(info["num-slaves"]) < 1:
                    return False
            return True
        except redis.RedisError:
            return False

    @property
    def url(self) -> str:
        hosts = ";".join(f"sentinel://127.0.0.1:{s.port}" for s in self.sentinels)
        return f"{hosts}/0?master={self.MASTER}"

    def current_master_port(self) -> int:
        for s in self.sentinels:
            try:
                _host, port = s.client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.MASTER)
                return int(port)
            except redis.RedisError:
                continue
        raise AssertionError("no sentinel answers")

    def close(self) -> None:
        for s in [*self.sentinels, self.master, self.replica]:
            if s is not None:
                s.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


def _pings(port: int) -> bool:
    try:
        return redis.Redis(port=port, socket_timeout=1).ping()
    except redis.RedisError:
        return False


def _replica_synced(server: _Server) -> bool:
    info = server.client.info("replication")
    return info.get("master_link_status") == "up"



class CountingProducer(threading.Thread):
    """Sends ``task.delay(seq)`` for seq in range(n) from a thread, keeping which
    sends were acknowledged and which raised BrokerError (a failover test's ledger)."""

    def __init__(self, task, n: int) -> None:
        super().__init__(daemon=True)
        self.task, self.n = task, n
        self.acknowledged: list[int] = []
        self.refused: list[int] = []
        self.ids: dict[int, str] = {}

    def run(self) -> None:
        from fastq.exceptions import BrokerError

        for seq in range(self.n):
            try:
                self.ids[seq] = self.task.delay(seq).id
                self.acknowledged.append(seq)
            except BrokerError:
                self.refused.append(seq)
            if seq % 100 == 0:
                time.sleep(0.05)  # a steady stream, not one burst

    def report(self, ledger, what: str) -> str:
        """Wait until every acknowledged send ran; the lost/duplicated line."""
        def all_ran():
            return not set(self.acknowledged) - {int(k) for k in ledger.hkeys("runs")}

        wait_for(all_ran, 180, interval=0.5, message="every acknowledged task to run")
        runs = {int(k): int(v) for k, v in ledger.hgetall("runs").items()}
        dups = sum(v - 1 for v in runs.values())
        return (f"{what}: {len(self.acknowledged)} acknowledged, {len(self.refused)} refused (BrokerError), "
                f"lost 0, duplicated {dups}")
