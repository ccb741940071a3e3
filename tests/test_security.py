"""Security: AUTH and ACL users from the URL, TLS with rediss://, registered tasks only."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
import redis

from conftest import free_port, wait_for
from fastq import FastQ


def _producer(url: str) -> FastQ:
    app = FastQ("client", broker=url)
    return app


def test_password_in_the_url_is_used_and_never_logged(redis_server, worker):
    # Given a Redis that requires a password
    server = redis_server("--requirepass", "pa55-w0rd")
    url = f"redis://:pa55-w0rd@127.0.0.1:{server.port}/0"
    # When a worker and a producer use it from the URL
    w = worker("-P", "solo", broker=url)
    assert _producer(url).send_task("tests.add", args=(2, 3)).get(timeout=30) == 5
    # Then the password never appears in the worker's output
    assert "pa55-w0rd" not in w.log()
    assert "***" in w.log()


def test_a_restricted_acl_user_is_enough(redis_server, worker):
    # Given an ACL user limited to fastq's keys and denied the dangerous commands
    # (FLUSHALL, KEYS, CONFIG, DEBUG, ...): scripts cannot widen what it may do
    server = redis_server()
    admin = redis.Redis(port=server.port)
    admin.execute_command("ACL", "SETUSER", "fq", "on", ">s3cret", "~fastq:*", "&*", "+@all", "-@dangerous")
    url = f"redis://fq:s3cret@127.0.0.1:{server.port}/0"
    with pytest.raises(redis.ResponseError):
        redis.Redis.from_url(url).flushall()
    # When a worker and a producer run tasks as that user
    w = worker("-c", "1", broker=url)
    app = _producer(url)
    assert app.send_task("tests.add", args=(20, 22)).get(timeout=30) == 42
    failed = app.send_task("tests.fail", args=("as fq",))
    with pytest.raises(ValueError):
        failed.get(timeout=30)
    # Then everything worked without a permission error
    assert "NOPERM" not in w.log()


def _make_certs(tmp: Path, name: str) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 signed by it."""
    ca_key, ca_crt = tmp / f"{name}-ca.key", tmp / f"{name}-ca.crt"
    key, csr, crt = tmp / f"{name}.key", tmp / f"{name}.csr", tmp / f"{name}.crt"
    ext = tmp / f"{name}.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    run = lambda *a: subprocess.run(a, check=True, capture_output=True)  # noqa: E731
    run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={name} test CA",
        "-keyout", str(ca_key), "-out", str(ca_crt))
    run("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out", str(csr))
    run("openssl", "x509", "-req", "-in", str(csr), "-CA", str(ca_crt), "-CAkey", str(ca_key), "-CAcreateserial",
        "-days", "2", "-extfile", str(ext), "-out", str(crt))
    return ca_crt, crt, key


@pytest.fixture
def tls_server(tmp_path):
    ca, crt, key = _make_certs(tmp_path, "server")
    other_ca, _, _ = _make_certs(tmp_path, "other")
    port = free_port()
    proc = subprocess.Popen(["redis-server", "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
                             "--tls-cert-file", str(crt), "--tls-key-file", str(key), "--tls-ca-cert-file", str(ca),
                             "--tls-auth-clients", "no", "--save", "", "--dir", str(tmp_path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={ca}&ssl_cert_reqs=required"

    def up():
        try:
            return redis.Redis.from_url(url).ping()
        except redis.ConnectionError:
            return False

    try:
        wait_for(up, 20, message="TLS redis-server")
        yield url, f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={other_ca}&ssl_cert_reqs=required"
    finally:
        proc.kill()
        proc.wait(10)


def test_tls_with_certificate_verification(tls_server, worker):
    url, _ = tls_server
    # When the worker and the producer talk to Redis over TLS, verifying its certificate
    worker("-c", "1", broker=url)
    app = _producer(url)
    # Then tasks run end to end, results included, and bulk sends too
    assert app.send_task("tests.add", args=(1, 2)).get(timeout=30) == 3
    from fastq.canvas import Signature

    results = app.send_many(Signature("tests.echo", (i,)) for i in range(200))
    from fastq import ResultSet

    assert ResultSet(results, app=app).get(timeout=60) == list(range(200))


def test_tls_with_the_wrong_ca_fails_closed(tls_server, worker):
    url, wrong = tls_server
    # When a worker is given a CA that did not sign the server's certificate
    w = worker("-P", "solo", broker=wrong, wait=False)
    # Then it refuses to connect and exits, saying so in one line, and no task runs through it
    assert w.proc.wait(60) != 0
    assert "Error: Redis at" in w.log() and "is unreachable" in w.log()
    assert "certificate verify failed" in w.log() or "CERTIFICATE_VERIFY_FAILED" in w.log()
    assert "Traceback" not in w.log()
    r = _producer(url).send_task("tests.add", args=(1, 1))
    time.sleep(1.0)
    assert r.state == "PENDING"


def test_a_message_naming_an_unregistered_function_is_never_imported(redis_url, r, worker, ledger):
    # Given a message that names a module function instead of a registered task
    app = FastQ("attacker", broker=redis_url)
    res = app.send_task("os.system", args=("touch /tmp/fastq-pwned",))
    w = worker("-P", "solo")
    # Then it is dead-lettered as unknown_task, never imported or run
    wait_for(lambda: res.state == "FAILURE", 30, message="FAILURE")
    entries = r.xrange("fastq:{default}:dlq")
    assert [e[1][b"reason"] for e in entries] == [b"unknown_task"]
    assert not Path("/tmp/fastq-pwned").exists()
    assert "os.system" in w.log()
