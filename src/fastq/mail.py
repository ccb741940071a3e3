"""E-mail on task failure.

Configure with settings::

    app.conf.error_email_to = ["ops@example.com"]
    app.conf.error_email_from = "fastq@example.com"
    app.conf.error_email_smtp_url = "smtp+starttls://user:secret@mail.example.com:587"
    app.conf.task_send_error_emails = True        # or @app.task(send_error_emails=True)

URL schemes: ``smtp://`` (plain, port 25), ``smtps://`` (TLS from the start,
port 465), ``smtp+starttls://`` (STARTTLS, port 587); user and password in the
URL log in. ``?cafile=/path/ca.pem`` trusts a private CA.

The worker never waits for mail: a failure is put on a bounded in-memory queue
and a daemon thread formats and sends it, with ``error_email_timeout``. Mail is
throttled per task name, across all workers (a Redis key per name): at most one
e-mail per ``error_email_interval`` seconds; the failures in between are
counted and the next e-mail says how many were folded into it. A broken SMTP
server is logged once, not per failure.

Layer: api (the producer side); imports base and broker, never ``fastq.worker`` or the apps.
"""

from __future__ import annotations

import logging
import os
import queue
import reprlib
import smtplib
import ssl
import threading
import time
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from urllib.parse import parse_qs, unquote, urlsplit

from .broker.redis import CONNECTION_ERRORS
from .exceptions import ImproperlyConfigured

log = logging.getLogger("fastq.mail")

#: Failures waiting for the mail thread; more are dropped (and counted).
QUEUE_SIZE = 1000
#: Longest rendering of the arguments and of the traceback in an e-mail.
MAX_ARGS = 2000
MAX_TRACEBACK = 20000

_SCHEMES = {"smtp": 25, "smtps": 465, "smtp+starttls": 587}


