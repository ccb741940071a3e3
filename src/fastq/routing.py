"""Routing: which queue a task goes to (``app.conf.task_routes``).

Layer: api (the producer side); imports base and broker, never ``fastq.worker`` or the apps.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable
from typing import Any

from .broker.keys import validate_queue_name
from .exceptions import ImproperlyConfigured


def _as_queue(route: Any, where: str) -> str | None:
    if route is None:
        return None
    if isinstance(route, str):
        return validate_queue_name(route)
    if isinstance(route, dict):
        q = route.get("queue")
        return validate_queue_name(q) if q is not None else None
    raise ImproperlyConfigured(f"{where}: a route must be a queue name or a dict with 'queue', not {route!r}")


class _MapRouter:
    """A dict of task-name globs to routes; exact names win over patterns."""

    def __init__(self, mapping: dict) -> None:
        self.exact = {}
        self.patterns = []
        for name, route in mapping.items():
            _as_queue(route, f"task_routes[{name!r}]")  # validate now, not at send time
            if any(c in name for c in "*?["):
                self.patterns.append((re.compile(fnmatch.translate(name)), route))
            else:
                self.exact[name] = route

    def __call__(self, name, args, kwargs, options):
        route = self.exact.get(name)
        if route is not None:
            return route
        for rx, route in self.patterns:
            if rx.match(name):
                return route
        return None


class Router:
    """Routes a task name to a queue: the first router that answers wins."""

    def __init__(self, routes: Any, default_queue: str) -> None:
        self.default = validate_queue_name(default_queue)
        if routes is None:
            routes = []
        elif isinstance(routes, (dict, str)) or callable(routes):
            routes = [routes]
        self.routers: list[Callable] = []
        for r in routes:
            if isinstance(r, dict):
                self.routers.append(_MapRouter(r))
            elif callable(r):
                self.routers.append(r)
            else:
                raise ImproperlyConfigured(f"task_routes: {r!r} is neither a dict nor a callable")
        self._cache: dict[str, str] = {}
        self._static = all(isinstance(r, _MapRouter) for r in self.routers)

    def route(self, name: str, args=None, kwargs=None, options=None) -> str:
        if self._static:  # dict routes depend on the name only
            q = self._cache.get(name)
            if q is None:
                q = self._cache[name] = self._route(name, args, kwargs, options)
            return q
        return self._route(name, args, kwargs, options)

    def _route(self, name, args, kwargs, options) -> str:
        for r in self.routers:
            q = _as_queue(r(name, args, kwargs, options), f"route for {name!r}")
            if q is not None:
                return q
        return self.default
