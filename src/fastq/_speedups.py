"""Picks the compiled ``_core`` or its pure-Python twin ``_core_py``.

``FASTQ_NO_EXTENSIONS=1`` forces the twin; so does any interpreter other than
CPython. Nothing else imports ``_core`` directly. ``COMPILED`` says which one
is in use (``fastq --version`` prints it).

Layer: base; imports only other base modules.
"""

from __future__ import annotations

import os
import platform
from typing import TYPE_CHECKING

NO_EXTENSIONS = bool(os.environ.get("FASTQ_NO_EXTENSIONS")) or platform.python_implementation() != "CPython"

__all__ = [
    "COMPILED",
    "KEYLESS",
    "WAIT_SLOT",
    "Delivery",
    "NO_EXTENSIONS",
    "Output",
    "Request",
    "Runner",
    "TokenBucket",
    "current_request",
    "key_slot",
    "new_task_id",
    "pack_command",
    "pack_result",
    "parse_fetch_reply",
    "parse_xread_reply",
    "split_packed",
]


def _load_core():
    if not NO_EXTENSIONS:
        try:
            from . import _core  # the selector: the compiled core when it was built

            return _core
        except ImportError:  # pragma: no cover - a build without the extension
            pass
    from . import _core_py  # its pure-Python twin (FASTQ_NO_EXTENSIONS=1, or no build)

    return _core_py


if TYPE_CHECKING:  # both modules have the same names; type checkers read the twin's
    from ._core_py import (
        COMPILED,
        KEYLESS,
        WAIT_SLOT,
        Delivery,
        Output,
        Request,
        Runner,
        TokenBucket,
        current_request,
        key_slot,
        new_task_id,
        pack_command,
        pack_result,
        parse_fetch_reply,
        parse_xread_reply,
        split_packed,
    )
else:
    _core_module = _load_core()
    globals().update({name: getattr(_core_module, name) for name in __all__ if name != "NO_EXTENSIONS"})
