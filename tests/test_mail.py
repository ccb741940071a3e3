"""E-mail on task failure, against a real SMTP server (aiosmtpd) and real workers."""

from __future__ import annotations

import os
import socket
import threading
import time

import pytest

from conftest import free_port, wait_for

if not os.environ.get("CI"):  # in CI a missing dependency must fail, not skip
    pytest.importorskip("aiosmtpd", reason="pip install aiosmtpd")
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from fastq import states
from fastq.mail import SMTPConfig

APP = "tests.apps.monitoring:app"


class Inbox:
    """aiosmtpd handler keeping every message."""

    def __init__(self) -> None:
        self.messages: list = []

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 - aiosmtpd's hook name
        import email

        msg = email.message_from_bytes(envelope.original_content or envelope.content)
        self.messages.append({"from": envelope.mail_from, "to": envelope.rcpt_tos, "msg": msg,
                              "body": msg.get_payload(decode=True).decode(), "authenticated": session.authenticated})
        return "250 OK"


def _authenticate(server, session, envelope, mechanism, auth_data):
    ok = isinstance(auth_data, LoginPassword) and auth_data.login == b"mailer" and auth_data.password == b"s3cret"
    return AuthResult(success=ok)


@pytest.fixture
def smtp():
    inbox = Inbox()
    port = free_port()
    ctl = Controller(inbox, hostname="127.0.0.1", port=port, authenticator=_authenticate, auth_require_tls=False)
    ctl.start()
    inbox.port = port
    yield inbox
    ctl.stop()


@pytest.fixture
def mon(redis_url):
    from tests.apps import monitoring

    monitoring.app.conf.broker_url = redis_url
    monitoring.app._reset()
    return monitoring.app


def test_failure_email_names_everything_and_is_throttled(mon, worker, smtp):
    # Given a worker whose app mails failures to two addresses (with SMTP login), 2 s apart at most
    w = worker("-c", "1", app=APP, env={"FASTQ_TEST_SMTP_URL": f"smtp://mailer:s3cret@127.0.0.1:{smtp.port}",
                                       "FASTQ_TEST_MAIL_INTERVAL": "3"})
    fail = mon.tasks["mon.fail"]
    # When a task with send_error_emails=True fails
    r = fail.delay("database is down", password="hunter2", user="bob")
    r.get(timeout=30, propagate=False)
    # Then one e-mail arrives, naming the task, id, worker, exception, traceback and arguments
    wait_for(lambda: smtp.messages, 30, 0.1, message="an e-mail")
    m = smtp.messages[0]
    assert m["to"] == ["ops@example.com", "dev@example.com"]
    assert m["from"] == "fastq@example.com"
    assert m["authenticated"] is True
    assert "mon.fail" in m["msg"]["Subject"] and "ValueError: database is down" in m["msg"]["Subject"]
    body = m["body"]
    for text in (r.id, w.name, "ValueError: database is down", "Traceback", "raise ValueError(message)",
                 "'database is down'", "'user': 'bob'", "Queue:     default"):
        assert text in body, text
    # And the redaction hook hid the password
    assert "hunter2" not in body and "'password': '***'" in body
    # When it fails 4 more times within the interval
    for _ in range(4):
        fail.delay("again").get(timeout=30, propagate=False)
    time.sleep(0.5)
    # Then no more e-mail: they are folded
    assert len(smtp.messages) == 1
    # And the next failure after the interval says how many were folded into it
    time.sleep(3)
    fail.delay("later").get(timeout=30, propagate=False)
    wait_for(lambda: len(smtp.messages) == 2, 30, 0.1, message="a second e-mail")
    assert "4 more failure(s) of mon.fail were folded into this e-mail" in smtp.messages[1]["body"]
    assert "(+4 more)" in smtp.messages[1]["msg"]["Subject"]


def test_tasks_without_send_error_emails_send_none(mon, worker, smtp):
    # Given mail configured but only per task (task_send_error_emails is off)
    worker("-P", "solo", app=APP, env={"FASTQ_TEST_SMTP_URL": f"smtp://127.0.0.1:{smtp.port}"})
    # When a task with send_error_emails=False fails, and one that succeeds runs
    mon.tasks["mon.fail_quietly"].delay().get(timeout=30, propagate=False)
    assert mon.tasks["mon.add"].delay(1, 2).get(timeout=30) == 3
    # Then no e-mail is sent; a task that asks for it does get one
    mon.tasks["mon.fail"].delay("x").get(timeout=30, propagate=False)
    wait_for(lambda: smtp.messages, 30, 0.1, message="an e-mail")
    time.sleep(0.5)
    assert [m["msg"]["X-Fastq-Task"] for m in smtp.messages] == ["mon.fail"]


def test_a_hanging_smtp_server_never_slows_the_worker(mon, worker):
    # Given an "SMTP server" that accepts connections and never says anything
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(100)
    port = listener.getsockname()[1]
    held: list = []
    stop = threading.Event()

    def accept():
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:
                pass

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    try:
        w = worker("-P", "solo", app=APP, env={"FASTQ_TEST_SMTP_URL": f"smtp://127.0.0.1:{port}",
                                               "FASTQ_TEST_MAIL_INTERVAL": "0.001", "FASTQ_TEST_MAIL_TIMEOUT": "2"})
        # When many tasks fail (each wanting an e-mail) while others run
        fails = [mon.tasks["mon.fail"].delay(f"f{i}") for i in range(30)]
        adds = [mon.tasks["mon.add"].delay(i, 1) for i in range(30)]
        t0 = time.monotonic()
        # Then every task finishes at once: nothing waits for SMTP
        assert [a.get(timeout=30) for a in adds] == [i + 1 for i in range(30)]
        for f in fails:
            f.get(timeout=30, propagate=False)
            assert f.state == states.FAILURE
        # (generous bound: sending 30 e-mails with a 2 s timeout each would take a minute)
        assert time.monotonic() - t0 < 25
        # And the SMTP failure is logged once, not per failure
        wait_for(lambda: "Cannot send failure e-mail" in w.log(), 30, 0.2, message="the SMTP error in the log")
        time.sleep(4)  # a few more timeouts pass
        assert w.log().count("Cannot send failure e-mail") == 1
    finally:
        stop.set()
        t.join(2)
        for c in held:
            c.close()
        listener.close()


def test_smtp_urls():
    c = SMTPConfig("smtps://us%40er:p%3Ass@mail.example.com")
    assert (c.scheme, c.host, c.port, c.user, c.password) == ("smtps", "mail.example.com", 465, "us@er", "p:ss")
    c = SMTPConfig("smtp+starttls://mail.example.com?cafile=/etc/ca.pem")
    assert (c.port, c.user, c.cafile) == (587, None, "/etc/ca.pem")
    assert SMTPConfig("smtp://localhost:2525").port == 2525
    from fastq.exceptions import ImproperlyConfigured

    with pytest.raises(ImproperlyConfigured):
        SMTPConfig("http://mail.example.com")
