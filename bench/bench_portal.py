"""Staff-portal latency under load: the work queue and PDF downloads, 50 concurrent clients on
loopback, 100,000 cases in the store.

Builds a data folder in a temporary directory: one real case (MS-1001) through the nightly run for
a real letter and packet, then N synthetic case rows inserted in bulk (varied status, payer,
product and dates), DocumentRows for a few hundred of them that point at copies of the real packet
under letters/ (same bytes, so the recorded SHA-256 matches), and one coordinator account per
client. It then runs the real portal the way production does, `priorauth serve` (one uvicorn
process), signs every client in (each with its own account and cookie) and measures:

  baseline-queue / baseline-download   one client, sequential
  A queue                              GET /cases: first page and filters (status, payer, overdue,
                                       expiring, case ID prefix, page=500), mixed
  B download                           GET /documents/<id> (each one writes an audit row)

Clients are threads with one keep-alive HTTP/1.1 connection each (stdlib http.client, the lightest
Python client, so the load generator takes as little of the shared CPU as it can). Every response
is checked (status, page markers; PDF bytes against the recorded SHA-256); a failed check is an
error. Afterwards the audit log must hold exactly one `download`/`ok` row per successful download.
Every name is synthetic and everything lives in the temporary folder.

    .venv/bin/python bench/bench_portal.py                      # 100,000 cases, 50 clients, ~2 min
    .venv/bin/python bench/bench_portal.py --server-workers 2   # priorauth serve --workers 2
    .venv/bin/python bench/bench_portal.py --json out/portal.json
    .venv/bin/python bench/bench_portal.py --profile            # + in-process query timings/profile
    .venv/bin/python bench/bench_portal.py --scenarios storm    # sign-in storm (below)

storm: 10 clients read the queue (400 pages in all), first on their own, then while 10 other
clients post wrong passwords back to back (half for real accounts, half for unknown names), each
batch of 19 from its own loopback source address so the per-address refusal never saves a hash;
reports the queue's p99 in both phases (the target: during <= 2x idle) and the storm's answers.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import hashlib
import http.client
import io
import json
import os
import platform
import pstats
import random
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from importlib import metadata
from pathlib import Path
from typing import Any

from synthetic import FIRST_F, FIRST_M, LAST

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "fixtures"
PASSWORD = "bench password, not a secret"  # noqa: S105 (synthetic accounts)
REAL_CASE = "ms-dmt-failure-privigen.yaml"  # MS-1001
TIMEOUT_S = 60  # a response slower than this counts as an error
STATUS_WEIGHTS = {
    "draft": 1,
    "needs_info": 4,
    "ready": 10,
    "submitted": 8,
    "pending": 7,
    "info_requested": 3,
    "approved": 28,
    "partially_approved": 4,
    "denied": 10,
    "not_required": 3,
    "appeal_submitted": 2,
    "appeal_approved": 2,
    "appeal_denied": 1,
    "expired": 12,
    "withdrawn": 5,
}
FIRST = FIRST_F + FIRST_M


# ---- the data folder ------------------------------------------------------------------------


@dataclass
class Built:
    home: Path
    cases: int
    documents: dict[int, str]  # document id -> sha256
    users: list[str]
    payer: str
    timings: dict[str, float] = field(default_factory=dict)


def build_home(root: Path, n_cases: int, n_docs: int, n_users: int, seed: int) -> Built:
    from sqlalchemy import func, insert, select

    from priorauth import accounts
    from priorauth.catalog import load_catalog
    from priorauth.nightly import run_night
    from priorauth.settings import load_settings
    from priorauth.statuses import AUTHORIZED, AWAITING_DECISION
    from priorauth.store import CaseRow, DocumentRow, Store

    rng = random.Random(seed)
    timings: dict[str, float] = {}
    home = root / "home"
    (home / "intake").mkdir(parents=True)
    shutil.copytree(FIXTURES / "attachments", home / "attachments")
    shutil.copy(FIXTURES / "cases" / REAL_CASE, home / "intake" / REAL_CASE)
    settings = load_settings(home=home, workers=1)
    now = datetime.now(UTC)

    t = time.perf_counter()
    report = run_night(settings, now)
    assert report.letters == ["MS-1001"], report
    timings["nightly_one_real_case_s"] = time.perf_counter() - t

    catalog = load_catalog(settings.reference_dir)
    payers = sorted(catalog.payers)
    products = sorted(catalog.products.values(), key=lambda p: p.id)
    statuses = list(STATUS_WEIGHTS)
    weights = list(STATUS_WEIGHTS.values())
    store = Store(settings.db_url)
    with store.session() as session:
        packet = session.scalars(
            select(DocumentRow).where(
                DocumentRow.case_id == "MS-1001", DocumentRow.kind == "packet"
            )
        ).one()
        packet_path, packet_sha = home / packet.path, packet.sha256
    assert hashlib.sha256(packet_path.read_bytes()).hexdigest() == packet_sha

    t = time.perf_counter()
    batch: list[dict[str, Any]] = []
    inserted = 0

    def flush() -> None:
        nonlocal inserted
        with store.session() as session:
            session.execute(insert(CaseRow), batch)
        inserted += len(batch)
        batch.clear()

    for i in range(1, n_cases + 1):
        status = rng.choices(statuses, weights)[0]
        product = rng.choice(products)
        created = now - timedelta(minutes=rng.randrange(2 * 365 * 24 * 60))
        updated = min(now, created + timedelta(minutes=rng.randrange(60 * 24 * 60)))
        due_by = auth_start = auth_end = None
        if status in AWAITING_DECISION:  # about a third of them past due
            due_by = now + timedelta(hours=rng.randrange(-240, 480))
        if status in AUTHORIZED:
            auth_start = (now - timedelta(days=rng.randrange(0, 200))).date()
            auth_end = auth_start + timedelta(days=rng.choice((90, 180, 365)))
        case_id = f"BN-{i:06d}"
        batch.append(
            {
                "case_id": case_id,
                "status": status,
                "source_file": str(home / "intake" / f"{case_id}.yaml"),
                "case_sha256": hashlib.sha256(case_id.encode()).hexdigest(),
                "payer_id": rng.choice(payers),
                "product_id": product.id,
                "hcpcs": product.hcpcs,
                "indication": rng.choice(("ms", "cidp", "pid", "itp", "mg")),
                "urgent": rng.random() < 0.1,
                "patient_name": f"{rng.choice(FIRST)} {rng.choice(LAST)}",
                "date_of_birth": date(1940, 1, 1) + timedelta(days=rng.randrange(30000)),
                "member_id": f"BM{i:09d}",
                "service_start": (created + timedelta(days=14)).date(),
                "units_requested": rng.randrange(100, 3000),
                "summary": None,
                "errors": None,
                "payer_reference": f"REF-{i}" if due_by else None,
                "due_by": due_by,
                "overdue_since": None,
                "auth_number": f"AUTH-{i}" if auth_end else None,
                "auth_start": auth_start,
                "auth_end": auth_end,
                "auth_units": rng.randrange(100, 3000) if auth_end else None,
                "appeal_deadline": None,
                "created_at": created,
                "updated_at": updated,
            }
        )
        if len(batch) == 10_000:
            flush()
    if batch:
        flush()
    timings["insert_cases_s"] = time.perf_counter() - t

    # Copies of the real packet under letters/, one DocumentRow each (same bytes, same SHA-256).
    t = time.perf_counter()
    doc_cases = [f"BN-{i:06d}" for i in rng.sample(range(1, n_cases + 1), n_docs)]
    rows = []
    for case_id in doc_cases:
        relative = Path("letters") / case_id / "versions" / f"packet-{packet_sha[:16]}.pdf"
        (home / relative).parent.mkdir(parents=True)
        shutil.copyfile(packet_path, home / relative)
        rows.append(
            {
                "case_id": case_id,
                "kind": "packet",
                "version": 1,
                "path": str(relative),
                "sha256": packet_sha,
                "created_at": now,
            }
        )
    with store.session() as session:
        session.execute(insert(DocumentRow), rows)
        documents = {
            doc_id: sha
            for doc_id, sha in session.execute(
                select(DocumentRow.id, DocumentRow.sha256).where(DocumentRow.case_id.in_(doc_cases))
            )
        }
    timings["documents_s"] = time.perf_counter() - t

    t = time.perf_counter()
    users = [f"bench{i:02d}" for i in range(1, n_users + 1)]
    with store.session() as session:
        for name in users:
            accounts.add_user(session, name, PASSWORD, "coordinator", now)
    timings["users_s"] = time.perf_counter() - t
    with store.session() as session:
        total = session.scalar(select(func.count()).select_from(CaseRow))
    store.dispose()
    assert total == n_cases + 1, total
    return Built(home, total, documents, users, payers[1], timings)


# ---- the server --------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(home: Path, port: int, log_path: Path, workers: int) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRIORAUTH_")}
    env["PRIORAUTH_HOME"] = str(home)
    command = [str(Path(sys.executable).with_name("priorauth")), "serve", "--port", str(port)]
    command += ["--workers", str(workers)]
    log = log_path.open("wb")
    proc = subprocess.Popen(command, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {log_path.read_text()[-2000:]}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/healthz")
            if conn.getresponse().status == 200:
                conn.close()
                return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("server did not answer /healthz within 60 s")


def stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def server_errors(log_path: Path) -> dict[str, Any]:
    """Tracebacks in the server's log, by their last line (exception type and message)."""
    lines = log_path.read_text(errors="replace").splitlines()
    kinds: Counter[str] = Counter()
    in_trace = False
    last = ""
    for line in [*lines, ""]:
        if line.startswith("Traceback"):
            in_trace, last = True, ""
        elif in_trace and line and not line.startswith((" ", "\t")):
            last = line
            if not line.startswith(("During handling", "The above exception")):
                kinds[last[:200]] += 1
                in_trace = False
    statuses = Counter(m.group(1) for m in re.finditer(r'HTTP/1.1" (\d{3})', "\n".join(lines)))
    return {"tracebacks": dict(kinds), "access_log_status": dict(statuses)}


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants (with --server-workers > 1 uvicorn's workers are its children)."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        for task in Path(f"/proc/{current}/task").glob("*/children"):
            todo.extend(int(child) for child in task.read_text().split())
    return found


def cpu_seconds(pid: int) -> float:
    """CPU seconds of the server process and its workers."""
    total = 0
    for member in process_tree(pid):
        fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> list[float]:
    """Peak RSS of each server process (the supervisor first when there are workers)."""
    peaks = []
    for member in process_tree(pid):
        for line in Path(f"/proc/{member}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                peaks.append(int(line.split()[1]) / 1024)
    return peaks


# ---- clients -------------------------------------------------------------------------------------


class Client:
    """One signed-in browser: its own account, cookie and keep-alive connection."""

    def __init__(self, port: int, username: str) -> None:
        self.port = port
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT_S)
        token, pre_session = login_form(self.conn)
        body = urllib.parse.urlencode(
            {"username": username, "password": PASSWORD, "login_token": token}
        )
        headers = {"Content-Type": "application/x-www-form-urlencoded", "Cookie": pre_session}
        self.conn.request("POST", "/login", body, headers)
        response = self.conn.getresponse()
        response.read()
        cookie = response.getheader("Set-Cookie") or ""
        if response.status != 303 or not cookie.startswith("pa_session="):
            raise RuntimeError(f"sign-in of {username} failed: {response.status}")
        self.cookie = cookie.split(";", 1)[0]

    def reconnect(self) -> None:
        """A fresh connection (uvicorn closes keep-alive connections idle for 5 s)."""
        self.conn.close()
        self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=TIMEOUT_S)
        self.conn.connect()

    def get(self, path: str) -> tuple[int, dict[str, str], bytes]:
        """One request on the keep-alive connection. Any failure (a timeout included) leaves
        the connection unusable, so it is replaced before the error goes up."""
        try:
            self.conn.request("GET", path, headers={"Cookie": self.cookie})
            response = self.conn.getresponse()
            headers = {k.lower(): v for k, v in response.getheaders()}
            return response.status, headers, response.read()
        except Exception:
            self.reconnect()
            raise

    def close(self) -> None:
        self.conn.close()


