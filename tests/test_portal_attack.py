"""The portal under attack: each test repeats one finding of the attack run (issue 10) and must keep
failing to get through. HTTP tests use the app in process (TestClient) or served by uvicorn on
loopback; the login-CSRF test drives Debian's chromium against an attacker page served from a
second loopback origin (127.0.0.2), like test_browser.py (skipped without /usr/bin/chromium).

1 every view of patient data audited; /audit filters and CSV; audit rows append-only
2 argon2 off the event loop, in a bounded pool
3 login CSRF (pre-session token, Origin/Referer check); session rotation on sign-in
4 unknown / wrong / locked answer alike; a stranger cannot lock out an admin; admin unlock;
  failed sign-ins do not add an audit row each
5 Secure cookies and HSTS on TLS, directly or behind a trusted proxy; warning on plain HTTP
6 `?done=` gone (server-side flash)
7 strict IDs and parameters; the HTML error page with security headers for 404/405/500
8 cross-site Origin refused on a valid-token POST; reason codes from the known list
"""

from __future__ import annotations

import csv
import http.server
import io
import os
import re
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import test_portal as base
import uvicorn
from argon2.exceptions import VerifyMismatchError
from click.testing import CliRunner
from fastapi.testclient import TestClient
from sqlalchemy import delete, func, select, update
from test_portal import PASSWORD, audit_count, client, csrf_of, doc_id, login_token, sign_in

from priorauth import accounts
from priorauth.store import AuditRow, CaseRow, Store
from priorauth.tracking import Actor, audit

seeded, portal = base.seeded, base.portal  # the seeded data folder and the app over a copy

CHROMIUM = Path("/usr/bin/chromium")
# The sign-in policy these tests hold the portal to (accounts.py must agree: see the last test).
LOCK_AFTER = 5  # failures of one username from one address, then locked for that address
ADDRESS_LIMIT = 20  # failures from one address in 15 minutes, then the address is refused
LOCKS_MIN = (1, 2, 4, 8, 15, 15)  # successive locks of one pair, in minutes: doubling, capped
SECURITY = {
    "cache-control": "no-store",
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
}


def audit_rows(portal, **where) -> list[AuditRow]:
    with portal["store"].reader() as s:
        stmt = select(AuditRow).order_by(AuditRow.id)
        for key, value in where.items():
            stmt = stmt.where(getattr(AuditRow, key) == value)
        return list(s.scalars(stmt))


def has_security_headers(r: httpx.Response) -> bool:
    return (
        all(r.headers.get(k) == v for k, v in SECURITY.items())
        and "content-security-policy" in r.headers
    )


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@contextmanager
def served(app, host: str = "127.0.0.1") -> Iterator[str]:
    """The app under uvicorn in a thread on loopback; yields its base URL."""
    port = free_port(host)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


# ---- 1: every view of patient data is audited; the log is filtered, exported, append-only -----


def test_every_view_of_patient_data_is_audited(portal) -> None:
    c = client(portal, "pharmacist")
    assert c.get("/cases").status_code == 200
    assert c.get("/cases?q=ms-100").status_code == 200
    assert c.get("/cases/MS-1001").status_code == 200
    assert c.get(f"/documents/{doc_id(portal)}").status_code == 200
    rows = [r for r in audit_rows(portal, actor="pharmacist1") if r.action != "sign_in"]
    assert [r.action for r in rows] == ["queue_view", "search", "case_view", "download"]
    queue, search, case, download = rows
    for case_id in ("MS-1001", "MS-1004", "PID-3001"):  # which cases were on the page
        assert case_id in queue.detail
    assert "MS-1001" in search.detail and "PID-3001" not in search.detail
    assert "q=ms-100" in search.detail
    c.get("/cases", params={"q": "Dana Whitfield"})  # a name typed in the case-ID box
    assert "Whitfield" not in audit_rows(portal, action="search")[-1].detail
    assert (case.case_id, download.case_id) == ("MS-1001", "MS-1001")
    for r in rows:  # who, when, from where
        assert r.role == "pharmacist" and r.client == "testclient" and r.at == portal["clock"].now
        assert "Dana Whitfield" not in (r.detail or "")  # never a patient's name


