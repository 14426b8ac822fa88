"""The staff portal over HTTP: every route for every role, signed-out access, CSRF, traversal
and unknown IDs, audited downloads with the right headers, lockout, session expiry, PHI care."""

from __future__ import annotations

import re
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from conftest import ATTACHMENTS, CASES
from priorauth import accounts
from priorauth.nightly import run_night
from priorauth.settings import load_settings
from priorauth.store import AuditRow, CaseRow, DocumentRow, SessionRow, Store
from priorauth.web.app import create_app

PASSWORD = "correct horse battery staple"
START = datetime(2026, 11, 25, 9, 0, tzinfo=UTC)
CASE_FILES = ["ms-dmt-failure-privigen.yaml", "ms-1004.yaml", "pid-3001.yaml"]


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture(scope="module")
def seeded(tmp_path_factory) -> Path:
    """A data folder with three generated cases and one account per role."""
    home = tmp_path_factory.mktemp("portal") / "home"
    (home / "intake").mkdir(parents=True)
    shutil.copytree(ATTACHMENTS, home / "attachments")
    for name in CASE_FILES:
        shutil.copy(CASES / name, home / "intake" / name)
    settings = load_settings(home=home, workers=1)
    run_night(settings, START)
    store = Store(settings.db_url)
    with store.session() as session:
        for role in accounts.ROLES:
            accounts.add_user(session, f"{role}1", PASSWORD, role, START)
    store.dispose()
    return home


@pytest.fixture
def portal(seeded: Path, tmp_path: Path):
    """A fresh copy of the seeded folder, the app over it, a frozen clock and a sleep recorder."""
    home = tmp_path / "home"
    shutil.copytree(seeded, home)
    clock, sleeps = Clock(), []

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)

    settings = load_settings(home=home, workers=1, secret_key="test-secret")
    app = create_app(settings, clock=clock, sleep=sleep)
    yield {"app": app, "home": home, "clock": clock, "sleeps": sleeps, "store": app.state.store}
    app.state.store.dispose()


def login_token(c: TestClient) -> str:
    """The sign-in form's token (bound to the pre-session cookie this GET sets)."""
    found = re.search(r'name="login_token" value="([^"]+)"', c.get("/login").text)
    return found.group(1) if found else ""


def sign_in(c: TestClient, username: str, password: str = PASSWORD, **options):
    """POST the sign-in form the way a browser does: the form's token with its cookie."""
    data = {"username": username, "password": password, "login_token": login_token(c)}
    return c.post("/login", data=data, follow_redirects=False, **options)


def client(portal, role: str | None = None) -> TestClient:
    c = TestClient(portal["app"])
    if role:
        r = sign_in(c, f"{role}1")
        assert r.status_code == 303, r.text
    return c


def csrf_of(c: TestClient, case_id: str = "MS-1001") -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', c.get(f"/cases/{case_id}").text).group(1)


def doc_id(portal, case_id: str = "MS-1001", kind: str = "packet") -> int:
    with portal["store"].session() as s:
        return s.scalar(
            select(DocumentRow.id).where(DocumentRow.case_id == case_id, DocumentRow.kind == kind)
        )


def audit_count(portal, action: str, outcome: str | None = None) -> int:
    stmt = select(func.count(AuditRow.id)).where(AuditRow.action == action)
    if outcome:
        stmt = stmt.where(AuditRow.outcome == outcome)
    with portal["store"].session() as s:
        return s.scalar(stmt)


# ---- the route × role matrix -----------------------------------------------------------------

GETS = [
    "/cases",
    "/cases?status=ready&payer=summit-health-commercial&overdue=true&q=MS",
    "/cases/MS-1001",
    "/documents/{doc}",
    "/audit",
]
POSTS = ["/cases/MS-1001/submit", "/cases/MS-1001/status", "/cases/MS-1001/regenerate"]
EXPECTED_GET = {  # role → status for each GET above
    "pharmacist": [200, 200, 200, 200, 403],
    "coordinator": [200, 200, 200, 200, 403],
    "admin": [200, 200, 200, 200, 200],
}


