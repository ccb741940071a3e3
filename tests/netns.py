"""Network namespaces for partition tests (needs root and ``ip``).

A ``NetNamespace`` is a private network stack joined to the root namespace by
veth pairs. Each pair gets its own 10.213.<b>.0/24 subnet, picked among the
ones not configured on this machine: ``.1`` on the root side, ``.2`` inside.
Only addresses created here are used. Taking the root-side end of a link down
blackholes the namespace's traffic on that link (packets vanish, connections
time out), like a pulled cable.

``NetnsWorker`` runs ``fastq worker`` inside a namespace (``ip netns exec``
execs the command, so its pid is the worker's).
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

    def _free_subnet(self) -> int:
        used = set(int(m) for m in re.findall(r"10\.213\.(\d+)\.", _ip("-o", "addr", "show").stdout))
        for line in _ip("netns", "list").stdout.splitlines():
            ns = line.split()[0] if line.split() else ""
            if re.match(r"^[\w.-]+$", ns):
                out = _ip("-n", ns, "-o", "addr", "show", check=False).stdout
                used |= set(int(m) for m in re.findall(r"10\.213\.(\d+)\.", out))
        free = [b for b in range(20, 250) if b not in used]
        return random.choice(free)

    def add_link(self) -> Link:
        """A veth pair root <-> namespace on a subnet of its own; returns its addresses."""
        i = len(self.links)
        root_if, ns_if = f"fq{self._tag}r{i}", f"fq{self._tag}n{i}"
        b = self._free_subnet()
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
