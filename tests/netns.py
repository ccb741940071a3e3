"""Network namespaces for partition tests (needs root and ``ip``).

A ``NetNamespace`` is a private network stack joined to the root namespace by
veth pairs. Each pair gets its own 10.213.<b>.0/24 subnet, picked among the
ones not configured on this machine: ``.1`` on the root side, ``.2`` inside.
Only addresses created here are used. Taking the root-side end of a link down
blackholes the namespace's traffic on that link (packets vanish, connections
time out), like a pulled cable.

``NetnsWorker`` runs ``fastq worker`` inside a namespace (``ip netns exec``
execs the command, so its pid is the worker's).

``Network`` is a LAN of such namespaces ("hosts") on one switch, each with its
own address (and, for what runs there, its own hostname); ``HostRedis`` and
``HostWorker`` run redis-server and ``fastq worker`` on a host. Used by
tests/test_multihost.py.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from conftest import ROOT, WorkerProcess, fastq_command


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True)


def _free_subnet() -> int:
    """A b with no 10.213.b.x address on this machine (root namespace or any namespace)."""
    used = set(int(m) for m in re.findall(r"10\.213\.(\d+)\.", _ip("-o", "addr", "show").stdout))
    for line in _ip("netns", "list").stdout.splitlines():
        ns = line.split()[0] if line.split() else ""
        if re.match(r"^[\w.-]+$", ns):
            out = _ip("-n", ns, "-o", "addr", "show", check=False).stdout
            used |= set(int(m) for m in re.findall(r"10\.213\.(\d+)\.", out))
    return random.choice([b for b in range(20, 250) if b not in used])


def netns_available() -> str | None:
    """None when namespaces can be used here, else why not."""
    if shutil.which("ip") is None:
        return "no `ip` command"
    if os.geteuid() != 0:
        return "network namespaces need root"
    return None


@dataclass
class Link:
    root_if: str
    ns_if: str
    root_ip: str
    ns_ip: str


class NetNamespace:
    def __init__(self) -> None:
        tag = f"{os.getpid() % 100000}{random.randrange(100):02d}"
        self.name = f"fqtest{tag}"
        self._tag = tag
        self.links: list[Link] = []
        _ip("netns", "add", self.name)
        _ip("-n", self.name, "link", "set", "lo", "up")

    def add_link(self) -> Link:
        """A veth pair root <-> namespace on a subnet of its own; returns its addresses."""
        i = len(self.links)
        root_if, ns_if = f"fq{self._tag}r{i}", f"fq{self._tag}n{i}"
        b = _free_subnet()
        link = Link(root_if, ns_if, f"10.213.{b}.1", f"10.213.{b}.2")
        _ip("link", "add", root_if, "type", "veth", "peer", "name", ns_if)
        self.links.append(link)
        _ip("link", "set", ns_if, "netns", self.name)
        _ip("addr", "add", f"{link.root_ip}/24", "dev", root_if)
        _ip("link", "set", root_if, "up")
        _ip("-n", self.name, "addr", "add", f"{link.ns_ip}/24", "dev", ns_if)
        _ip("-n", self.name, "link", "set", ns_if, "up")
        return link

    def cut(self, link: Link) -> None:
        """Blackhole the link: its root-side end goes down."""
        _ip("link", "set", link.root_if, "down")

    def restore(self, link: Link) -> None:
        _ip("link", "set", link.root_if, "up")

    def close(self) -> None:
        for link in self.links:
            _ip("link", "del", link.root_if, check=False)
        self.links = []
        _ip("netns", "del", self.name, check=False)


class NetnsWorker(WorkerProcess):
    """A `fastq worker` subprocess inside a network namespace."""

    def __init__(self, netns: str, args: list[str], env: dict, name: str) -> None:
        self.name = name
        self.log_path = Path(tempfile.mkstemp(prefix=f"fastq-{name}-", suffix=".log")[1])
        self._log = open(self.log_path, "wb")
        argv = ["-A", "tests.apps.basic:app", "--hostname", name, "--loglevel", "INFO", *args]
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", netns, *fastq_command(), "worker", *argv], cwd=ROOT, env=env,
            stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
        )


# --- a switched LAN of "hosts" ------------------------------------------------------------


def _pids_in(netns: str) -> list[int]:
    return [int(p) for p in _ip("netns", "pids", netns, check=False).stdout.split()]


def sweep_stale_networks() -> None:
    """Delete the namespaces (and so the links) of Networks whose test process is gone
    without closing them (SIGKILLed, say). Processes left in them are not touched."""
    for line in _ip("netns", "list").stdout.splitlines():
        m = re.match(r"^(fqh(\d+)x\d+-[a-z0-9]+)\b", line)
        if not m:
            continue
        try:
            os.kill(int(m.group(2)), 0)
        except ProcessLookupError:
            _ip("netns", "del", m.group(1), check=False)
        except PermissionError:  # alive, someone else's
            pass


@dataclass
class Host:
    """A namespace on the LAN: its own network stack with one interface (eth0) and address."""

    net: Network
    name: str
    netns: str
    addr: str

    @property
    def port(self) -> str:
        """Its interface on the switch (taken down by ``Network.cut``)."""
        return f"h-{self.name}"

    def argv(self, argv: list[str], uts: str | None = None, pidns: bool = False) -> list[str]:
        """``argv`` run inside this host; with ``uts``, in a UTS namespace of its own whose
        hostname is ``uts`` (``socket.gethostname()`` answers it). Every step execs, so the
        process started is the command's; except with ``pidns``: then the command is pid 1
        of a PID namespace of its own (as in a container), and the process started is an
        ``unshare`` that waits for it, exits with its status and takes it along if killed."""
        inner = list(argv)
        if uts is not None:
            inner = ["sh", "-c", 'hostname "$0" && exec "$@"', uts, *inner]
        if pidns:
            inner = ["unshare", "--pid", "--fork", "--kill-child", "--mount-proc", *(["--uts"] if uts else []), *inner]
        elif uts is not None:
            inner = ["unshare", "--uts", *inner]
        return ["ip", "netns", "exec", self.netns, *inner]

    def popen(self, argv: list[str], uts: str | None = None, pidns: bool = False, **kw) -> subprocess.Popen:
        return subprocess.Popen(self.argv(argv, uts, pidns), start_new_session=True, **kw)

    def run(self, argv: list[str], uts: str | None = None, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
        return subprocess.run(self.argv(argv, uts), capture_output=True, text=True, timeout=timeout, **kw)


class Network:
    """Hosts on one switched LAN: each host is a network namespace with one veth
    into a Linux bridge. The bridge lives in a namespace of its own (the switch),
    so the root namespace's firewall (br_netfilter, Docker's FORWARD policy) never
    sees the hosts' traffic. One more veth joins the root namespace to the switch,
    so the test process reaches every host (it is ``.1`` on the LAN).

    All hosts share 10.213.<b>.0/24 (``b`` not in use on this machine); the hosts
    are ``.2``, ``.3``, ... Interface names inside the namespaces are private; only
    the namespaces and the root-side uplink are named after this process
    (``fqh<pid>x<n>``), so concurrent runs do not collide. ``cut(host)`` takes the
    host's switch port down: its packets vanish, like a pulled cable. ``close()``
    SIGKILLs whatever still runs in the namespaces and deletes them (and every
    link with them); it is safe to call twice.
    """

    def __init__(self) -> None:
        sweep_stale_networks()
        self.tag = f"fqh{os.getpid()}x{random.randrange(1000)}"
        self.switch = f"{self.tag}-sw"
        self.hosts: dict[str, Host] = {}
        self._namespaces: list[str] = []
        try:
            self._add_netns(self.switch)
            _ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
            _ip("-n", self.switch, "link", "set", "br0", "up")
            self.subnet = _free_subnet()
            self.gateway = f"10.213.{self.subnet}.1"
            _ip("link", "add", self.tag, "type", "veth", "peer", "name", "up0", "netns", self.switch)
            _ip("-n", self.switch, "link", "set", "up0", "master", "br0", "up")
            _ip("addr", "add", f"{self.gateway}/24", "dev", self.tag)
            _ip("link", "set", self.tag, "up")
        except BaseException:
            self.close()
            raise

    def _add_netns(self, name: str) -> None:
        _ip("netns", "add", name)
        self._namespaces.append(name)
        _ip("-n", name, "link", "set", "lo", "up")

    def add_host(self, name: str) -> Host:
        """A new host ``name`` (letters and digits, at most 12) on the LAN."""
        if not re.fullmatch(r"[a-z0-9]{1,12}", name) or name in self.hosts:
            raise ValueError(f"bad or duplicate host name {name!r}")
        host = Host(self, name, f"{self.tag}-{name}", f"10.213.{self.subnet}.{len(self.hosts) + 2}")
        self._add_netns(host.netns)
        _ip("-n", self.switch, "link", "add", host.port, "type", "veth", "peer", "name", "eth0", "netns", host.netns)
        _ip("-n", self.switch, "link", "set", host.port, "master", "br0", "up")
        _ip("-n", host.netns, "addr", "add", f"{host.addr}/24", "dev", "eth0")
        _ip("-n", host.netns, "link", "set", "eth0", "up")
        self.hosts[name] = host
        return host

    def cut(self, host: Host) -> None:
        """Blackhole the host: its port on the switch goes down."""
        _ip("-n", self.switch, "link", "set", host.port, "down")

    def restore(self, host: Host) -> None:
        _ip("-n", self.switch, "link", "set", host.port, "up")

    def close(self) -> None:
        for ns in reversed(self._namespaces):
            for pid in _pids_in(ns):
                try:
                    os.kill(pid, 9)
                except ProcessLookupError:
                    pass
        _ip("link", "del", self.tag, check=False)
        for ns in reversed(self._namespaces):
            _ip("netns", "del", ns, check=False)
        self._namespaces = []


class HostRedis:
    """A redis-server inside ``host``, listening on the host's address, port 6379."""

    def __init__(self, host: Host) -> None:
        self.host = host
        self.dir = tempfile.mkdtemp(prefix="fastq-redis-")
        self.proc = host.popen(
            ["redis-server", "--bind", host.addr, "--port", "6379", "--protected-mode", "no", "--save", "",
             "--appendonly", "no", "--dir", self.dir, "--logfile", os.path.join(self.dir, "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )

    def url(self, db: int = 0) -> str:
        return f"redis://{self.host.addr}:6379/{db}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


class HostWorker(WorkerProcess):
    """``fastq worker`` on ``host``; with ``uts``, the host's hostname is ``uts`` and,
    unless ``args`` give ``--hostname``, the worker is named ``fastq@<uts>``. With ``pidns``
    it is pid 1 of a PID namespace of its own (see ``Host.argv``)."""

    def __init__(self, host: Host, args: list[str], env: dict, name: str, uts: str | None = None,
                 app: str = "tests.apps.multihost:app", pidns: bool = False) -> None:
        self.name = name
        self.host = host
        self.log_path = Path(tempfile.mkstemp(prefix=f"fastq-{host.name}-", suffix=".log")[1])
        self._log = open(self.log_path, "wb")
        self.proc = host.popen([*fastq_command(), "worker", "-A", app, "--loglevel", "INFO", *args], uts,
                               pidns, cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT)
