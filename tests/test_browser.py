"""The staff portal in a real browser: Debian's chromium driven by Playwright against the real app
served by uvicorn on loopback. Sign in, filter the queue, find a case by ID, download its packet
(checked byte for byte against the store, and audited), sign out.

Needs /usr/bin/chromium (CI installs Debian's package); no browser is ever downloaded.

    .venv/bin/python -m pytest -q tests/test_browser.py
    PRIORAUTH_SCREENSHOTS=1 .venv/bin/python -m pytest -q tests/test_browser.py  # refresh docs/screenshots
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pypdf
import pytest
import uvicorn
from playwright.sync_api import Browser, Page, expect, sync_playwright
from sqlalchemy import func, select

from conftest import ATTACHMENTS, CASES, ROOT
from priorauth import accounts
from priorauth.catalog import load_catalog
from priorauth.nightly import run_night
from priorauth.settings import load_settings
from priorauth.store import AuditRow, CaseRow, DocumentRow, SessionRow, Store
from priorauth.tracking import Actor, set_status, submit
from priorauth.web.app import create_app

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.is_file():
    pytest.skip(
        "browser test needs Debian's chromium at /usr/bin/chromium (apt-get install chromium); "
        "Playwright's own browser download is not used",
        allow_module_level=True,
    )

CASE_FILES = [
    "ms-dmt-failure-privigen.yaml",  # MS-1001: stays ready; the one the test downloads
    "ms-1004.yaml",  # submitted
    "pid-3010.yaml",  # submitted, then denied
    "cidp-2001.json",
    "itp-4001.yaml",
]
CASE_ID = "MS-1001"
USERNAME = "coord.browser"
PASSWORD = "correct horse battery staple"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 10_000
SCREENSHOTS = ROOT / "docs" / "screenshots"


@dataclass(frozen=True)
class Site:
    base_url: str
    home: Path
    db_url: str


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _seed(home: Path) -> None:
    """Five fixture cases through the nightly run; two moved on so the queue shows a mix."""
    (home / "intake").mkdir(parents=True)
    shutil.copytree(ATTACHMENTS, home / "attachments")
    for name in CASE_FILES:
        shutil.copy(CASES / name, home / "intake" / name)
    settings = load_settings(home=home, workers=1)
    now = datetime.now(UTC)
    report = run_night(settings, now - timedelta(days=3))
    assert sorted(report.accepted) == sorted(
        ["MS-1001", "MS-1004", "PID-3010", "CIDP-2001", "ITP-4001"]
    ), report
    catalog = load_catalog(settings.reference_dir)
    staff = Actor("jdoe", "coordinator", "coordinator")
    store = Store(settings.db_url)
    try:
        with store.session() as session:
            for case_id in ("MS-1004", "PID-3010"):
                submit(
                    session,
                    case_id,
                    method="fax",
                    reference=f"FAX-{case_id}",
                    actor=staff,
                    now=now - timedelta(days=2),
                    catalog=catalog,
                )
            set_status(
                session,
                "PID-3010",
                "denied",
                actor=staff,
                now=now - timedelta(days=1),
                catalog=catalog,
                settings=settings,
                reason_code="step_therapy",
                reason_text="step therapy not documented",
            )
            accounts.add_user(session, USERNAME, PASSWORD, "coordinator", now)
    finally:
        store.dispose()


@contextmanager
def _serve(app, port: int) -> Iterator[None]:
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="portal-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive(), "uvicorn stopped while starting"
        assert time.monotonic() < deadline, "uvicorn did not start within 10 s"
        time.sleep(0.02)
    try:
        yield
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Iterator[Site]:
    home = tmp_path_factory.mktemp("browser") / "home"
    _seed(home)
    settings = load_settings(home=home, workers=1)
    app = create_app(settings)
    port = _free_port()
    try:
        with _serve(app, port):
            yield Site(f"http://127.0.0.1:{port}", home, settings.db_url)
    finally:
        app.state.store.dispose()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        chromium = p.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield chromium
        finally:
            chromium.close()


@contextmanager
def _page(browser: Browser, **options) -> Iterator[Page]:
    context = browser.new_context(accept_downloads=True, **options)
    context.set_default_timeout(TIMEOUT_MS)
    try:
        yield context.new_page()
    finally:
        context.close()


def _sign_in(page: Page, site: Site) -> None:
    page.goto(f"{site.base_url}/login")
    expect(page.get_by_role("heading", name="Staff sign-in")).to_be_visible()
    page.get_by_label("Username").fill(USERNAME)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{site.base_url}/cases")
    expect(page.get_by_role("heading", name="Work queue")).to_be_visible()


def _queue_rows(page: Page) -> list[tuple[str, str]]:
    """(case ID, status) of every row the queue table shows."""
    rows = page.locator("table.queue tbody tr")
    return [
        (
            row.locator("td").nth(0).inner_text().strip(),
            row.locator("td").nth(1).inner_text().strip(),
        )
        for row in rows.all()
    ]


def test_sign_in_filter_open_case_download_packet_sign_out(
    site: Site, browser: Browser, tmp_path: Path
) -> None:
    store = Store(site.db_url, migrate=False)
    try:
        with store.session() as session:
            packet = session.scalars(
                select(DocumentRow).where(
                    DocumentRow.case_id == CASE_ID, DocumentRow.kind == "packet"
                )
            ).one()
            packet_id, packet_sha = packet.id, packet.sha256
            ready = set(session.scalars(select(CaseRow.case_id).where(CaseRow.status == "ready")))
        assert CASE_ID in ready and len(ready) == 3, ready

        with _page(browser) as page:
            _sign_in(page, site)

            # The whole queue first: five cases, three of them ready.
            assert len(_queue_rows(page)) == 5

            # Filter by status.
            page.get_by_label("Status").select_option("ready")
            page.get_by_role("button", name="Filter").click()
            page.wait_for_url(re.compile(r"/cases\?.*\bstatus=ready\b"))
            shown = _queue_rows(page)
            assert shown, "the ready filter shows no rows"
            assert {status for _, status in shown} == {"ready"}, shown
            assert {case_id for case_id, _ in shown} == ready
            expect(page.locator("p.count")).to_have_text("3 cases")

            # Search one case ID (lower case: the box matches case IDs case-insensitively).
            page.get_by_label("Case ID").fill(CASE_ID.lower())
            page.get_by_role("button", name="Filter").click()
            page.wait_for_url(re.compile(r"/cases\?.*\bq=ms-1001\b"))
            assert _queue_rows(page) == [(CASE_ID, "ready")]

            # Open the case page.
            page.get_by_role("link", name=CASE_ID, exact=True).click()
            page.wait_for_url(f"{site.base_url}/cases/{CASE_ID}")
            expect(page.get_by_role("heading", level=1)).to_contain_text(f"Case {CASE_ID}")

            # Download the packet from the documents table.
            documents = page.locator("h2:text-is('Documents') + table tbody tr")
            expect(documents).to_have_count(2)  # letter and packet, version 1 each
            packet_row = documents.filter(
                has=page.locator("td:first-child", has_text=re.compile(r"^packet$"))
            )
            expect(packet_row).to_have_count(1)
            with page.expect_download() as info:
                packet_row.get_by_role("link", name="Download PDF").click()
            download = info.value
            assert download.failure() is None
            assert download.url == f"{site.base_url}/documents/{packet_id}"
            assert download.suggested_filename == f"{CASE_ID}-packet-v1.pdf"
            saved = tmp_path / download.suggested_filename
            download.save_as(saved)
            data = saved.read_bytes()
            assert data.startswith(b"%PDF-")
            assert hashlib.sha256(data).hexdigest() == packet_sha
            text = "".join(p.extract_text() or "" for p in pypdf.PdfReader(io.BytesIO(data)).pages)
            assert CASE_ID in text

            with store.session() as session:
                audited = session.scalars(
                    select(AuditRow).where(
                        AuditRow.action == "download", AuditRow.document_id == packet_id
                    )
                ).all()
                assert [(a.actor, a.role, a.case_id, a.outcome, a.client) for a in audited] == [
                    (USERNAME, "coordinator", CASE_ID, "ok", "127.0.0.1")
                ]
                sessions_before = session.scalar(select(func.count()).select_from(SessionRow))
                assert sessions_before >= 1, "no server-side session while signed in"

            # Sign out: the session ends server-side and the queue asks for a sign-in again.
            page.get_by_role("button", name="Sign out").click()
            page.wait_for_url(f"{site.base_url}/login")
            with store.session() as session:
                sessions_after = session.scalar(select(func.count()).select_from(SessionRow))
                assert sessions_after == sessions_before - 1
                signed_out = session.scalars(
                    select(AuditRow).where(
                        AuditRow.action == "sign_out", AuditRow.actor == USERNAME
                    )
                ).all()
                assert [a.outcome for a in signed_out] == ["ok"]
            page.goto(f"{site.base_url}/cases")
            assert page.url == f"{site.base_url}/login"
            expect(page.get_by_role("heading", name="Staff sign-in")).to_be_visible()
            expect(page.get_by_role("button", name="Sign out")).to_have_count(0)
    finally:
        store.dispose()


def _screenshots_wanted() -> bool:
    """PRIORAUTH_SCREENSHOTS=1. tests/conftest.py deletes every PRIORAUTH_* variable before this
    module loads, so also look at the environment the process started with (Linux)."""
    if os.environ.get("PRIORAUTH_SCREENSHOTS") == "1":
        return True
    try:
        start_env = Path("/proc/self/environ").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"PRIORAUTH_SCREENSHOTS=1" in start_env


def test_screenshots_of_queue_and_case_page(site: Site, browser: Browser, tmp_path: Path) -> None:
    """Full-page screenshots, 1280 px wide (synthetic patients). With PRIORAUTH_SCREENSHOTS=1 they
    replace docs/screenshots/queue.png and case.png."""
    shots = {"queue.png": tmp_path / "queue.png", "case.png": tmp_path / "case.png"}
    with _page(browser, viewport={"width": 1280, "height": 480}) as page:
        _sign_in(page, site)
        expect(page.locator("table.queue tbody tr")).to_have_count(5)
        page.screenshot(path=shots["queue.png"], full_page=True)
        page.goto(f"{site.base_url}/cases/{CASE_ID}")
        expect(page.get_by_role("link", name="Download PDF")).to_have_count(2)
        page.screenshot(path=shots["case.png"], full_page=True)
    for shot in shots.values():
        assert shot.read_bytes().startswith(b"\x89PNG")
    if _screenshots_wanted():
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        for name, shot in shots.items():
            shutil.copyfile(shot, SCREENSHOTS / name)