COUNT = re.compile(rb'<p class="count">([\d,]+) case')
LOGIN_TOKEN = re.compile(rb'name="login_token" value="([^"]+)"')


def login_form(conn: http.client.HTTPConnection) -> tuple[str, str]:
    """GET /login as a browser does: the form's token and the pre-session cookie it is bound to."""
    conn.request("GET", "/login")
    response = conn.getresponse()
    body = response.read()
    found = LOGIN_TOKEN.search(body)
    cookie = (response.getheader("Set-Cookie") or "").split(";", 1)[0]
    if response.status != 200 or not found or not cookie:
        raise RuntimeError(f"no sign-in form: HTTP {response.status}")
    return found.group(1).decode(), cookie


def check_queue(path: str, status: int, headers: dict[str, str], body: bytes) -> str | None:
    if status != 200:
        return f"HTTP {status}"
    if b"<h1>Work queue</h1>" not in body or not COUNT.search(body):
        return "not the queue page"
    if headers.get("cache-control") != "no-store":
        return "no Cache-Control: no-store"
    wanted = re.search(r"page=(\d+)", path)
    if wanted and f"page {wanted.group(1)} of".encode() not in body:
        return f"page {wanted.group(1)} not shown"
    if "status=denied" in path and set(re.findall(rb'class="status-(\w+)"', body)) != {b"denied"}:
        return "status filter leaked other statuses"
    return None


