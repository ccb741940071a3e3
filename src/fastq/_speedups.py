"""Picks the compiled ``_core`` or its pure-Python twin ``_core_py``.

``FASTQ_NO_EXTENSIONS=1`` forces the twin; so does any interpreter other than
CPython. Nothing else imports ``_core`` directly. ``COMPILED`` says which one
is in use (``fastq --version`` prints it).
"""

from __future__ import annotations

import os
import platform
from typing import TYPE_CHECKING

NO_EXTENSIONS = bool(os.environ.get("FASTQ_NO_EXTENSIONS")) or platform.python_implementation() != "CPython"

if TYPE_CHECKING or NO_EXTENSIONS:
    from ._core_py import (
        COMPILED,
        Delivery,
        Output,
        Request,
        Runner,
        TokenBucket,
        current_request,
        new_task_id,
        pack_command,
        parse_fetch_reply,
        parse_xread_reply,
    )
else:
    try:
        from ._core import (
            COMPILED,
            Delivery,
            Output,
            Request,
            Runner,
            TokenBucket,
            current_request,
            new_task_id,
            pack_command,
                parse_fetch_reply,
            parse_xread_reply,
        )
    except ImportError:  # pragma: no cover - a build without the extension
        from ._core_py import (
            COMPILED,
            Delivery,
            Output,
            Request,
            Runner,
            TokenBucket,
            current_request,
            new_task_id,
            pack_command,
                parse_fetch_reply,
            parse_xread_reply,
        )

__all__ = [
    "COMPILED",
    "Delivery",
    "NO_EXTENSIONS",
    "Output",
    "Request",
    "Runner",
    "TokenBucket",
    "current_request",
    "new_task_id",
    "pack_command",
    "parse_fetch_reply",
    "parse_xread_reply",
]