def test_audit_log_filters_by_user_case_and_action_and_exports_csv(portal) -> None:
    p = client(portal, "pharmacist")
    p.get("/cases/MS-1001")
    p.get("/cases/MS-1004")
    client(portal, "coordinator").get("/cases/MS-1001")
    admin = client(portal, "admin")
    page = admin.get("/audit?user=pharmacist1&case=MS-1001&action=case_view").text
    assert "1 entries" in page and "pharmacist1" in page and "MS-1004" not in page
    assert "coordinator1" not in page.split("<tbody>")[1]
    r = admin.get("/audit.csv?action=case_view")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    assert "attachment" in r.headers["content-disposition"]
    table = list(csv.DictReader(io.StringIO(r.text)))
    assert [(t["user"], t["case_id"]) for t in table] == [
        ("pharmacist1", "MS-1001"),
        ("pharmacist1", "MS-1004"),
        ("coordinator1", "MS-1001"),
    ]
    assert audit_count(portal, "audit_export", "ok") == 1
    # Only admins; a formula typed as a username is exported inert.
    assert client(portal, "coordinator").get("/audit.csv").status_code == 403
    TestClient(portal["app"]).post("/login", data={"username": "=HYPERLINK(1)", "password": "x"})
    with portal["store"].session() as s:
        audit(s, Actor("=cmd|' /C calc'!A0", "portal"), "sign_in", "bad_credentials", START)
    exported = admin.get("/audit.csv?action=sign_in").text
    assert "\n=" not in exported and ",=" not in exported and "'=cmd" in exported


START = datetime(2026, 11, 25, 9, 0, tzinfo=UTC)


def test_audit_rows_cannot_be_changed_or_deleted(db_url: str) -> None:
    from priorauth.store import AuditLogAppendOnly

    store = Store(db_url)
    try:
        with store.session() as s:
            audit(s, Actor("alice", "portal", "admin"), "download", "ok", START, case_id="C-1")
        attempts = {
            "orm update": lambda s: setattr(s.scalars(select(AuditRow)).one(), "actor", "mallory"),
            "orm delete": lambda s: s.delete(s.scalars(select(AuditRow)).one()),
            "bulk update": lambda s: s.execute(update(AuditRow).values(outcome="denied")),
            "bulk delete": lambda s: s.execute(delete(AuditRow)),
        }
        for name, attempt in attempts.items():
            with pytest.raises(AuditLogAppendOnly), store.session() as s:
                attempt(s)
                s.flush()
            assert name
        # Below the ORM, the database's own triggers refuse (TRUNCATE too on PostgreSQL).
        statements = ["UPDATE audit_log SET actor = 'mallory'", "DELETE FROM audit_log"]
        if store.engine.dialect.name == "postgresql":
            statements.append("TRUNCATE audit_log")
        for sql in statements:
            with pytest.raises(Exception, match="append-only"), store.engine.begin() as conn:
                conn.exec_driver_sql(sql)
        with store.reader() as s:
            row = s.scalars(select(AuditRow)).one()
            assert (row.actor, row.outcome, row.case_id) == ("alice", "ok", "C-1")
    finally:
        store.dispose()


# ---- 2: argon2 never holds the event loop; at most HASH_THREADS run at once -------------------


class SlowHasher:
    """argon2's cost made long and visible: verify blocks its thread for `seconds`."""

    def __init__(self, real, seconds: float) -> None:
        self.real, self.seconds = real, seconds
        self.active = self.peak = self.calls = 0
        self.lock = threading.Lock()

    def verify(self, hashed: str, password: str) -> bool:
        with self.lock:
            self.active += 1
            self.calls += 1
            self.peak = max(self.peak, self.active)
        try:
            time.sleep(self.seconds)
            raise VerifyMismatchError("slow mismatch")
        finally:
            with self.lock:
                self.active -= 1

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        return getattr(self.real, name)


