"""The dashboard's web app (Starlette) and its JSON API.

Pages (``/``, ``/workers``, ``/queues``, ``/queues/<q>``, ``/tasks``,
``/tasks/<id>``) all serve one HTML shell; ``static/app.js`` draws them from the
API below. Reads are GET, changes are POST with the header ``X-CSRF-Token``
(``GET /api/csrf`` gives it; the page reads it from a meta tag).

API (JSON):

- ``GET  /api/overview``                      counts for the header
- ``GET  /api/workers``                       registry: online, pool, concurrency, processed, failed, active, rss, load
- ``POST /api/workers/<host>/pool_grow``      ``{"n": 1}``; also ``pool_shrink``, ``shutdown``
- ``GET  /api/workers/<host>``                inspect stats/active/registered of one worker
- ``GET  /api/queues``                        waiting, in_flight, delayed, dead, rate_in, rate_out
- ``GET  /api/queues/<q>/dlq``                dead letters with their reasons
- ``POST /api/queues/<q>/dlq/requeue``        ``{"ids": [...]}`` or ``{"all": true}``
- ``GET  /api/tasks?state=&name=&search=&limit=``  recent tasks, newest first
- ``GET  /api/tasks/<id>``                    detail: result or exception and traceback, args, parent/children
- ``POST /api/tasks/<id>/revoke``             ``{"terminate": false}``
- ``POST /api/tasks/<id>/retry``              send the task again (new id) with the same arguments
- ``GET  /api/stats?minutes=10``              chart series: tasks per second, queue lengths
- ``GET  /metrics``                           Prometheus; ``GET /healthcheck``

Layer: apps; may import any layer.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hmac
import logging
import secrets
import socket
import time
from importlib import resources
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from .. import states
from ..broker.connect import describe_error
from ..broker.keys import validate_queue_name
from ..broker.redis import CONNECTION_ERRORS
from ..control import request_info
from ..exceptions import BrokerError, ImproperlyConfigured
from ..messages import decode_fields
from ..metrics import exposition
from ..monitor import locate_task, queue_rows, workers
from .state import DashboardState

#: Most stream entries scanned to find a queued message by id.
SCAN_LIMIT = 5000

_SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; "
                               "form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
}


class BasicAuth:
    """ASGI middleware: every request needs ``Authorization: Basic`` with these credentials."""

    def __init__(self, app, credentials: str) -> None:
        self.app = app
        self.expected = credentials.encode()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        header = dict(scope.get("headers") or []).get(b"authorization", b"")
        given = b""
        if header[:6].lower() == b"basic ":
            with contextlib.suppress(binascii.Error, ValueError):
                given = base64.b64decode(header[6:].strip(), validate=True)
        if not hmac.compare_digest(given, self.expected):
            response = PlainTextResponse("authentication required", status_code=401,
                                         headers={"WWW-Authenticate": 'Basic realm="fastq", charset="UTF-8"'})
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


#: Host names a dashboard always answers to (a browser on the same machine).
LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")


def allowed_host_names(address: str | None, extra: list[str] | tuple[str, ...] = ()) -> set[str]:
    """The Host names a dashboard bound to ``address`` serves: localhost, the
    address itself (unless it is a wildcard) and the names given."""
    names = {*LOCAL_HOSTS, *(h.strip().lower() for h in extra if h.strip())}
    if address and address not in ("0.0.0.0", "::", ""):
        names.add(address.lower().strip("[]"))
    return names


def host_name(header: bytes) -> str:
    """The name in a Host header, without the port ("[::1]:5555" -> "::1")."""
    host = header.decode("latin-1").strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else ""
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


class HostCheck:
    """ASGI middleware: answer only requests whose Host header names this dashboard.
    Binding to 127.0.0.1 does not stop DNS rebinding (a page of evil.example
    whose name is re-pointed at 127.0.0.1 reaches the port, with Host:
    evil.example); checking the name does. ``"*"`` among the names turns it off."""

    def __init__(self, app, names: set[str]) -> None:
        self.app = app
        self.names = names
        self.any = "*" in names

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or self.any:
            await self.app(scope, receive, send)
            return
        header = dict(scope.get("headers") or []).get(b"host", b"")
        if host_name(header) not in self.names:
            response = PlainTextResponse("unknown Host: give the dashboard this name with --allow-host",
                                         status_code=421)
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


class SecurityHeaders:
    """ASGI middleware adding CSP and friends to every response."""

    def __init__(self, app) -> None:
        self.app = app
        self.headers = [(k.lower().encode(), v.encode()) for k, v in _SECURITY_HEADERS.items()]

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = list(message["headers"]) + self.headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


class BadRequest(Exception):
    """A query parameter or body field the API cannot use: answered with 400."""


def _int_param(value: Any, name: str, default: int, low: int, high: int) -> int:
    """A whole-number parameter, clamped to [low, high]; anything else is a 400."""
    if value is None or value == "":
        return default
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise BadRequest(f"{name} must be a whole number, not {str(value)[:50]!r}") from None
    return max(low, min(n, high))


def _jsonable(value: Any, depth: int = 0) -> Any:
    """Task arguments and results as JSON (bytes and unknown types as text)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if depth > 20:
        return repr(value)
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, dict):
        return {str(k): _jsonable(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_jsonable(v, depth + 1) for v in value]
    return repr(value)


class Dashboard:
    """The routes, bound to one fastq app and one DashboardState."""

    def __init__(self, app, state: DashboardState, csrf_token: str | None = None) -> None:
        self.app = app
        self.state = state
        self.csrf_token = csrf_token or secrets.token_urlsafe(32)
        index = resources.files("fastq.dashboard").joinpath("static/index.html").read_text()
        self.index_html = index.replace("{{csrf_token}}", self.csrf_token)

    # --- helpers ---------------------------------------------------------------------

    def _check_csrf(self, request: Request) -> Response | None:
        token = request.headers.get("x-csrf-token", "")
        if not hmac.compare_digest(token.encode(), self.csrf_token.encode()):
            return JSONResponse({"error": "missing or wrong X-CSRF-Token (GET /api/csrf)"}, status_code=403)
        origin = request.headers.get("origin")
        if origin and origin != f"{request.url.scheme}://{request.headers.get('host', '')}":
            return JSONResponse({"error": "cross-origin request refused"}, status_code=403)
        return None

    @staticmethod
    async def _body(request: Request) -> dict:
        try:
            data = await request.json()
        except ValueError:
            return {}
        return data if isinstance(data, dict) else {}

    # --- pages -------------------------------------------------------------------------

    def page(self, request: Request) -> Response:
        return HTMLResponse(self.index_html, headers={"Cache-Control": "no-store"})

    def healthcheck(self, request: Request) -> Response:
        return PlainTextResponse("OK")

    def metrics(self, request: Request) -> Response:
        body, content_type = exposition(self.state.registry)
        return Response(body, media_type=content_type)

    def csrf(self, request: Request) -> Response:
        return JSONResponse({"token": self.csrf_token}, headers={"Cache-Control": "no-store"})

    # --- overview and workers ----------------------------------------------------------

    def overview(self, request: Request) -> Response:
        ws = workers(self.app)
        series = self.state.task_series(60)
        return JSONResponse({
            "workers_online": sum(1 for w in ws if w["online"]),
            "workers_offline": sum(1 for w in ws if not w["online"]),
            "succeeded_last_minute": sum(r[1] for r in series),
            "failed_last_minute": sum(r[2] for r in series),
            "queues": len(self.app.broker.known_queues()),
            "broker": self.app.broker_safe_url,
            "time": time.time(),
        })

    def workers(self, request: Request) -> Response:
        return JSONResponse(_jsonable(workers(self.app)))

    def worker_detail(self, request: Request) -> Response:
        host = request.path_params["host"]
        i = self.app.control.inspect([host], timeout=2.0)
        return JSONResponse(_jsonable({
            "stats": i.stats().get(host), "active": i.active().get(host), "registered": i.registered().get(host),
        }))

    async def worker_action(self, request: Request) -> Response:
        refused = self._check_csrf(request)
        if refused:
            return refused
        host, action = request.path_params["host"], request.path_params["action"]
        body = await self._body(request)
        control = self.app.control
        if action == "pool_grow":
            n = _int_param(body.get("n"), "n", 1, 1, 1000)
            call = lambda: control.pool_grow(n, [host], reply=True, timeout=2.0)  # noqa: E731
        elif action == "pool_shrink":
            n = _int_param(body.get("n"), "n", 1, 1, 1000)
            call = lambda: control.pool_shrink(n, [host], reply=True, timeout=2.0)  # noqa: E731
        elif action == "shutdown":
            call = lambda: control.shutdown([host], reply=True, timeout=2.0)  # noqa: E731
        else:
            return JSONResponse({"error": f"unknown action {action!r}"}, status_code=404)

        replies = await run_in_threadpool(call)
        merged = {k: v for r in replies or [] for k, v in r.items()}
        if host not in merged:
            return JSONResponse({"error": f"{host} did not answer"}, status_code=504)
        return JSONResponse({"reply": merged[host]})

    # --- queues ------------------------------------------------------------------------

    def queues(self, request: Request) -> Response:
        return JSONResponse(queue_rows(self.app, self.state.queue_rates))

    def dlq(self, request: Request) -> Response:
        queue = request.path_params["queue"]
        try:
            validate_queue_name(queue)
        except ImproperlyConfigured as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        limit = _int_param(request.query_params.get("limit"), "limit", 100, 1, 1000)
        rows = []
        for item in self.app.broker.dlq_list(queue, limit):
            payload = item.pop("payload", b"")
            field = b"p" if item.pop("serializer", "msgpack") == "msgpack" else b"j"
            msg = decode_fields({field: payload}) if payload else None
            item["task"] = _jsonable(request_info(msg, queue)) if msg is not None else None
            rows.append(item)
        return JSONResponse({"queue": queue, "items": rows, "total": self.app.broker.queue_stats(queue)["dead"]})

    async def dlq_requeue(self, request: Request) -> Response:
        refused = self._check_csrf(request)
        if refused:
            return refused
        queue = request.path_params["queue"]
        try:
            validate_queue_name(queue)
        except ImproperlyConfigured as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        body = await self._body(request)
        ids = None if body.get("all") else [str(i) for i in body.get("ids") or []]
        if ids is not None and not ids:
            return JSONResponse({"error": "give ids or all=true"}, status_code=400)

        moved = await run_in_threadpool(self.app.broker.dlq_requeue, queue, ids)
        return JSONResponse({"requeued": moved})

    # --- tasks -------------------------------------------------------------------------

    def tasks(self, request: Request) -> Response:
        q = request.query_params
        limit = _int_param(q.get("limit"), "limit", 100, 1, 1000)
        dead = self.state.dead_tasks()
        items, total = self.state.recent(q.get("state") or None, q.get("name") or None, q.get("search") or None, limit,
                                         dead=dead)
        names = sorted(set(self.state.task_names()) | {t["name"] for t in dead if t["name"]})
        return JSONResponse({"tasks": items, "total": total, "names": names})

    def task(self, request: Request) -> Response:
        task_id = request.path_params["task_id"]
        return JSONResponse(_jsonable(self.task_detail(task_id)))

    def task_detail(self, task_id: str) -> dict:
        """Everything known about one task: stored result, last event, the message
        if it is still queued (its arguments), revoke flag, parent and children."""
        out: dict[str, Any] = {"id": task_id}
        meta = self.app.backend.get_meta(task_id)
        event = self.state.event_record(task_id)
        request = None
        if meta is not None:
            out.update(state=meta.state, name=meta.task, result=meta.result if meta.exc_type is None else None,
                       exc_type=meta.exc_type, exc_message=meta.exc_message, traceback=meta.traceback,
                       date_done=meta.date_done, runtime=meta.runtime, hostname=meta.hostname, retries=meta.retries,
                       children=list(meta.children or []))
            extra = dict(meta.meta or {})
            request = extra.pop("request", None)
            if extra:
                out["meta"] = extra
        location = self._locate(task_id) if meta is None or meta.state not in states.READY_STATES else None
        if location is not None:
            out["location"] = location
            request = request or location.get("request")
            if meta is None:
                out["state"] = location["state"]
        if event is not None:
            out["event"] = event
            out.setdefault("name", event.get("name"))
            if "state" not in out:
                out["state"] = event["state"]
        out.setdefault("state", states.PENDING)
        if request:
            out["args"], out["kwargs"] = request.get("args"), request.get("kwargs")
            out["parent_id"], out["root_id"] = request.get("parent_id"), request.get("root_id")
            out["name"] = out.get("name") or request.get("name")
        out["arguments_known"] = request is not None
        out["revoked"] = self.app.broker.is_revoked(task_id)
        out["children"] = sorted(set(out.get("children") or []) | set(self._children(task_id)))
        return out

    def _locate(self, task_id: str) -> dict | None:
        return locate_task(self.app, task_id, SCAN_LIMIT)

    def _children(self, task_id: str) -> list[str]:
        """Children among recent tasks, from their extended results (``result_extended``)."""
        parents = self.state.parents
        with self.state.lock:
            unknown = [i for i in self.state.recent_ids(lock=False) if i not in parents]
        metas = self.app.backend.get_many(unknown) if unknown else []
        with self.state.lock:
            for i, meta in zip(unknown, metas):
                if meta is not None:  # not final yet: look again next time
                    parents[i] = ((meta.meta or {}).get("request") or {}).get("parent_id")
            while len(parents) > 50_000:
                parents.popitem(last=False)
            return [i for i, p in parents.items() if p == task_id]

    async def revoke(self, request: Request) -> Response:
        refused = self._check_csrf(request)
        if refused:
            return refused
        task_id = request.path_params["task_id"]
        body = await self._body(request)

        replies = await run_in_threadpool(
            lambda: self.app.control.revoke(task_id, terminate=bool(body.get("terminate")), reply=True, timeout=1.0))
        return JSONResponse({"revoked": task_id, "replies": _jsonable(replies)})

    async def retry(self, request: Request) -> Response:
        refused = self._check_csrf(request)
        if refused:
            return refused
        task_id = request.path_params["task_id"]

        detail = await run_in_threadpool(self.task_detail, task_id)
        if not detail.get("arguments_known") or not detail.get("name"):
            return JSONResponse({"error": "the task's arguments are not known (set result_extended = True)"},
                                status_code=409)
        queue = (detail.get("location") or {}).get("queue")
        options = {"queue": queue} if queue else {}
        res = await run_in_threadpool(lambda: self.app.send_task(detail["name"], detail.get("args") or [],
                                                                 detail.get("kwargs") or {}, **options))
        return JSONResponse({"task_id": res.id, "retry_of": task_id})

    # --- charts ------------------------------------------------------------------------

    def stats(self, request: Request) -> Response:
        minutes = _int_param(request.query_params.get("minutes"), "minutes", 10, 1, 15)
        return JSONResponse({"tasks": self.state.task_series(minutes * 60),
                             "queues": self.state.queue_series(minutes * 60)})

    # --- the app -----------------------------------------------------------------------

    def routes(self) -> list:
        static = resources.files("fastq.dashboard").joinpath("static")
        page = self.page
        return [
            Route("/", page), Route("/workers", page), Route("/queues", page), Route("/queues/{queue}", page),
            Route("/tasks", page), Route("/tasks/{task_id}", page),
            Route("/healthcheck", self.healthcheck), Route("/metrics", self.metrics),
            Route("/api/csrf", self.csrf), Route("/api/overview", self.overview),
            Route("/api/workers", self.workers), Route("/api/workers/{host}", self.worker_detail),
            Route("/api/workers/{host}/{action}", self.worker_action, methods=["POST"]),
            Route("/api/queues", self.queues), Route("/api/queues/{queue}/dlq", self.dlq),
            Route("/api/queues/{queue}/dlq/requeue", self.dlq_requeue, methods=["POST"]),
            Route("/api/tasks", self.tasks), Route("/api/tasks/{task_id}", self.task),
            Route("/api/tasks/{task_id}/revoke", self.revoke, methods=["POST"]),
            Route("/api/tasks/{task_id}/retry", self.retry, methods=["POST"]),
            Route("/api/stats", self.stats),
            Mount("/static", StaticFiles(directory=str(static)), name="static"),
        ]


def create_app(app, basic_auth: str | None = None, state: DashboardState | None = None,
               allowed_hosts: list[str] | tuple[str, ...] = (), address: str | None = None):
    """The dashboard as an ASGI app (mountable in your own ASGI server).

    ``basic_auth="user:password"`` protects every page and API call. Only
    requests whose Host is localhost, ``address`` or one of ``allowed_hosts``
    are answered (``["*"]``: any). The state (event tail, samplers) starts and
    stops with the ASGI lifespan."""
    state = state or DashboardState(app)
    dash = Dashboard(app, state)

    @contextlib.asynccontextmanager
    async def lifespan(_):
        state.start()
        try:
            yield
        finally:
            state.stop()

    async def bad_request(request: Request, exc: Exception) -> Response:
        return JSONResponse({"error": str(exc)}, status_code=400)

    async def redis_down(request: Request, exc: Exception) -> Response:
        # Redis went away (or refuses us) after start-up: say so, and let the page retry
        message = describe_error(exc, app.broker_url) or " ".join(str(exc).split())
        return JSONResponse({"error": message}, status_code=503)

    handlers: dict[Any, Any] = {BadRequest: bad_request, BrokerError: redis_down}
    handlers.update({cls: redis_down for cls in CONNECTION_ERRORS})
    asgi = Starlette(routes=dash.routes(), lifespan=lifespan, exception_handlers=handlers)
    asgi.state.dashboard = dash
    wrapped: Any = SecurityHeaders(asgi)
    if basic_auth:
        wrapped = BasicAuth(wrapped, basic_auth)
    return HostCheck(wrapped, allowed_host_names(address, allowed_hosts))  # first: before auth is even asked


def serve(app, address: str = "127.0.0.1", port: int = 5555, basic_auth: str | None = None,
          log_level: str = "warning", allowed_hosts: list[str] | tuple[str, ...] = ()) -> None:
    """Run the dashboard with uvicorn until interrupted. The socket is bound
    first: a port in use raises OSError before anything says the dashboard runs."""

    family = socket.getaddrinfo(address, port, type=socket.SOCK_STREAM)[0][0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: TIME_WAIT is no conflict
        sock.bind((address, port))
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    port = sock.getsockname()[1]
    logging.getLogger("fastq.dashboard").warning("fastq dashboard on http://%s:%d/ (broker %s)", address, port,
                                                 app.broker_safe_url)
    asgi = create_app(app, basic_auth, allowed_hosts=allowed_hosts, address=address)
    config = uvicorn.Config(asgi, log_level=log_level, access_log=False, lifespan="on")
    uvicorn.Server(config).run(sockets=[sock])
