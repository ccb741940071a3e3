"""The current app: what Celery users reach through ``current_app``, ``shared_task``
and signatures made without an app (``signature("proj.add")``, ``group([])``).

The app made last is current, unless ``app.set_default()`` named one (Celery's
default app works the same way). ``shared_task`` registers a function on every
app, also on apps made after it, so a library's tasks need no app of their own.

Layer: base; imports nothing of fastq's (each app registers itself here).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

#: Every app made so far (shared tasks are registered on each).
_apps: weakref.WeakSet = weakref.WeakSet()
#: The app made last (weakly: an app nobody holds is not current), and the one set_default() named.
_last: weakref.ReferenceType | None = None
_default: Any = None
#: shared_task registrations, replayed on every app made later: (function, options).
_shared: list[tuple[Callable, dict]] = []


def register_app(app) -> None:
    """Called by each new app: it becomes current, and gets every shared task."""
    global _last
    _apps.add(app)
    _last = weakref.ref(app)
    for fn, options in _shared:
        app.task(**options)(fn)


def set_default(app) -> None:
    global _default
    _default = app


def current_app():
    """The current app; RuntimeError when no app was made yet."""
    app = _default if _default is not None else (_last() if _last is not None else None)
    if app is None:
        raise RuntimeError("no fastq app yet: make one with FastQ(...) before using current_app, shared_task "
                           "tasks or signatures without an app")
    return app


def current_app_or_none():
    try:
        return current_app()
    except RuntimeError:
        return None


def share(fn: Callable, options: dict) -> None:
    """Register ``fn`` on every app made so far and on each one made later."""
    _shared.append((fn, options))
    for app in list(_apps):
        app.task(**options)(fn)


__all__ = ["current_app", "current_app_or_none", "register_app", "set_default", "share"]