def test_a_sign_in_storm_does_not_stall_the_queue(portal, monkeypatch) -> None:
    from priorauth.web import app as web

    slow = SlowHasher(accounts._hasher, 0.6)
    with served(portal["app"]) as base_url:
        reader = httpx.Client(base_url=base_url, timeout=30)
        assert sign_in(reader, "pharmacist1").status_code == 303
        monkeypatch.setattr(accounts, "_hasher", slow)

        def storm(i: int) -> None:
            with httpx.Client(base_url=base_url, timeout=30) as c:
                form = {
                    "username": f"stranger{i}",
                    "password": "wrong password",
                    "login_token": login_token(c),
                }
                for _ in range(2):
                    c.post("/login", data=form)

        threads = [threading.Thread(target=storm, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        time.sleep(0.3)  # the storm's first hashes are running
        took = []
        for _ in range(5):
            t0 = time.perf_counter()
            assert reader.get("/cases").status_code == 200
            took.append(time.perf_counter() - t0)
        for t in threads:
            t.join(timeout=30)
        reader.close()
    assert slow.calls >= 8
    assert max(took) < 0.5, took  # on the event loop, each page waited for 0.6 s hashes
    assert slow.peak <= web.HASH_THREADS


# ---- 3: login CSRF; session rotation ------------------------------------------------------


def test_sign_in_needs_the_forms_token(portal) -> None:
    c = TestClient(portal["app"])
    forged = c.post(
        "/login", data={"username": "pharmacist1", "password": PASSWORD}, follow_redirects=False
    )
    assert forged.status_code == 403 and "pa_session" not in forged.headers.get("set-cookie", "")
    other = TestClient(portal["app"])  # a token from another browser is no good here
    stolen = login_token(other)
    login_token(c)
    r = c.post(
        "/login",
        data={"username": "pharmacist1", "password": PASSWORD, "login_token": stolen},
        follow_redirects=False,
    )
    assert r.status_code == 403
    assert audit_count(portal, "sign_in", "ok") == 0


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "http://evil.example"},
        {"Origin": "null"},
        {"Origin": "http://testserver:8080"},  # another port is another origin
        {"Referer": "http://evil.example/page"},
    ],
)
def test_sign_in_from_another_origin_is_refused(portal, headers) -> None:
    c = TestClient(portal["app"])
    r = sign_in(c, "pharmacist1", headers=headers)
    assert r.status_code == 403 and "pa_session" not in r.headers.get("set-cookie", "")
    assert has_security_headers(r)
    assert sign_in(c, "pharmacist1", headers={"Origin": "http://testserver"}).status_code == 303


def test_signing_in_again_ends_the_browsers_previous_session(portal) -> None:
    c = client(portal, "pharmacist")
    before = dict(c.cookies)
    assert sign_in(c, "coordinator1").status_code == 303
    replay = TestClient(portal["app"], cookies=before)
    assert replay.get("/cases", follow_redirects=False).status_code == 303
    assert c.get("/cases").status_code == 200