@pytest.mark.parametrize("role", list(EXPECTED_GET))
def test_get_routes_by_role(portal, role: str) -> None:
    c = client(portal, role)
    got = [
        c.get(url.format(doc=doc_id(portal)), follow_redirects=False).status_code for url in GETS
    ]
    assert got == EXPECTED_GET[role]


def test_signed_out_gets_nothing(portal) -> None:
    c = client(portal)
    for url in GETS:
        r = c.get(url.format(doc=doc_id(portal)), follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == "/login", url
    for url in POSTS:
        r = c.post(url, data={"method": "fax", "status": "withdrawn"}, follow_redirects=False)
        assert r.status_code == 401, url
    assert audit_count(portal, "download") == 0


def test_pharmacist_cannot_act_for_a_coordinator(portal) -> None:
    c = client(portal, "pharmacist")
    token = csrf_of(c)
    assert "Record submission" not in c.get("/cases/MS-1001").text
    for url in POSTS:
        r = c.post(
            url,
            data={"method": "fax", "status": "withdrawn", "csrf_token": token},
            follow_redirects=False,
        )
        assert r.status_code == 403, url
    assert audit_count(portal, "authorization_denied", "denied") == len(POSTS)
    with portal["store"].session() as s:
        assert s.get(CaseRow, "MS-1001").status == "ready"


def test_coordinator_actions_go_through_the_state_machine(portal) -> None:
    c = client(portal, "coordinator")
    token = csrf_of(c)
    r = c.post(
        "/cases/MS-1001/submit",
        data={"method": "fax", "reference": "FAX-9", "csrf_token": token},
        follow_redirects=False,
    )
    assert r.status_code == 303
    r = c.post(
        "/cases/MS-1001/status",
        data={
            "status": "approved",
            "csrf_token": token,
            "reference": "AUTH-1",
            "auth_start": "2026-12-01",
            "auth_end": "2027-05-29",
            "auth_units": "2100",
        },
        follow_redirects=False,
    )
    assert r.status_code == 303
    refused = c.post("/cases/MS-1001/status", data={"status": "pending", "csrf_token": token})
    assert refused.status_code == 409 and "cannot move from approved to pending" in refused.text
    page = c.get("/cases/MS-1001").text
    assert "AUTH-1" in page and "coordinator1" in page
    assert "units run out" not in page  # 2100 units cover every course to the end date
    with portal["store"].session() as s:
        row = s.get(CaseRow, "MS-1001")
        assert (row.status, row.auth_units) == ("approved", 2100)
    assert audit_count(portal, "status_change") >= 2


def test_regenerate_keeps_one_version_when_nothing_changed(portal) -> None:
    c = client(portal, "coordinator")
    r = c.post("/cases/MS-1001/regenerate", data={"csrf_token": csrf_of(c)}, follow_redirects=False)
    assert r.status_code == 303
    with portal["store"].session() as s:
        versions = s.scalars(
            select(DocumentRow.version).where(
                DocumentRow.case_id == "MS-1001", DocumentRow.kind == "letter"
            )
        ).all()
    assert versions == [1]


def submitted_then_decided(portal, **decision: str) -> tuple[TestClient, str]:
    """A coordinator submits MS-1001 by fax, then records `decision` from the case page."""
    c = client(portal, "coordinator")
    token = csrf_of(c)
    c.post("/cases/MS-1001/submit", data={"method": "fax", "csrf_token": token})
    r = c.post(
        "/cases/MS-1001/status", data={**decision, "csrf_token": token}, follow_redirects=False
    )
    assert r.status_code == 303, r.text
    return c, token


def test_a_denial_recorded_late_keeps_the_payers_decision_date(portal) -> None:
    """The denial letter came by mail, dated 2026-11-20; recorded on 2026-11-25."""
    from datetime import date

    from priorauth.catalog import load_catalog

    c, token = submitted_then_decided(
        portal, status="denied", reason_code="STEP_THERAPY_NOT_MET", decided_on="2026-11-20"
    )
    catalog = load_catalog(load_settings().reference_dir)
    with portal["store"].session() as s:
        row = s.get(CaseRow, "MS-1001")
        days = catalog.rules_for(catalog.payer(row.payer_id)).appeal_days
        assert row.appeal_deadline == date(2026, 11, 20) + timedelta(days=days)
    bad = c.post(
        "/cases/MS-1001/status",
        data={"status": "appeal_submitted", "csrf_token": token, "decided_on": "20/11/2026"},
    )
    assert bad.status_code == 400


def test_case_page_warns_when_authorized_units_run_out_early(portal) -> None:
    with portal["store"].session() as s:
        per_course = s.get(CaseRow, "MS-1001").summary["dosing"]["billing_units_per_course"]
    c, _ = submitted_then_decided(
        portal,
        status="partially_approved",
        reason_code="DOSE_EXCEEDS_POLICY",
        reference="AUTH-2",
        auth_start="2026-12-01",
        auth_end="2027-05-29",
        auth_units=str(3 * per_course),  # courses on Dec 1, Dec 29 and Jan 26
    )
    page = c.get("/cases/MS-1001").text
    assert "units run out before the course on 2027-02-23" in page


@pytest.mark.parametrize("token", [None, "", "forged-token"])
def test_csrf_missing_or_wrong_is_refused_and_changes_nothing(portal, token) -> None:
    c = client(portal, "coordinator")
    data = {"method": "fax", "reference": "X"} | (
        {"csrf_token": token} if token is not None else {}
    )
    assert c.post("/cases/MS-1001/submit", data=data).status_code == 403
    with portal["store"].session() as s:
        assert s.get(CaseRow, "MS-1001").status == "ready"
    # Signing out needs the token too.
    assert c.post("/logout", data={}).status_code == 403


# ---- downloads ---------------------------------------------------------------------------------


def test_download_headers_and_exactly_one_audit_row_per_download(portal) -> None:
    c = client(portal, "pharmacist")
    ident = doc_id(portal)
    for _ in range(3):
        r = c.get(f"/documents/{ident}")
        assert r.status_code == 200
        assert r.content.startswith(b"%PDF-")
        assert r.headers["content-type"] == "application/pdf"
        assert r.headers["content-disposition"] == 'attachment; filename="MS-1001-packet-v1.pdf"'
        assert r.headers["cache-control"] == "no-store"
        assert r.headers["x-content-type-options"] == "nosniff"
    assert audit_count(portal, "download", "ok") == 3
    with portal["store"].session() as s:
        row = s.scalars(select(AuditRow).where(AuditRow.action == "download")).first()
        assert (row.actor, row.role, row.case_id, row.document_id) == (
            "pharmacist1",
            "pharmacist",
            "MS-1001",
            ident,
        )
        assert row.client  # from where


@pytest.mark.parametrize(
    "url",
    [
        "/documents/999999",
        "/documents/abc",
        "/documents/-1",
        "/documents/..%2F..%2Fpriorauth.sqlite3",
        "/documents/%2e%2e/%2e%2e/etc/passwd",
        "/cases/NOPE",
        "/cases/..%2F..%2Fetc%2Fpasswd",
    ],
)
def test_unknown_ids_and_traversal_are_plain_not_found(portal, url: str) -> None:
    c = client(portal, "admin")
    r = c.get(url)
    assert r.status_code == 404
    assert "%PDF" not in r.text and "root:" not in r.text


def test_a_tampered_document_path_never_leaves_the_letters_folder(portal) -> None:
    ident = doc_id(portal)
    secret = portal["home"] / "secret_key"
    secret.write_text("not a pdf")
    with portal["store"].session() as s:
        s.get(DocumentRow, ident).path = "secret_key"
    r = client(portal, "admin").get(f"/documents/{ident}")
    assert r.status_code == 404 and "not a pdf" not in r.text


def test_a_changed_file_fails_its_hash_check(portal) -> None:
    ident = doc_id(portal, kind="letter")
    with portal["store"].session() as s:
        path = portal["home"] / s.get(DocumentRow, ident).path
    path.write_bytes(path.read_bytes() + b"\n% tampered")
    r = client(portal, "pharmacist").get(f"/documents/{ident}")
    assert r.status_code == 409
    assert audit_count(portal, "download", "integrity_failed") == 1
    assert audit_count(portal, "download", "ok") == 0


# ---- sign-in, lockout, sessions ----------------------------------------------------------------


def test_cookie_is_httponly_and_samesite(portal) -> None:
    c = TestClient(portal["app"])
    r = sign_in(c, "pharmacist1")
    cookie = r.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie
    with portal["store"].session() as s:  # only a hash of the token is stored
        stored = s.scalars(select(SessionRow.token_sha256)).all()
    raw = r.headers["set-cookie"].split(";")[0].split("=", 1)[1]
    assert all(h not in raw for h in stored)


def test_brute_force_slows_down_then_locks_for_that_address(portal) -> None:
    c = TestClient(portal["app"])
    for _ in range(accounts.PAIR_MAX_FAILURES):
        r = sign_in(c, "coordinator1", "wrong password!")
        assert r.status_code == 401
    assert portal["sleeps"][:4] == [0.25, 0.5, 1.0, 2.0]
    locked = sign_in(c, "coordinator1")  # the right password, but locked from here
    assert locked.status_code == 401 and timedelta(minutes=1) == accounts.FIRST_LOCK
    portal["clock"].now += accounts.FIRST_LOCK + timedelta(seconds=1)
    assert sign_in(c, "coordinator1").status_code == 303
    # Audited when the failures began and when the lock began, not once per failure.
    assert audit_count(portal, "sign_in", "bad_credentials") == 1
    assert audit_count(portal, "sign_in", "locked") == 1


def test_unknown_user_looks_like_a_wrong_password(portal) -> None:
    c = TestClient(portal["app"])
    unknown = sign_in(c, "nobody")
    wrong = sign_in(c, "pharmacist1", "nope nope nope")
    assert unknown.status_code == wrong.status_code == 401
    assert "Wrong username or password." in unknown.text
    assert "Wrong username or password." in wrong.text


def test_session_expires_after_inactivity_and_absolute_lifetime(portal) -> None:
    c = client(portal, "pharmacist")
    clock = portal["clock"]
    for _ in range(3):  # active use keeps it alive...
        clock.now += timedelta(minutes=10)
        assert c.get("/cases", follow_redirects=False).status_code == 200
    clock.now += accounts.IDLE_TIMEOUT + timedelta(seconds=1)  # ...15 idle minutes end it
    assert c.get("/cases", follow_redirects=False).status_code == 303
    c = client(portal, "pharmacist")
    for _ in range(int(accounts.MAX_SESSION_AGE / timedelta(minutes=10)) + 1):
        clock.now += timedelta(minutes=10)
        last = c.get("/cases", follow_redirects=False).status_code
    assert last == 303  # never idle, but past the 12-hour lifetime


def test_logout_ends_the_session_on_the_server(portal) -> None:
    c = client(portal, "coordinator")
    cookie = dict(c.cookies)
    assert (
        c.post("/logout", data={"csrf_token": csrf_of(c)}, follow_redirects=False).status_code
        == 303
    )
    replay = TestClient(portal["app"], cookies=cookie)
    assert replay.get("/cases", follow_redirects=False).status_code == 303


def test_disabled_user_is_signed_out(portal) -> None:
    c = client(portal, "pharmacist")
    with portal["store"].session() as s:
        accounts.set_disabled(s, "pharmacist1", True)
    assert c.get("/cases", follow_redirects=False).status_code == 303
    assert sign_in(TestClient(portal["app"]), "pharmacist1").status_code == 401


# ---- pages and PHI -----------------------------------------------------------------------------


def test_queue_lists_cases_without_patient_identifiers(portal) -> None:
    c = client(portal, "pharmacist")
    page = c.get("/cases").text
    for case_id in ("MS-1001", "MS-1004", "PID-3001"):
        assert case_id in page
    with portal["store"].session() as s:
        for row in s.scalars(select(CaseRow)):
            assert row.patient_name not in page and row.member_id not in page
    case_page = c.get("/cases/MS-1001").text
    assert "Dana Whitfield" in case_page and "SHP448812301" in case_page  # only here


def test_queue_filters_and_search(portal) -> None:
    c = client(portal, "coordinator")
    token = csrf_of(c)
    c.post("/cases/MS-1004/submit", data={"method": "fax", "csrf_token": token})
    submitted = c.get("/cases?status=submitted").text
    assert "MS-1004" in submitted and "MS-1001" not in submitted
    by_payer = c.get("/cases?payer=bluestone-ppo").text
    assert "PID-3001" in by_payer and "MS-1004" not in by_payer
    assert "MS-1004" not in c.get("/cases?overdue=true").text
    portal["clock"].now += timedelta(days=16)  # commercial: 15 days to decide
    c = client(portal, "coordinator")
    overdue = c.get("/cases?overdue=true").text
    assert "MS-1004" in overdue and "MS-1001" not in overdue
    found = c.get("/cases?q=pid-30").text
    assert "PID-3001" in found and "MS-1001" not in found
    assert "1 case" in found
    assert "3 cases" in c.get("/cases?q=%20").text  # blank: no search
    for literal in ["MS_1001", "MS%", "M%1"]:  # wildcards are taken literally
        assert "0 cases" in c.get("/cases", params={"q": literal}).text, literal
    assert "2 cases" in c.get("/cases?q=Ms-100").text


def test_every_page_says_no_store(portal) -> None:
    c = client(portal, "admin")
    for url in ["/login", "/cases", "/cases/MS-1001", "/audit", "/cases/NOPE"]:
        r = c.get(url)
        assert r.headers["cache-control"] == "no-store", url
        assert r.headers["x-frame-options"] == "DENY"


def test_admin_sees_the_audit_log(portal) -> None:
    c = client(portal, "admin")
    c.get(f"/documents/{doc_id(portal)}")
    page = c.get("/audit?action=download").text
    assert "download" in page and "MS-1001" in page and "admin1" in page


def test_regenerate_of_a_case_file_that_no_longer_validates_is_refused_and_audited(portal) -> None:
    with portal["store"].session() as s:
        source = Path(s.get(CaseRow, "MS-1001").source_file)
    source.write_text(source.read_text().replace("G35.A", "G35"))  # no longer billable
    c = client(portal, "coordinator")
    before = audit_count(portal, "generate", "invalid")
    r = c.post("/cases/MS-1001/regenerate", data={"csrf_token": csrf_of(c)}, follow_redirects=False)
    assert r.status_code == 409
    assert "no longer validates" in r.text and "diagnoses[0].code" in r.text
    assert audit_count(portal, "generate", "invalid") == before + 1
    with portal["store"].session() as s:
        kinds = s.scalars(select(DocumentRow.kind).where(DocumentRow.case_id == "MS-1001")).all()
    assert sorted(kinds) == ["letter", "packet"]  # nothing new recorded


def test_a_burst_of_concurrent_downloads_is_served_and_each_audited_once(portal) -> None:
    """More requests in flight than the server has worker threads: none may wait on a database
    connection its own request holds (a download reads, then writes its audit row)."""
    from concurrent.futures import ThreadPoolExecutor

    document = doc_id(portal)
    with TestClient(portal["app"]) as c:
        assert sign_in(c, "pharmacist1").status_code == 303
        before = audit_count(portal, "download", "ok")
        with ThreadPoolExecutor(max_workers=80) as pool:
            futures = [pool.submit(c.get, f"/documents/{document}") for _ in range(160)]
            codes = [f.result(timeout=120).status_code for f in futures]
    assert codes == [200] * 160
    assert audit_count(portal, "download", "ok") == before + 160


def test_priorauth_serve_with_two_processes_shares_sign_ins_and_audits_each_download(
    seeded: Path, tmp_path: Path
) -> None:
    """The README's `priorauth serve`, run as a command with two server processes: a session made
    by one process is honoured by the other (new connection per request, so the kernel spreads
    them), and every download is audited once."""
    import os
    import signal
    import socket
    import subprocess
    import sys
    import time

    import httpx

    home = tmp_path / "home"
    shutil.copytree(seeded, home)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRIORAUTH_")}
    env["PRIORAUTH_HOME"] = str(home)
    command = [str(Path(sys.executable).parent / "priorauth"), "serve", "--port", str(port)]
    server = subprocess.Popen(
        [*command, "--workers", "2"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    no_reuse = httpx.Limits(max_keepalive_connections=0)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None, server.stdout.read()
            try:
                if httpx.get(f"{base}/login", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "portal did not answer within 60 s"
            time.sleep(0.2)
        with httpx.Client(base_url=base, limits=no_reuse, timeout=30) as c:
            token = re.search(r'name="login_token" value="([^"]+)"', c.get("/login").text)
            r = c.post(
                "/login",
                data={"username": "pharmacist1", "password": PASSWORD, "login_token": token[1]},
            )
            assert r.status_code == 303 and r.headers["location"].endswith("/cases")
            pages = [c.get("/cases") for _ in range(30)]
            assert all(p.status_code == 200 and "Work queue" in p.text for p in pages)
            store = Store(load_settings(home=home).db_url, migrate=False)
            try:
                with store.reader() as s:
                    document = s.scalar(
                        select(DocumentRow.id).where(
                            DocumentRow.case_id == "MS-1001", DocumentRow.kind == "packet"
                        )
                    )
                    audited = select(func.count(AuditRow.id)).where(
                        AuditRow.action == "download", AuditRow.outcome == "ok"
                    )
                    before = s.scalar(audited)
                downloads = [c.get(f"/documents/{document}") for _ in range(10)]
                assert [d.status_code for d in downloads] == [200] * 10
                assert all(d.content.startswith(b"%PDF-") for d in downloads)
                with store.reader() as s:
                    assert s.scalar(audited) == before + 10
            finally:
                store.dispose()
    finally:
        server.send_signal(signal.SIGINT)
        output, _ = server.communicate(timeout=30)
    started = set(re.findall(r"Started server process \[(\d+)\]", output))
    assert len(started) == 2, output
    assert "Traceback" not in output, output


# ---- payer criteria: the checklist, the needs_info queue, a coordinator's override ------------

NCS = "ncs_report"


@pytest.fixture(scope="module")
def seeded_needs_info(tmp_path_factory) -> tuple[Path, str]:
    """A data folder with one case whose nerve conduction study is missing (needs_info)."""
    import yaml

    source = next(
        (
            p
            for p in sorted(CASES.iterdir())
            if any(
                a.get("kind") == NCS
                for a in yaml.safe_load(p.read_text(encoding="utf-8")).get("attachments", [])
            )
        ),
        None,
    )
    if source is None:
        pytest.skip(f"no fixture case encloses an attachment of kind {NCS} yet")
    data = yaml.safe_load(source.read_text(encoding="utf-8"))
    data["attachments"] = [a for a in data["attachments"] if a.get("kind") != NCS]
    home = tmp_path_factory.mktemp("portal-needs-info") / "home"
    (home / "intake").mkdir(parents=True)
    shutil.copytree(ATTACHMENTS, home / "attachments")
    shutil.copy(CASES / "ms-dmt-failure-privigen.yaml", home / "intake")
    (home / "intake" / f"{source.stem}.yaml").write_text(
        yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8"
    )
    settings = load_settings(home=home, workers=1)
    report = run_night(settings, START)
    assert report.needs_info == [data["case_id"]], report
    store = Store(settings.db_url)
    with store.session() as session:
        for role in accounts.ROLES:
            accounts.add_user(session, f"{role}1", PASSWORD, role, START)
    store.dispose()
    return home, data["case_id"]


@pytest.fixture
def needs_info(seeded_needs_info, tmp_path: Path):
    seeded, case_id = seeded_needs_info
    home = tmp_path / "home"
    shutil.copytree(seeded, home)
    settings = load_settings(home=home, workers=1, secret_key="test-secret")
    app = create_app(settings, clock=Clock())
    yield {"app": app, "home": home, "store": app.state.store, "case_id": case_id}
    app.state.store.dispose()


def stored_criteria(portal) -> dict:
    with portal["store"].reader() as s:
        return s.get(CaseRow, portal["case_id"]).summary["criteria"]


def test_case_page_shows_the_payer_criteria_checklist(needs_info) -> None:
    from markupsafe import escape

    case_id = needs_info["case_id"]
    criteria = stored_criteria(needs_info)
    page = client(needs_info, "pharmacist").get(f"/cases/{case_id}").text
    assert "Payer criteria" in page and 'badge status-needs_info">Needs information<' in page
    assert criteria["policy_id"] in page and criteria["effective_date"] in page
    assert "watermarked DRAFT" in page
    insufficient = [i for i in criteria["items"] if i["verdict"] == "insufficient"]
    assert insufficient and page.count("<td>Information missing</td>") == len(insufficient)
    for item in criteria["items"]:
        assert str(escape(item["id"])) in page and str(escape(item["text"])) in page
    for item in insufficient:  # the document request, escaped like everything else
        assert str(escape(item["request"])) in page
    assert any(NCS in item["request"] for item in insufficient)
    assert "needs_info" not in page.replace("status-needs_info", "")  # labels, not codes
    assert "Mark ready despite missing information" not in page  # pharmacists cannot override


def test_queue_filters_needs_info(needs_info) -> None:
    c = client(needs_info, "pharmacist")
    page = c.get("/cases?status=needs_info").text
    assert needs_info["case_id"] in page and "MS-1001" not in page and "1 case" in page
    assert '<option value="needs_info" selected>Needs information</option>' in page
    assert needs_info["case_id"] not in c.get("/cases?status=ready").text


def test_coordinator_override_needs_a_reason_regenerates_and_is_audited(needs_info) -> None:
    case_id = needs_info["case_id"]
    c = client(needs_info, "coordinator")
    page = c.get(f"/cases/{case_id}").text
    assert "Mark ready despite missing information" in page
    token = csrf_of(c, case_id)
    refused = c.post(
        f"/cases/{case_id}/status", data={"status": "ready", "reason": " ", "csrf_token": token}
    )
    assert refused.status_code == 400 and "give the reason" in refused.text
    with needs_info["store"].reader() as s:
        assert s.get(CaseRow, case_id).status == "needs_info"
    reason = "NCS <b>faxed</b> by the neurologist's office"
    r = c.post(
        f"/cases/{case_id}/status",
        data={"status": "ready", "reason": reason, "csrf_token": token},
        follow_redirects=False,
    )
    assert r.status_code == 303, r.text
    with needs_info["store"].reader() as s:
        assert s.get(CaseRow, case_id).status == "ready"
        audited = s.scalars(select(AuditRow).where(AuditRow.action == "criteria_override")).one()
        assert (audited.actor, audited.role, audited.case_id) == (
            "coordinator1",
            "coordinator",
            case_id,
        )
        letters = s.scalars(
            select(DocumentRow.version).where(
                DocumentRow.case_id == case_id, DocumentRow.kind == "letter"
            )
        ).all()
    assert letters == [1, 2]  # the final letter, beside the DRAFT
    assert stored_criteria(needs_info)["override"] is True
    page = c.get(f"/cases/{case_id}").text
    assert "NCS &lt;b&gt;faxed&lt;/b&gt;" in page and "<b>faxed</b>" not in page
    assert "CRITERIA_OVERRIDE" in page and "accepted the missing information" in page
    assert "Mark ready despite missing information" not in page
    # Regenerating the same case file keeps the override: same final bytes, no new version.
    r = c.post(f"/cases/{case_id}/regenerate", data={"csrf_token": token}, follow_redirects=False)
    assert r.status_code == 303
    with needs_info["store"].reader() as s:
        assert s.get(CaseRow, case_id).status == "ready"
        assert (
            s.scalar(
                select(func.count(DocumentRow.id)).where(
                    DocumentRow.case_id == case_id, DocumentRow.kind == "letter"
                )
            )
            == 2
        )


def test_a_denial_that_waited_applies_when_the_portal_records_the_submission(portal) -> None:
    """A payer's denial of MS-1004 arrived before the fax was recorded: the night keeps it
    pending; submitting from the case page applies it at once (issue 8)."""
    from conftest import FIXTURES

    home = portal["home"]
    (home / "responses").mkdir(exist_ok=True)
    shutil.copy(FIXTURES / "responses" / "ms-1004-denied.x12", home / "responses")
    settings = load_settings(home=home, workers=1)
    report = run_night(settings, START + timedelta(hours=1))
    assert report.responses.get("pending") == 1
    c = client(portal, "coordinator")
    r = c.post(
        "/cases/MS-1004/submit",
        data={"method": "fax", "reference": "FAX-7", "csrf_token": csrf_of(c, "MS-1004")},
        follow_redirects=False,
    )
    assert r.status_code == 303, r.text
    with portal["store"].session() as s:
        row = s.get(CaseRow, "MS-1004")
        assert row.status == "denied"
        assert row.appeal_deadline is not None