def check_download(
    sha: str, doc_case: str, status: int, headers: dict[str, str], body: bytes
) -> str | None:
    if status != 200:
        return f"HTTP {status}"
    if headers.get("content-type") != "application/pdf":
        return f"content-type {headers.get('content-type')}"
    if f'filename="{doc_case}-packet-v1.pdf"' not in headers.get("content-disposition", ""):
        return "wrong file name"
    if not body.startswith(b"%PDF-") or hashlib.sha256(body).hexdigest() != sha:
        return "bytes differ from the recorded SHA-256"
    return None


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    if not sorted_values:
        return float("nan")
    rank = max(1, -(-len(sorted_values) * q // 100))
    return sorted_values[int(rank) - 1]


def summarize(latencies: list[float]) -> dict[str, float]:
    values = sorted(latencies)
    return {
        "n": len(values),
        "median_ms": percentile(values, 50) * 1000,
        "p90_ms": percentile(values, 90) * 1000,
        "p99_ms": percentile(values, 99) * 1000,
        "max_ms": (values[-1] if values else float("nan")) * 1000,
    }


def run_scenario(
    name: str,
    clients: list[Client],
    plan: list[list[tuple[str, str, Any]]],
    server_pid: int,
) -> dict[str, Any]:
    """Each client runs its own list of (label, path, checker) back to back; all start together."""
    latencies: dict[str, list[float]] = defaultdict(list)
    errors: Counter[str] = Counter()
    lock = threading.Lock()
    barrier = threading.Barrier(len(clients) + 1)

    def work(client: Client, requests: list[tuple[str, str, Any]]) -> None:
        mine: list[tuple[str, float]] = []
        failures: list[str] = []
        client.reconnect()
        barrier.wait()
        for label, path, check in requests:
            t = time.perf_counter()
            try:
                status, headers, body = client.get(path)
            except Exception as exc:
                failures.append(f"{label}: {type(exc).__name__}")
                continue
            elapsed = time.perf_counter() - t
            problem = check(path, status, headers, body)
            if problem:
                failures.append(f"{label}: {problem}")
            else:
                mine.append((label, elapsed))
        with lock:
            for label, elapsed in mine:
                latencies[label].append(elapsed)
            errors.update(failures)

    threads = [
        threading.Thread(target=work, args=(c, p), daemon=True)
        for c, p in zip(clients, plan, strict=True)
    ]
    for thread in threads:
        thread.start()
    cpu_server, usage = cpu_seconds(server_pid), resource.getrusage(resource.RUSAGE_SELF)
    barrier.wait()
    start = time.perf_counter()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    usage_after = resource.getrusage(resource.RUSAGE_SELF)
    everything = [x for values in latencies.values() for x in values]
    total_requests = sum(len(p) for p in plan)
    result = {
        "scenario": name,
        "clients": len(clients),
        "requests": total_requests,
        "ok": len(everything),
        "errors": sum(errors.values()),
        "error_kinds": dict(errors),
        "wall_s": wall,
        "throughput_rps": total_requests / wall,
        "server_cpu_s": cpu_seconds(server_pid) - cpu_server,
        "client_cpu_s": (usage_after.ru_utime + usage_after.ru_stime)
        - (usage.ru_utime + usage.ru_stime),
        "all": summarize(everything),
        "by_request": {label: summarize(values) for label, values in sorted(latencies.items())},
    }
    print_result(result)
    return result


def print_result(r: dict[str, Any]) -> None:
    a = r["all"]
    print(
        f"{r['scenario']:<18} clients={r['clients']:<3} n={r['requests']:<5} "
        f"median={a['median_ms']:7.1f} ms  p90={a['p90_ms']:7.1f}  p99={a['p99_ms']:7.1f}  "
        f"max={a['max_ms']:7.1f}  {r['throughput_rps']:6.1f} req/s  errors={r['errors']}  "
        f"server CPU {r['server_cpu_s']:.1f} s / wall {r['wall_s']:.1f} s, "
        f"client CPU {r['client_cpu_s']:.1f} s",
        flush=True,
    )
    if len(r["by_request"]) > 1:
        for label, s in r["by_request"].items():
            print(
                f"    {label:<26} n={s['n']:<5} median={s['median_ms']:7.1f}  "
                f"p90={s['p90_ms']:7.1f}  p99={s['p99_ms']:7.1f}  max={s['max_ms']:7.1f}"
            )
    if r["error_kinds"]:
        print(f"    errors: {r['error_kinds']}")


def queue_urls(built: Built) -> list[tuple[str, str]]:
    """The queue mix: 4 in 10 requests the unfiltered first page, the rest one filter each."""
    return [
        ("/cases", "/cases"),
        ("/cases", "/cases"),
        ("/cases", "/cases"),
        ("/cases", "/cases"),
        ("?status=denied", "/cases?status=denied"),
        ("?overdue=true", "/cases?overdue=true"),
        ("?expiring=true", "/cases?expiring=true"),
        ("?payer=…", f"/cases?payer={built.payer}"),
        ("?q=BN-0421 (prefix)", "/cases?q=BN-0421"),
        ("?page=500", f"/cases?page={min(500, max(2, built.cases // 50))}"),
    ]


def queue_plan(built: Built, n_clients: int, per_client: int) -> list[list[tuple[str, str, Any]]]:
    urls = queue_urls(built)
    return [
        [
            (urls[(i + k) % len(urls)][0], urls[(i + k) % len(urls)][1], check_queue)
            for k in range(per_client)
        ]
        for i in range(n_clients)
    ]


def download_plan(
    built: Built, doc_cases: dict[int, str], n_clients: int, per_client: int, seed: int
) -> list[list[tuple[str, str, Any]]]:
    rng = random.Random(seed)
    ids = sorted(built.documents)
    plan = []
    for _ in range(n_clients):
        requests = []
        for _ in range(per_client):
            doc_id = rng.choice(ids)
            sha, case_id = built.documents[doc_id], doc_cases[doc_id]
            requests.append(
                (
                    "/documents/<id>",
                    f"/documents/{doc_id}",
                    lambda path, s, h, b, sha=sha, case_id=case_id: check_download(
                        sha, case_id, s, h, b
                    ),
                )
            )
        plan.append(requests)
    return plan


# ---- sign-in storm ---------------------------------------------------------------------------

STORM_MAX_S = 300  # the storm stops when the readers are done, or after this long at most
ADDRESS_BUDGET = 19  # attempts per source address, under the portal's 20 per 15 minutes


def storm_address(client: int, batch: int) -> str:
    """A loopback source address of its own for each batch of one storm client (Linux routes all
    of 127.0.0.0/8 to lo): like a botnet, so the portal's per-address refusal (which answers
    without hashing) never kicks in and every attempt costs a full argon2 check."""
    return f"127.{10 + client}.{batch // 250}.{1 + batch % 250}"


def sign_in_storm(
    port: int, n_clients: int, stop: threading.Event, users: list[str]
) -> dict[str, Any]:
    """`n_clients` threads post wrong passwords back to back until `stop` (or STORM_MAX_S):
    half for real accounts, half for names that do not exist."""
    statuses: Counter[str] = Counter()
    latencies: list[float] = []
    lock = threading.Lock()
    deadline = time.monotonic() + STORM_MAX_S

    def attacker(i: int) -> None:
        mine: Counter[str] = Counter()
        took: list[float] = []
        batch = sent = 0
        conn = None
        while not stop.is_set() and time.monotonic() < deadline:
            if conn is None or sent == ADDRESS_BUDGET:
                if conn is not None:
                    conn.close()
                conn = http.client.HTTPConnection(
                    "127.0.0.1",
                    port,
                    timeout=TIMEOUT_S,
                    source_address=(storm_address(i, batch), 0),
                )
                batch, sent = batch + 1, 0
                try:
                    token, pre_session = login_form(conn)
                except Exception as exc:
                    mine[type(exc).__name__] += 1
                    conn = None
                    continue
            name = users[sent % len(users)] if sent % 2 else f"nobody{i}x{batch}x{sent}"
            body = urllib.parse.urlencode(
                {"username": name, "password": "wrong password, storm", "login_token": token}
            )
            headers = {"Content-Type": "application/x-www-form-urlencoded", "Cookie": pre_session}
            t = time.perf_counter()
            try:
                conn.request("POST", "/login", body, headers)
                response = conn.getresponse()
                response.read()
                mine[str(response.status)] += 1
                took.append(time.perf_counter() - t)
            except Exception as exc:
                mine[type(exc).__name__] += 1
                conn.close()
                conn = None
            sent += 1
        if conn is not None:
            conn.close()
        with lock:
            statuses.update(mine)
            latencies.extend(took)

    threads = [threading.Thread(target=attacker, args=(i,), daemon=True) for i in range(n_clients)]
    for thread in threads:
        thread.start()
    return {"threads": threads, "statuses": statuses, "latencies": latencies}


def run_storm(
    built: Built, clients: list[Client], port: int, server_pid: int, n: int, per: int
) -> dict[str, Any]:
    """Queue p99 for `n` readers, idle and then while `n` other clients post wrong passwords."""
    readers = clients[:n]
    idle = run_scenario("storm: queue idle", readers, queue_plan(built, n, per), server_pid)
    stop = threading.Event()
    storm = sign_in_storm(port, n, stop, built.users)
    time.sleep(2)  # the storm is under way before the readers start
    during = run_scenario("storm: queue during", readers, queue_plan(built, n, per), server_pid)
    stop.set()
    for thread in storm["threads"]:
        thread.join(timeout=TIMEOUT_S + 5)
    attempts = summarize(storm["latencies"])
    ratio = during["all"]["p99_ms"] / idle["all"]["p99_ms"]
    result = {
        "readers": n,
        "attackers": n,
        "idle": idle,
        "during": during,
        "queue_p99_ratio": ratio,
        "storm_answers": dict(storm["statuses"]),
        "storm_sign_in_latency": attempts,
    }
    print(
        f"sign-in storm: queue p99 idle {idle['all']['p99_ms']:.1f} ms, during the storm "
        f"{during['all']['p99_ms']:.1f} ms ({ratio:.2f}x; target <= 2x); median "
        f"{idle['all']['median_ms']:.1f} -> {during['all']['median_ms']:.1f} ms; storm answers "
        f"{dict(storm['statuses'])} (401 = hashed and refused), sign-in median "
        f"{attempts['median_ms']:.0f} ms",
        flush=True,
    )
    return result


def audit_downloads(home: Path) -> int:
    from sqlalchemy import func, select

    from priorauth.settings import load_settings
    from priorauth.store import AuditRow, Store

    store = Store(load_settings(home=home).db_url, migrate=False)
    with store.reader() as session:
        n = session.scalar(
            select(func.count(AuditRow.id)).where(
                AuditRow.action == "download", AuditRow.outcome == "ok"
            )
        )
    store.dispose()
    return int(n or 0)


# ---- in-process profile ------------------------------------------------------------------------


def profile(built: Built, repeats: int) -> dict[str, Any]:
    """Where a request's time goes, in this process (no HTTP, no concurrency): every SQL
    statement the app runs is timed through SQLAlchemy cursor events and its SQLite query plan
    taken with the same parameters; then a cProfile of the first page and of a download. The app
    is called as ASGI in this thread (httpx.ASGITransport), so no HTTP server is in the figures."""
    import anyio.to_thread
    import httpx
    from sqlalchemy import event

    from priorauth.settings import load_settings
    from priorauth.web.app import create_app

    settings = load_settings(home=built.home, workers=1)
    app = create_app(settings)
    engine = app.state.store.engine
    out: dict[str, Any] = {"requests": {}}
    seen: list[tuple[str, Any, float]] = []
    started: dict[int, float] = {}

    @event.listens_for(engine, "before_cursor_execute")
    def _before(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        started[id(cursor)] = time.perf_counter()

    @event.listens_for(engine, "after_cursor_execute")
    def _after(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        seen.append((statement, parameters, time.perf_counter() - started.pop(id(cursor))))

    def explain(statement: str, parameters: Any) -> list[str]:
        if not statement.lstrip().upper().startswith("SELECT"):
            return []
        raw = engine.raw_connection()
        try:
            cursor = raw.cursor()
            cursor.execute("EXPLAIN QUERY PLAN " + statement, parameters)
            return [row[-1] for row in cursor.fetchall()]
        finally:
            raw.close()

    async def inline(func, *args, **_options):  # type: ignore[no-untyped-def]
        return func(*args)

    async def drive() -> None:
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 50000))
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            r = await client.post("/login", data={"username": built.users[0], "password": PASSWORD})
            assert r.status_code == 303, r.status_code
            doc_id = sorted(built.documents)[0]
            urls = [*queue_urls(built)[3:], ("/documents/<id>", f"/documents/{doc_id}")]
            for label, path in urls:
                await client.get(path)  # warm
                seen.clear()
                t = time.perf_counter()
                for _ in range(repeats):
                    assert (await client.get(path)).status_code == 200
                total_ms = (time.perf_counter() - t) / repeats * 1000
                per_statement: dict[str, list[float]] = defaultdict(list)
                params: dict[str, Any] = {}
                for statement, parameters, seconds in seen:
                    key = " ".join(statement.split())
                    per_statement[key].append(seconds)
                    params[key] = parameters
                sql_ms = sum(sum(v) for v in per_statement.values()) / repeats * 1000
                statements = [
                    {
                        "sql": key[:200],
                        "ms_per_request": sum(values) / repeats * 1000,
                        "calls_per_request": len(values) / repeats,
                        "plan": explain(key, params[key]),
                    }
                    for key, values in sorted(per_statement.items(), key=lambda kv: -sum(kv[1]))
                ]
                out["requests"][label] = {
                    "ms": total_ms,
                    "sql_ms": sql_ms,
                    "statements": statements,
                }
                print(
                    f"  in-process {label:<22} {total_ms:6.2f} ms per request, of which SQL "
                    f"{sql_ms:6.2f} ms"
                )
                for st in statements[:3]:
                    print(
                        f"      {st['ms_per_request']:6.2f} ms  x{st['calls_per_request']:.0f}  "
                        f"{st['sql'][:90]}  | plan: {'; '.join(st['plan'])}"
                    )
            for label, path in (("/cases", "/cases"), ("/documents/<id>", f"/documents/{doc_id}")):
                prof = cProfile.Profile()
                prof.enable()
                for _ in range(repeats):
                    await client.get(path)
                prof.disable()
                buffer = io.StringIO()
                pstats.Stats(prof, stream=buffer).sort_stats("tottime").print_stats(15)
                out[f"cprofile {label}"] = buffer.getvalue()
                print(f"  cProfile of {repeats} x {label} (by own time, top 15):")
                body = buffer.getvalue().splitlines()
                start = next((i for i, line in enumerate(body) if "ncalls" in line), 0)
                print("\n".join("    " + line for line in body[start : start + 16]))

    # Everything in this thread, so cProfile sees the route code too: sync routes and
    # dependencies run inline instead of in anyio's worker threads.
    original = anyio.to_thread.run_sync
    anyio.to_thread.run_sync = inline
    try:
        asyncio.run(drive())
    finally:
        anyio.to_thread.run_sync = original
    app.state.store.dispose()
    return out


# ---- main ------------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    def run(*cmd: str) -> str:
        try:
            return subprocess.run(cmd, capture_output=True, text=True, check=False).stdout.strip()
        except OSError:
            return ""

    lscpu = dict(
        line.split(":", 1) for line in run("lscpu").splitlines() if ":" in line
    )  # "Model name", "CPU(s)", ...
    versions = {}
    for name in ("fastapi", "starlette", "uvicorn", "sqlalchemy", "jinja2", "h11", "pypdf"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "-"
    for name in ("uvloop", "httptools"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    import sqlite3

    return {
        "nproc": run("nproc"),
        "cpu": lscpu.get("Model name", "").strip(),
        "mem": run("free", "-h").splitlines()[1:2],
        "kernel": platform.release(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "loadavg_before": Path("/proc/loadavg").read_text().split()[:3],
        "versions": versions,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", type=int, default=100_000)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--requests", type=int, default=2000, help="per concurrent scenario")
    parser.add_argument("--baseline", type=int, default=200, help="single-client requests")
    parser.add_argument("--documents", type=int, default=200, help="cases with a packet")
    parser.add_argument(
        "--server-workers", type=int, default=1, help="priorauth serve --workers (default 1)"
    )
    parser.add_argument("--seed", type=int, default=20261125)
    parser.add_argument("--profile", action="store_true", help="also time SQL and profile")
    parser.add_argument("--json", type=Path, help="write every figure here")
    parser.add_argument("--keep", action="store_true", help="keep the temporary data folder")
    parser.add_argument(
        "--scenarios",
        default="baseline,A,B",
        help="comma list of baseline, A (queue), B (download), storm (sign-in storm)",
    )
    parser.add_argument(
        "--storm-clients",
        type=int,
        default=10,
        help="storm: readers, and as many clients posting wrong passwords",
    )
    parser.add_argument(
        "--storm-requests", type=int, default=400, help="storm: queue pages per phase, in all"
    )
    args = parser.parse_args()
    if args.requests % args.clients:
        parser.error("--requests must be a multiple of --clients")

    info = machine()
    print(json.dumps(info, indent=1))
    root = Path(tempfile.mkdtemp(prefix="bench-portal-"))
    results: dict[str, Any] = {"machine": info, "args": {k: str(v) for k, v in vars(args).items()}}
    proc = None
    clients: list[Client] = []
    try:
        t = time.perf_counter()
        built = build_home(root, args.cases, args.documents, args.clients, args.seed)
        built.timings["build_total_s"] = time.perf_counter() - t
        db = built.home / "priorauth.sqlite3"
        print(
            f"store: {built.cases:,} cases, {len(built.documents)} documents, "
            f"{len(built.users)} users, {db.stat().st_size / 2**20:.1f} MiB; "
            + ", ".join(f"{k} {v:.1f}" for k, v in built.timings.items()),
            flush=True,
        )
        results["store"] = {
            "cases": built.cases,
            "documents": len(built.documents),
            "users": len(built.users),
            "db_mib": db.stat().st_size / 2**20,
            "timings": built.timings,
        }
        doc_cases = {}
        from sqlalchemy import select

        from priorauth.settings import load_settings
        from priorauth.store import DocumentRow, Store

        store = Store(load_settings(home=built.home).db_url, migrate=False)
        with store.reader() as session:
            doc_cases = dict(session.execute(select(DocumentRow.id, DocumentRow.case_id)).all())
        store.dispose()

        port = free_port()
        proc = start_server(built.home, port, root / "server.log", args.server_workers)
        t = time.perf_counter()
        clients = [Client(port, name) for name in built.users]
        results["sign_in_s_per_client"] = (time.perf_counter() - t) / len(clients)
        print(
            f"{len(clients)} clients signed in, {results['sign_in_s_per_client'] * 1000:.0f} ms "
            "each (sequential; argon2id)",
            flush=True,
        )
        audit_before = audit_downloads(built.home)

        # Warm-up (template compilation, SQLite page cache), not measured.
        clients[0].reconnect()
        for label, path in queue_urls(built):
            status, headers, body = clients[0].get(path)
            assert check_queue(path, status, headers, body) is None, (label, status)
        warm_doc = sorted(built.documents)[0]
        status, headers, body = clients[0].get(f"/documents/{warm_doc}")
        assert (
            check_download(built.documents[warm_doc], doc_cases[warm_doc], status, headers, body)
            is None
        )
        downloads_sent = 1

        per = args.requests // args.clients
        wanted = set(args.scenarios.split(","))
        scenarios = results["scenarios"] = []
        if "baseline" in wanted:
            scenarios.append(
                run_scenario(
                    "baseline-queue", clients[:1], queue_plan(built, 1, args.baseline), proc.pid
                )
            )
            scenarios.append(
                run_scenario(
                    "baseline-download",
                    clients[:1],
                    download_plan(built, doc_cases, 1, args.baseline, args.seed),
                    proc.pid,
                )
            )
            downloads_sent += scenarios[-1]["ok"]
        if "A" in wanted:
            scenarios.append(
                run_scenario("A queue", clients, queue_plan(built, args.clients, per), proc.pid)
            )
        if "B" in wanted:
            scenarios.append(
                run_scenario(
                    "B download",
                    clients,
                    download_plan(built, doc_cases, args.clients, per, args.seed + 1),
                    proc.pid,
                )
            )
            downloads_sent += scenarios[-1]["ok"]
        if "storm" in wanted:
            n = min(args.storm_clients, len(clients))
            results["storm"] = run_storm(
                built, clients, port, proc.pid, n, max(1, args.storm_requests // n)
            )
            scenarios.extend([results["storm"]["idle"], results["storm"]["during"]])
        results["server_peak_rss_mib"] = rss_mib(proc.pid)
        peaks = ", ".join(f"{mib:.0f}" for mib in results["server_peak_rss_mib"])
        print(f"server peak RSS {peaks} MiB")
        for client in clients:
            client.close()
        stop_server(proc)  # lets requests the clients gave up on finish before counting
        proc = None
        results["server_log"] = server_errors(root / "server.log")
        print(f"server log: {results['server_log']}")
        results["audit"] = {
            "successful_downloads": downloads_sent,
            "download_ok_rows_added": audit_downloads(built.home) - audit_before,
        }
        print(f"audit: {results['audit']}")
        if args.profile:
            results["profile"] = profile(built, repeats=20)
        failed = any(s["errors"] for s in scenarios) or (
            results["audit"]["successful_downloads"] != results["audit"]["download_ok_rows_added"]
        )
    finally:
        if proc is not None:
            stop_server(proc)
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1, default=str))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
