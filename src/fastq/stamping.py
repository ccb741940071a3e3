"""Stamping: labels put on every task of a workflow, as Celery 5.3+ does.

``sig.stamp(visitor=MyVisitor())`` (or ``sig.stamp(monitoring_id="42")``) walks
a signature, chain, group or chord and its callbacks and errbacks, and stores the
stamps in each task signature's options, named by ``options["stamped_headers"]``.
The producer moves them into the message's headers (``stamps`` and
``stamped_headers``), where the worker shows them as ``self.request.stamps``,
a retry keeps them, a replacement inherits them, and
``app.control.revoke_by_stamped_headers({"monitoring_id": ["42"]})`` revokes
every task that carries one of the values.

This module holds the visitor (Celery's ``StampingVisitor``, with its method
names), the merge rule for stamps, and the match of stamps against revoked
ones. The walk itself is a method of each canvas class (``stamp``); the
producer moves stamps into headers (``producer._take_stamps``); ``Request``
reads them back.

Layer: api (the producer side); imports only the standard library.
"""

from __future__ import annotations

import copy
from abc import ABCMeta, abstractmethod
from typing import Any


class StampingVisitor(metaclass=ABCMeta):
    """Decides the stamps of a workflow's parts (Celery's ``StampingVisitor``).

    ``on_signature`` (required) returns the stamps of one task signature; the
    other methods are called on entering and leaving a group, chain or chord
    header, for a chord's body, and for each callback and errback, and return
    stamps added to everything inside (``{}`` by default). A returned
    ``"stamped_headers"`` list names which keys are stamps (default: all)."""

    def on_group_start(self, group, **headers: Any) -> dict:
        return {}

    def on_group_end(self, group, **headers: Any) -> None:  # noqa: B027 - optional, as in Celery
        pass

    def on_chain_start(self, chain, **headers: Any) -> dict:
        return {}

    def on_chain_end(self, chain, **headers: Any) -> None:  # noqa: B027 - optional, as in Celery
        pass

    @abstractmethod
    def on_signature(self, sig, **headers: Any) -> dict:
        """The stamps of one task signature."""

    def on_chord_header_start(self, sig, **header: Any) -> dict:
        return self.on_group_start(sig.header, **header)

    def on_chord_header_end(self, sig, **header: Any) -> None:
        self.on_group_end(sig.header, **header)

    def on_chord_body(self, sig, **header: Any) -> dict:
        return {}

    def on_callback(self, callback, **header: Any) -> dict:
        return {}

    def on_errback(self, errback, **header: Any) -> dict:
        return {}


def merge_stamps(into: dict, other: dict, append: bool) -> None:
    """Merge ``other`` into ``into`` as Celery's ``_merge_dictionaries`` does: a key
    only in ``other`` is added; dicts merge key by key; two lists add up; for any
    other value ``into`` keeps its own, or with ``append`` both go into a list."""
    for key, mine in list(into.items()):
        if key not in other:
            continue
        value = other[key]
        if isinstance(mine, dict) and isinstance(value, dict):
            merge_stamps(mine, value, append)
        elif isinstance(mine, list) and isinstance(value, list):
            into[key] = [*mine, *value]
        elif append:
            if isinstance(value, list) and isinstance(mine, (int, float, str)):
                into[key] = [mine, *value]
            else:
                into[key] = [*([] if mine is None else [mine] if isinstance(mine, (int, float, str)) else list(mine)),
                             value]
    for key, value in other.items():
        if key not in into:
            into[key] = value


def _unique(names) -> list:
    return list(dict.fromkeys(names))


def collect(own: dict | None, visitor_stamps: dict | None, append: bool, headers: dict) -> dict:
    """The stamps a part gets, as Celery's ``Signature._stamp_headers``: ``headers``
    (passed down from the enclosing part) first, then what the visitor returned
    for this part, then (``own``: a signature's options) the stamps it had; on a
    clash the earlier wins unless ``append``. Returns them with their
    ``stamped_headers`` list."""
    out = copy.deepcopy(headers)  # merging changes lists and dicts in place: never a caller's
    if "stamped_headers" not in out:
        out["stamped_headers"] = list(out)
    if visitor_stamps is not None:
        visitor_stamps = dict(visitor_stamps)
        if "stamped_headers" not in visitor_stamps:
            visitor_stamps["stamped_headers"] = list(visitor_stamps)
        merge_stamps(out, copy.deepcopy(visitor_stamps), append)
        out["stamped_headers"] = _unique(out["stamped_headers"])
    if own is not None:
        names = _unique([*out["stamped_headers"], *(own.get("stamped_headers") or ())])
        out["stamped_headers"] = names
        merge_stamps(out, copy.deepcopy({k: v for k, v in own.items() if k in names}), append)
        out["stamped_headers"] = _unique(out["stamped_headers"])
    return out


def revoke_values(headers: Any) -> dict[str, list]:
    """``revoke_by_stamped_headers``' argument as stamp name -> list of values:
    a dict of a value or a list of values, or Celery's list of ``"name=value"``
    strings. A one-line TypeError for anything else, at the call."""
    if isinstance(headers, list) and all(isinstance(h, str) and "=" in h for h in headers):
        headers = dict(h.split("=", 1) for h in headers)
    if not isinstance(headers, dict) or not headers or not all(isinstance(k, str) for k in headers):
        raise TypeError(f"revoke_by_stamped_headers takes a dict of stamp name -> value(s), not {headers!r:.100}")
    out = {}
    for name, values in headers.items():
        values = list(values) if isinstance(values, (list, tuple, set)) else [values]
        for v in values:
            if not isinstance(v, (str, int, float, bool)) and v is not None:
                raise TypeError(f"revoke_by_stamped_headers: stamp {name!r} values must be strings or numbers, "
                                f"not {type(v).__name__}")
        out[name] = values
    return out


def revoked_by(stamps: dict, revoked: dict) -> dict | None:
    """The ``{name: value}`` of ``stamps`` that ``revoked`` (name -> list of revoked
    values) names, or None. A stamp that is a list matches when any of its values
    is revoked, as in Celery."""
    for name, value in stamps.items():
        values = revoked.get(name)
        if not values or value is None:
            continue
        for v in value if isinstance(value, (list, tuple)) else (value,):
            if v in values:
                return {name: v}
    return None


__all__ = ["StampingVisitor", "collect", "merge_stamps", "revoke_values", "revoked_by"]