@pytest.mark.skipif(not CHROMIUM.is_file(), reason="needs Debian's chromium at /usr/bin/chromium")
def test_login_csrf_from_another_site_in_chromium(portal) -> None:
    """An attacker's page on another loopback origin posts the attacker's own username, password
    and a token from the attacker's own visit to the sign-in page: the victim's browser must not
    end up signed in as the attacker."""
    from playwright.sync_api import sync_playwright
    from test_browser import CHROMIUM_ARGS

    with served(portal["app"]) as portal_url:
        with httpx.Client(base_url=portal_url) as attacker:
            token = login_token(attacker)
        page_html = f"""<!doctype html><title>cute cats</title>
<form id="f" method="post" action="{portal_url}/login">
<input name="username" value="pharmacist1"><input name="password" value="{PASSWORD}">
<input name="login_token" value="{token}"></form>
<script>document.getElementById("f").submit()</script>""".encode()

        class Attacker(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.end_headers()
                self.wfile.write(page_html)

            def log_message(self, *args) -> None:  # type: ignore[no-untyped-def]
                pass

        evil = http.server.ThreadingHTTPServer(("127.0.0.2", 0), Attacker)
        threading.Thread(target=evil.serve_forever, daemon=True).start()
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(
                    executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
                )
                try:
                    context = browser.new_context()
                    context.set_default_timeout(10_000)
                    page = context.new_page()
                    page.goto(f"{portal_url}/login")  # the victim has the portal open already
                    page.goto(f"http://127.0.0.2:{evil.server_address[1]}/")
                    page.wait_for_url(f"{portal_url}/**")
                    page.wait_for_load_state()
                    page.goto(f"{portal_url}/cases")
                    assert page.url == f"{portal_url}/login", page.url
                    assert "pharmacist1" not in page.content()
                    # The victim's own sign-in still works in the same browser.
                    page.get_by_label("Username").fill("coordinator1")
                    page.get_by_label("Password").fill(PASSWORD)
                    page.get_by_role("button", name="Sign in").click()
                    page.wait_for_url(f"{portal_url}/cases")
                finally:
                    browser.close()
        finally:
            evil.shutdown()
    assert [r.actor for r in audit_rows(portal, action="sign_in", outcome="ok")] == ["coordinator1"]


# ---- 4: one answer for unknown, wrong and locked; no lock-out by strangers; bounded audit -----


WRONG = "wrong password!"


def attempt(portal, c: TestClient, username: str, password: str = WRONG) -> tuple:
    before = len(portal["sleeps"])
    t0 = time.perf_counter()
    r = sign_in(c, username, password)
    took = time.perf_counter() - t0
    message = re.search(r'role="alert">([^<]*)<', r.text)
    return (r.status_code, message and message.group(1), portal["sleeps"][before:]), took


def test_unknown_wrong_and_locked_answer_alike(portal) -> None:
    c = TestClient(portal["app"])
    seen: dict[str, list] = {"coordinator1": [], "nobody.here": []}
    times: dict[str, list[float]] = {"coordinator1": [], "nobody.here": []}
    for _ in range(LOCK_AFTER + 2):  # through the lock and beyond
        for name in seen:
            answer, took = attempt(portal, c, name)
            seen[name].append(answer)
            times[name].append(took)
    assert seen["coordinator1"] == seen["nobody.here"]
    assert {a[0] for a in seen["nobody.here"]} == {401}
    # Locked now: even the right password gets the same answer, after the same hashing time.
    locked, locked_took = attempt(portal, c, "coordinator1", PASSWORD)
    assert locked == seen["nobody.here"][-1]
    unknown_took = statistics.median(times["nobody.here"])
    assert 0.5 * unknown_took < locked_took < 2 * unknown_took + 0.1, (locked_took, unknown_took)
    assert 0.5 < statistics.median(times["coordinator1"]) / unknown_took < 2


class InstantHasher:
    """For tests of the lock policy only (not of timing): the seeded password matches, any other
    does not, without argon2's 0.2 s per check."""

    def verify(self, hashed: str, password: str) -> bool:
        if password != PASSWORD:
            raise VerifyMismatchError("mismatch")
        return True

    def check_needs_rehash(self, hashed: str) -> bool:
        return False

    def hash(self, password: str) -> str:
        return "instant"


@pytest.fixture
def instant_hashing(monkeypatch) -> None:
    monkeypatch.setattr(accounts, "_hasher", InstantHasher())


@pytest.mark.usefixtures("instant_hashing")
def test_a_stranger_cannot_lock_an_admin_out(portal, monkeypatch) -> None:
    stranger = TestClient(portal["app"], client=("203.0.113.9", 40000))
    answers = [sign_in(stranger, "admin1", f"guess {i}").status_code for i in range(30)]
    # The admin, elsewhere, signs in at once.
    admin = TestClient(portal["app"], client=("198.51.100.7", 40000))
    assert sign_in(admin, "admin1").status_code == 303
    assert answers[:ADDRESS_LIMIT] == [401] * ADDRESS_LIMIT
    assert set(answers[ADDRESS_LIMIT:]) == {429}  # that address is refused, unhashed
    refused = sign_in(stranger, "admin1")
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) > 0
    # Locks of one username from one address double, up to the cap.
    from priorauth.cli import main
    from priorauth.store import SignInThrottleRow

    clock = portal["clock"]
    pair = TestClient(portal["app"], client=("192.0.2.1", 40000))
    locks = []
    for _ in range(6):
        for _ in range(LOCK_AFTER):
            sign_in(pair, "pharmacist1", "wrong password!")
        with portal["store"].reader() as s:
            row = s.get(SignInThrottleRow, "pair:pharmacist1|192.0.2.1")
            locks.append(row.locked_until - clock.now)
        clock.now = row.locked_until + timedelta(seconds=1)
    assert locks == [timedelta(minutes=m) for m in LOCKS_MIN]
    # An admin ends a lock at once: `priorauth users unlock`.
    for _ in range(LOCK_AFTER):
        sign_in(pair, "pharmacist1", "wrong password!")
    assert sign_in(pair, "pharmacist1").status_code == 401
    monkeypatch.setenv("PRIORAUTH_HOME", str(portal["home"]))
    result = CliRunner().invoke(main, ["users", "unlock", "pharmacist1"])
    assert result.exit_code == 0, result.output
    assert sign_in(pair, "pharmacist1").status_code == 303


