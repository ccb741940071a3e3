"""The broker contract (fastq.broker.base.Broker) is what the code above the broker uses.

Read from the source with ``ast``: every ``<...>.broker.<name>`` outside ``fastq/broker``
must be a name the contract documents; the one module that still reaches past the
named operations (``fastq bench``: a raw client, key names) is listed here, so the
list can only shrink; and no module above the broker packs a command (issue #19).
"""

from __future__ import annotations

import ast
import inspect
import pathlib

import pytest

from fastq import FastQ
from fastq.broker.base import RAW_ATTRIBUTES, Broker, contract_names
from fastq.broker.redis import RedisBroker

SRC = pathlib.Path(__file__).resolve().parents[1] / "src" / "fastq"

#: Raw access still used above the broker: module -> the raw names it reads.
#: Each entry is work left; the test fails when one grows or when one is gone
#: (then delete it here).
RAW_USERS = {
    # a benchmark measures Redis itself: its memory use, a pipelined fill, the registry
    "bench.py": {"client", "keys"},
}
RAW = RAW_ATTRIBUTES



def broker_uses() -> dict[str, dict[str, int]]:
    """module -> {attribute read on something named ``broker``: first line}."""
    out: dict[str, dict[str, int]] = {}
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).as_posix()
        if rel.startswith("broker/"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Attribute):
                continue
            owner = node.value
            name = owner.id if isinstance(owner, ast.Name) else owner.attr if isinstance(owner, ast.Attribute) else None
            if name in ("broker", "backend_broker"):
                out.setdefault(rel, {}).setdefault(node.attr, node.lineno)
    return out


USES = broker_uses()


def test_the_reader_sees_broker_calls():
    assert USES["producer.py"].keys() >= {"publish", "publish_many", "publish_async"}
    assert "renew" in USES["worker/maintenance.py"]


def test_code_above_the_broker_uses_only_what_the_contract_names():
    names = contract_names()
    outside = [f"src/fastq/{mod}:{line} uses broker.{attr}" for mod, attrs in USES.items()
               for attr, line in attrs.items() if attr not in names]
    assert outside == [], "not in fastq.broker.base.Broker:\n" + "\n".join(outside)


def test_raw_access_only_shrinks():
    raw = {mod: {a for a in attrs if a in RAW} for mod, attrs in USES.items()}
    raw = {mod: attrs for mod, attrs in raw.items() if attrs}
    grown = {mod: sorted(attrs - RAW_USERS.get(mod, set())) for mod, attrs in raw.items()
             if attrs - RAW_USERS.get(mod, set())}
    assert grown == {}, f"new raw broker access (ask the broker by a named method instead): {grown}"
    gone = {mod: sorted(attrs - raw.get(mod, set())) for mod, attrs in RAW_USERS.items() if attrs - raw.get(mod, set())}
    assert gone == {}, f"raw access that is gone: remove it from RAW_USERS: {gone}"


def nodes_above_the_broker(*exempt: str):
    """("module:line", node) for every ast node of the modules above the broker,
    except those under broker/ and the ``exempt`` ones."""
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).as_posix()
        if rel.startswith("broker/") or rel in exempt:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            yield f"{rel}:{getattr(node, 'lineno', 0)}", node


def test_only_the_broker_builds_redis_commands():
    """Packing a command (``pack_command``) or calling a script (``SCRIPTS``) is the
    broker's job; the compiled core (and its twin) packs the hot path's acks and
    results with the key names and script SHAs the broker hands it."""
    builders = [where for where, node in nodes_above_the_broker("_core_py.py", "_speedups.py")
                if isinstance(node, ast.Name) and node.id in ("pack_command", "SCRIPTS")]
    assert builders == [], "ask the broker by a named method instead"


def test_key_names_are_the_brokers():
    """The key layout (``key_prefix`` and what follows it) is known under broker/
    only; fastq bench sets a prefix of its own to keep to its namespace."""
    readers = [where for where, node in nodes_above_the_broker("bench.py", "settings.py")
               if isinstance(node, ast.Attribute) and node.attr == "key_prefix"]
    assert readers == [], "ask the broker for the key (or the name) instead"


def _imported(node) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if isinstance(node, ast.ImportFrom) and not node.level:
        return [node.module or ""]
    return []


def test_only_the_broker_imports_the_redis_client():
    """redis-py (and hiredis) are the broker's business; fastq bench, which starts
    and measures Redis servers of its own, is the one exception."""
    importers = [where for where, node in nodes_above_the_broker("bench.py")
                 if any(n.split(".")[0] in ("redis", "hiredis") for n in _imported(node))]
    assert importers == [], "ask the broker instead"


@pytest.mark.parametrize("name", sorted(Broker.__abstractmethods__))
def test_redis_broker_keeps_the_contracts_signatures(name):
    """A caller written against the contract works with RedisBroker: same parameters."""
    want = getattr(Broker, name)
    have = getattr(RedisBroker, name)
    if isinstance(want, property):
        assert isinstance(have, property)
        return
    assert list(inspect.signature(have).parameters) == list(inspect.signature(want).parameters)


def test_the_app_broker_is_a_complete_broker(redis_url):
    broker = FastQ("contract", broker=redis_url).broker
    assert isinstance(broker, Broker)
    assert not getattr(type(broker), "__abstractmethods__", None)
    for attr in RAW_ATTRIBUTES:
        assert hasattr(broker, attr)
    broker.check_connection()
    assert broker.clock("any") > 1.7e9
