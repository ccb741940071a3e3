"""Type stubs for the compiled core; ``_core_py`` is its pure-Python twin with the same API."""

from collections.abc import Callable, Sequence
from contextvars import ContextVar
from typing import Any

COMPILED: bool
current_request: ContextVar[Request | None]

def pack_command(args: Sequence[bytes | str | int | float]) -> bytes: ...
def new_task_id() -> str: ...
def parse_fetch_reply(reply: list | None, streams: Sequence[str]) -> list[Delivery]: ...
def parse_xread_reply(reply: list | None, by_name: dict[bytes, str]) -> list[Delivery]: ...

KEYLESS: int
WAIT_SLOT: int

def key_slot(key: bytes) -> int: ...
def split_packed(data: bytes) -> list[tuple[int, int, bytes | None, int]]: ...

class Delivery:
    stream: str
    entry_id: bytes
    field: bytes
    payload: bytes
    dc: int
    message: Any
    error: str | None
    def __init__(self, stream: str, entry_id: bytes, field: bytes, payload: bytes, dc: int = 0,
                 error: str | None = None) -> None: ...

class TokenBucket:
    rate: float
    capacity: float
    tokens: float
    stamp: float
    refill: bool
    def __init__(self, rate: float, capacity: float, refill: bool = True) -> None: ...
    def consume(self, n: float = 1.0) -> bool: ...
    def expected_wait(self, n: float = 1.0) -> float: ...
    def add(self, n: float) -> None: ...

class Output:
    acks: dict[str, list[bytes]]
    commands: list[bytes]
    replies: int
    count: int
    events: list[tuple]
    results: list[bytes]
    result_replies: int
    def ack(self, stream: str, entry_id: bytes) -> None: ...
    def add_command(self, packed: bytes, replies: int = 1) -> None: ...
    def add_result(self, packed: bytes, replies: int = 1) -> None: ...
    def event(self, kind: str, task_id: str | None, name: str | None, runtime: float | None, info: Any) -> None: ...
    def take(self) -> Output: ...
    def __bool__(self) -> bool: ...

class Request:
    message: Any
    delivery: Delivery | None
    hostname: str | None
    queue: str | None
    id: str
    task: str
    args: list
    kwargs: dict
    retries: int
    eta: float | None
    expires: float | None
    priority: int
    parent_id: str | None
    root_id: str | None
    options: dict | None
    headers: dict | None
    called_directly: bool
    delivery_count: int
    delivery_info: dict
    time_limit: float | None
    soft_time_limit: float | None
    is_eager: bool
    reply_to: str | None
    replaced_task_nesting: int
    stamped_headers: list[str]
    stamps: dict[str, Any]
    properties: dict
    def __init__(
        self, message: Any, hostname: str | None, delivery: Delivery | None = None, queue: str | None = None,
        task_obj: Any = None,
    ) -> None: ...

class Runner:
    registry: dict[str, Any]
    handler: Any
    hostname: str
    stopping: bool
    deadline: float
    processed: int
    current: Delivery | None
    flush_interval: float
    flush: Callable[[Output], None] | None
    notify: bool
    events: bool
    slow_streams: set[str]
    max_size: int
    slot: Any
    def __init__(self, registry: dict[str, Any], handler: Any, hostname: str, result_prefix: bytes,
                 result_expires: int, encode_result: Callable[..., bytes], queue_of: dict[str, str]) -> None: ...
    def run_batch(self, deliveries: list[Delivery], out: Output) -> int: ...