@pytest.mark.usefixtures("instant_hashing")
def test_failed_sign_ins_do_not_add_an_audit_row_each(portal) -> None:
    c = TestClient(portal["app"])
    for i in range(ADDRESS_LIMIT + 10):
        sign_in(c, f"user{i % 3}", "wrong password!")
    rows = audit_rows(portal, action="sign_in")
    # the first failure, one per lock, and the address being refused; not one per request
    assert 2 <= len(rows) <= 2 + ADDRESS_LIMIT // LOCK_AFTER, [(r.actor, r.outcome) for r in rows]
    assert {r.outcome for r in rows} >= {"bad_credentials", "throttled"}


# ---- 5: Secure cookies and HSTS on TLS; plain HTTP off loopback warns -------------------------


def test_cookies_are_secure_and_hsts_is_sent_over_https(portal) -> None:
    c = TestClient(portal["app"], base_url="https://testserver")
    form = c.get("/login")
    assert form.headers.get("strict-transport-security", "").startswith("max-age=")
    assert "secure" in form.headers["set-cookie"].lower()
    r = sign_in(c, "pharmacist1")
    assert r.status_code == 303 and "secure" in r.headers["set-cookie"].lower()
    for url in ["/cases", "/nope", "/documents/x"]:
        assert "strict-transport-security" in c.get(url).headers, url
    plain = TestClient(portal["app"]).get("/login")  # plain HTTP: no HSTS, no Secure
    assert "strict-transport-security" not in plain.headers
    assert "secure" not in plain.headers["set-cookie"].lower()


def _self_signed(folder: Path) -> tuple[Path, Path]:
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .sign(key, hashes.SHA256())
    )
    certfile, keyfile = folder / "cert.pem", folder / "key.pem"
    certfile.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    keyfile.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return certfile, keyfile


@contextmanager
def priorauth_serve(home: Path, *options: str) -> Iterator[tuple[int, subprocess.Popen]]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRIORAUTH_")}
    env["PRIORAUTH_HOME"] = str(home)
    command = [
        str(Path(sys.executable).parent / "priorauth"),
        "serve",
        "--port",
        str(port),
        *options,
    ]
    server = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None, server.stdout.read()
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                assert time.monotonic() < deadline, "priorauth serve did not start"
                time.sleep(0.1)
        yield port, server
    finally:
        server.terminate()
        server.communicate(timeout=30)