class SMTPConfig:
    """A parsed ``error_email_smtp_url``."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme not in _SCHEMES:
            raise ImproperlyConfigured(
                f"error_email_smtp_url must start with smtp://, smtps:// or smtp+starttls://, not {parts.scheme}://"
            )
        self.scheme = parts.scheme
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or _SCHEMES[parts.scheme]
        self.user = unquote(parts.username) if parts.username else None
        self.password = unquote(parts.password) if parts.password else None
        self.cafile = (parse_qs(parts.query).get("cafile") or [None])[0]

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.cafile)

    def send(self, message: EmailMessage, timeout: float) -> None:
        if self.scheme == "smtps":
            smtp: smtplib.SMTP = smtplib.SMTP_SSL(self.host, self.port, timeout=timeout, context=self.ssl_context())
        else:
            smtp = smtplib.SMTP(self.host, self.port, timeout=timeout)
        try:
            if self.scheme == "smtp+starttls":
                smtp.starttls(context=self.ssl_context())
            if self.user:
                smtp.login(self.user, self.password or "")
            smtp.send_message(message)
        finally:
            try:
                smtp.quit()
            except (smtplib.SMTPException, OSError):
                smtp.close()


def _short(value, limit: int) -> str:
    r = reprlib.Repr()
    r.maxstring = r.maxother = limit
    r.maxlist = r.maxtuple = r.maxdict = 50
    text = r.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class Mailer:
    """Sends failure e-mails for one worker process, from a background thread."""

    def __init__(self, app, hostname: str) -> None:
        conf = app.conf
        self.app = app
        self.hostname = hostname
        self.to = [conf.error_email_to] if isinstance(conf.error_email_to, str) else list(conf.error_email_to)
        self.sender = conf.error_email_from
        self.smtp = SMTPConfig(conf.error_email_smtp_url)
        self.interval = float(conf.error_email_interval)
        self.timeout = float(conf.error_email_timeout)
        self.default = bool(conf.task_send_error_emails)
        self.redact = conf.get("error_email_redact")
        self._queue: queue.Queue = queue.Queue(QUEUE_SIZE)
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._pid = 0
        self._client = None
        self._failing = False
        self._dropped = 0
        #: Used only while Redis cannot be reached: name -> (window end, folded).
        self._local: dict[str, list] = {}
        #: E-mails sent by this process (for tests and ``inspect stats``).
        self.sent = 0

    def wants(self, task) -> bool:
        flag = getattr(task, "send_error_emails", None)
        return self.default if flag is None else bool(flag)

    # --- called by the worker (must never block) ------------------------------------

    def task_failed(self, task, msg, exc: BaseException, tb: str, queue_name: str | None = None) -> None:
        """Queue a failure for the mail thread; returns at once."""
        if not self.wants(task):
            return
        if self._pid != os.getpid():  # started lazily, in the process that fails (pool children fork)
            with self._start_lock:
                if self._pid != os.getpid():
                    self._start()
        item = (time.time(), msg.task, msg.id, msg.args, msg.kwargs, msg.retries, queue_name,
                f"{type(exc).__name__}: {exc}", tb)
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            self._dropped += 1

    def _start(self) -> None:
        self._pid = os.getpid()
        self._queue = queue.Queue(QUEUE_SIZE)
        self._client = None
        self._thread = threading.Thread(target=self._run, name="fastq-mail", daemon=True)
        self._thread.start()

    # --- the mail thread ------------------------------------------------------------

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            try:
                self._handle(*item)
            except Exception:
                log.exception("Failure e-mail could not be prepared")

    def _handle(self, when, name, task_id, args, kwargs, retries, queue_name, error, tb) -> None:
        folded = self._claim(name)
        if folded is None:
            return  # throttled: counted, and told in the next e-mail
        message = self.format(when, name, task_id, args, kwargs, retries, queue_name, error, tb, folded)
        try:
            self.smtp.send(message, self.timeout)
        except (smtplib.SMTPException, OSError) as exc:  # timeouts and TLS errors are OSErrors
            if not self._failing:
                log.error("Cannot send failure e-mail through %s:%s (%s); further errors are not logged until one is sent",
                          self.smtp.host, self.smtp.port, exc)
                self._failing = True
            return
        self.sent += 1
        if self._failing:
            log.warning("Failure e-mails are being sent again")
            self._failing = False

    def _claim(self, name: str) -> int | None:
        """Take this task name's e-mail slot for the interval. Returns the number of
        failures folded since the last e-mail, or None when the slot is taken (the
        failure is then counted for the next e-mail)."""
        try:
            if self._client is None:  # short timeouts: a slow Redis must not hold up the failure path
                self._client = self.app.broker.new_client(socket_timeout=5, socket_connect_timeout=5)
            return self.app.broker.claim_mail_slot(name, self.hostname, self.interval, self._client)
        except CONNECTION_ERRORS:
            now = time.monotonic()
            state = self._local.setdefault(name, [0.0, 0])
            if now >= state[0]:
                folded, state[0], state[1] = state[1], now + self.interval, 0
                return folded
            state[1] += 1
            return None

    def format(self, when, name, task_id, args, kwargs, retries, queue_name, error, tb, folded) -> EmailMessage:
        """The e-mail for one failure (arguments truncated, redacted by ``error_email_redact``)."""
        if self.redact is not None:
            try:
                args, kwargs = self.redact(name, args, kwargs)
            except Exception:  # noqa: BLE001 - never leak what the hook was meant to hide
                args, kwargs = ["<error_email_redact failed>"], {}
        lines = [
            f"Task {name} with id {task_id} raised an exception on {self.hostname}:",
            "",
            f"    {error[:MAX_ARGS]}",
            "",
            f"Task:      {name}",
            f"Id:        {task_id}",
            f"Worker:    {self.hostname}",
            f"Queue:     {queue_name or '?'}",
            f"Retries:   {retries}",
            f"When:      {formatdate(when, localtime=False)}",
            f"Args:      {_short(args, MAX_ARGS)}",
            f"Kwargs:    {_short(kwargs, MAX_ARGS)}",
        ]
        if folded:
            lines += ["", f"{folded} more failure(s) of {name} were folded into this e-mail "
                          f"(at most one e-mail per {self.interval:g} s per task)."]
        if self._dropped:
            lines += ["", f"{self._dropped} failure(s) were not mailed: the mail queue was full."]
            self._dropped = 0
        trace = tb if len(tb) <= MAX_TRACEBACK else "...\n" + tb[-MAX_TRACEBACK:]
        lines += ["", "Traceback:", "", trace]
        m = EmailMessage()
        subject_error = error.splitlines()[0] if error else "error"
        folded_note = f" (+{folded} more)" if folded else ""
        m["Subject"] = f"[fastq] Task {name} failed{folded_note}: {subject_error}"[:250]
        m["From"] = self.sender
        m["To"] = ", ".join(self.to)
        m["Date"] = formatdate(localtime=False)
        m["Message-ID"] = make_msgid(domain="fastq")
        m["X-Fastq-Task"] = name
        m["X-Fastq-Task-Id"] = task_id
        m.set_content("\n".join(lines))
        return m


def mailer_for(app, hostname: str) -> Mailer | None:
    """A Mailer when failure e-mail is configured (``error_email_to`` and, globally
    or on some task, ``send_error_emails``), else None."""
    conf = app.conf
    if not conf.get("error_email_to"):
        return None
    if not conf.get("task_send_error_emails") and not any(
        getattr(t, "send_error_emails", None) for t in app.tasks.values()
    ):
        return None
    return Mailer(app, hostname)


__all__ = ["Mailer", "SMTPConfig", "mailer_for"]
