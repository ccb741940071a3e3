"""What editors and mypy see of a task (checked by tests/test_typed.py).

Every line marked ``# E: <text>`` must be reported by mypy with that text, and
nothing else may be. Not a test module: it is never imported or run.
"""

from __future__ import annotations

import dataclasses

from fastq import FastQ
from fastq.result import AsyncResult

app = FastQ("example")


@dataclasses.dataclass
class Point:
    x: int
    y: int = 0


@app.task(typed=True)
def add(x: int, y: int) -> int:
    return x + y


@app.task
def move(p: Point, dx: int = 1) -> Point:
    return Point(p.x + dx, p.y)


@app.task(bind=True, name="example.label")
def label(self, n: int, *, prefix: str = "#") -> str:
    return f"{prefix}{n} ({self.request.id})"


def good() -> None:
    r: AsyncResult[int] = add.delay(1, 2)
    total: int = r.get(timeout=10)
    moved: Point = move.delay(Point(1, 2), dx=3).get()
    text: str = label.delay(7, prefix="n").get()
    direct: int = add(2, 3)
    add.apply_async((1, 2), countdown=5, unique_key="add:1:2")
    print(total, moved, text, direct)


def bad() -> None:
    add.delay("one", 2)  # E: Argument 1 to "delay" of "Task" has incompatible type "str"; expected "int"
    add.delay(1)  # E: Missing positional argument "y" in call to "delay" of "Task"
    move.delay(Point(1), dz=2)  # E: Unexpected keyword argument "dz" for "delay" of "Task"
    label.delay("7")  # E: Argument 1 to "delay" of "Task" has incompatible type "str"; expected "int"
    wrong: str = add.delay(1, 2).get()  # E: Incompatible types in assignment (expression has type "int", variable has type "str")
    add(1, y="2")  # E: Argument "y" to "__call__" of "Task" has incompatible type "str"; expected "int"
    print(wrong)