def test_priorauth_serve_with_tls_and_behind_a_trusted_proxy(portal, tmp_path: Path) -> None:
    pytest.importorskip("cryptography")
    certfile, keyfile = _self_signed(tmp_path)
    with priorauth_serve(
        portal["home"], "--certfile", str(certfile), "--keyfile", str(keyfile)
    ) as (port, _):
        r = httpx.get(f"https://127.0.0.1:{port}/login", verify=str(certfile))
        assert r.status_code == 200 and "secure" in r.headers["set-cookie"].lower()
        assert r.headers["strict-transport-security"].startswith("max-age=")
    forwarded = {"X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.5"}
    with priorauth_serve(portal["home"], "--forwarded-allow-ips", "127.0.0.1") as (port, _):
        r = httpx.get(f"http://127.0.0.1:{port}/login", headers=forwarded)
        assert "secure" in r.headers["set-cookie"].lower()
        assert "strict-transport-security" in r.headers
    with priorauth_serve(portal["home"], "--forwarded-allow-ips", "10.1.2.3") as (port, _):
        r = httpx.get(f"http://127.0.0.1:{port}/login", headers=forwarded)  # not from the proxy
        assert "secure" not in r.headers["set-cookie"].lower()
        assert "strict-transport-security" not in r.headers


def test_plain_http_on_a_non_loopback_address_warns(portal, monkeypatch) -> None:
    import uvicorn as uv

    from priorauth.cli import main

    ran = []
    monkeypatch.setattr(uv, "run", lambda app, **options: ran.append(options))
    monkeypatch.setenv("PRIORAUTH_HOME", str(portal["home"]))
    runner = CliRunner()
    everywhere = "0.0.0.0"  # noqa: S104 (nothing is bound: uvicorn.run is replaced)
    loud = runner.invoke(main, ["serve", "--host", everywhere])
    quiet = runner.invoke(main, ["serve"])
    proxied = runner.invoke(
        main, ["serve", "--host", everywhere, "--forwarded-allow-ips", "10.0.0.2"]
    )
    assert loud.exit_code == quiet.exit_code == proxied.exit_code == 0, loud.output
    assert "WARNING" in loud.output and "plain HTTP" in loud.output
    assert "WARNING" not in quiet.output and "WARNING" not in proxied.output
    assert ran[0]["proxy_headers"] is False and ran[2]["forwarded_allow_ips"] == "10.0.0.2"
    assert runner.invoke(main, ["serve", "--forwarded-allow-ips", "*"]).exit_code == 2


# ---- 6: no message from the URL ---------------------------------------------------------------


def test_messages_come_from_the_server_not_the_url(portal) -> None:
    c = client(portal, "coordinator")
    spoof = "password expired - call IT on 555-0100"
    assert spoof not in c.get("/cases/MS-1001", params={"done": spoof}).text
    r = c.post(
        "/cases/MS-1001/submit",
        data={"method": "fax", "csrf_token": csrf_of(c)},
        follow_redirects=False,
    )
    assert r.status_code == 303 and r.headers["location"] == "/cases/MS-1001"
    assert "Done: submission recorded." in c.get("/cases/MS-1001").text
    assert "Done:" not in c.get("/cases/MS-1001").text  # shown once


# ---- 7: strict parameters; the HTML error page everywhere -------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "/documents/9223372036854775808",  # 2**63: overflowed SQLite's integer (a 500)
        "/documents/99999999999999999999999",
        "/documents/1.0",
        "/documents/+1",
        "/documents/%201",
        "/documents/01",
        "/cases?page=1.0",
        "/cases?page=%2B1",
        "/cases?overdue=yes",
        "/cases?status=nonsense",
        "/no/such/page",
    ],
)
def test_loose_or_unknown_parameters_are_an_html_not_found(portal, url: str) -> None:
    r = client(portal, "admin").get(url)
    assert r.status_code == 404 and r.headers["content-type"].startswith("text/html")
    assert "Not found." in r.text and "%PDF" not in r.text and has_security_headers(r)


def test_405_and_500_are_the_html_error_page(portal, monkeypatch) -> None:
    c = client(portal, "admin")
    r = c.post("/cases", data={})
    assert r.status_code == 405 and r.headers["content-type"].startswith("text/html")
    assert "GET" in r.headers["allow"] and has_security_headers(r)

    def broken(*args, **kwargs):
        raise RuntimeError("secret internals")

    monkeypatch.setattr("priorauth.web.app.case_view", broken)
    r = TestClient(portal["app"], cookies=dict(c.cookies), raise_server_exceptions=False).get(
        "/cases/MS-1001"
    )
    assert r.status_code == 500 and r.headers["content-type"].startswith("text/html")
    assert "secret internals" not in r.text and "Traceback" not in r.text
    assert has_security_headers(r)


# ---- 8: cross-site Origin with a valid token; reason codes from the list ------------------------


def test_a_valid_token_from_another_origin_is_refused(portal) -> None:
    c = client(portal, "coordinator")
    data = {"method": "fax", "csrf_token": csrf_of(c)}
    for headers in ({"Origin": "http://evil.example"}, {"Referer": "http://evil.example/x"}):
        r = c.post("/cases/MS-1001/submit", data=data, headers=headers, follow_redirects=False)
        assert r.status_code == 403 and has_security_headers(r)
    with portal["store"].reader() as s:
        assert s.get(CaseRow, "MS-1001").status == "ready"
    same = c.post(
        "/cases/MS-1001/submit",
        data=data,
        headers={"Origin": "http://testserver"},
        follow_redirects=False,
    )
    assert same.status_code == 303


def test_reason_codes_come_from_the_known_list(portal) -> None:
    c = client(portal, "coordinator")
    token = csrf_of(c)
    c.post("/cases/MS-1001/submit", data={"method": "fax", "csrf_token": token})
    page = c.get("/cases/MS-1001").text
    assert '<select name="reason_code">' in page and '<option value="STEP_THERAPY_NOT_MET">' in page
    free = c.post(
        "/cases/MS-1001/status",
        data={"status": "denied", "reason_code": "call 555-0100 <b>now</b>", "csrf_token": token},
    )
    assert free.status_code == 400
    with portal["store"].reader() as s:
        assert s.get(CaseRow, "MS-1001").status == "submitted"
    ok = c.post(
        "/cases/MS-1001/status",
        data={
            "status": "denied",
            "reason_code": "STEP_THERAPY_NOT_MET",
            "reason": "payer wrote: no trial of first-line therapy",  # free text stays here
            "csrf_token": token,
        },
        follow_redirects=False,
    )
    assert ok.status_code == 303
    with portal["store"].reader() as s:
        assert s.get(CaseRow, "MS-1001").status == "denied"
        assert (
            s.scalar(select(func.count(AuditRow.id)).where(AuditRow.action == "status_change")) >= 1
        )


def test_the_policy_above_is_the_portals() -> None:
    assert (accounts.PAIR_MAX_FAILURES, accounts.ADDRESS_MAX_FAILURES) == (
        LOCK_AFTER,
        ADDRESS_LIMIT,
    )
    assert timedelta(minutes=LOCKS_MIN[0]) == accounts.FIRST_LOCK
    assert timedelta(minutes=LOCKS_MIN[-1]) == accounts.LOCK_CAP


@pytest.mark.usefixtures("instant_hashing")
def test_sign_in_counters_on_both_databases(db_url: str) -> None:
    """The throttle's upserts and row locks on SQLite and PostgreSQL: a pair locks after
    LOCK_AFTER failures, other addresses are unaffected, unlock ends it."""
    store = Store(db_url)
    try:
        with store.session() as s:
            accounts.add_user(s, "admin9", PASSWORD, "admin", START)

        def attempt_from(client: str, password: str) -> accounts.SignIn:
            with store.reader() as s:
                begun = accounts.begin_sign_in(s, "Admin9", client, START)
            checked = accounts.check_password(begun, password)
            with store.session() as s:
                return accounts.finish_sign_in(s, begun, checked, START)

        outcomes = [attempt_from("203.0.113.9", "wrong").outcome for _ in range(LOCK_AFTER + 1)]
        assert outcomes == ["bad_credentials"] * LOCK_AFTER + ["locked"]
        assert attempt_from("203.0.113.9", PASSWORD).outcome == "locked"
        assert attempt_from("198.51.100.7", PASSWORD).outcome == "ok"
        with store.session() as s:
            assert accounts.unlock(s, "admin9", START) == 1
        assert attempt_from("203.0.113.9", PASSWORD).outcome == "ok"
    finally:
        store.dispose()
