"""The nightly run at scale: wall time, peak memory and where the time goes, night by night.

Builds a temporary PRIORAUTH_HOME with N synthetic case files in intake/ (varied from the fixture
cases; two small fixture attachment PDFs shared by all), then runs three nights, each in a fresh
process, as the scheduler would:

  night 1  intake and letters for all N cases;
           then (not timed as a night) ~1.2 x R cases are marked submitted in the store, and R
           payer responses are written to responses/: JSON files of up to 200 responses and
           X12 278 files (single and batched), mostly approvals and pended, ~12 % adverse;
  night 2  payer responses, denial notifications (apprise json:// to a local HTTP receiver
           started here), overdue flags, renewal letters for authorizations ending soon;
  night 3  a quiet night: no new files (the steady-state cost of an idle night).

Per night it reports wall time; peak RSS of the night's main process and of its render workers
(sampled /proc VmHWM of the whole process tree, plus getrusage ru_maxrss); and the time split:
each step timed through `run_night`'s `step`/`map_chunks` hooks, rendering (render workers, and
renewal letters rendered in the main process) against orchestration and store work (everything
else: DB writes, hashing, response parsing, notifications and, with --flow, Prefect). Nothing in
src/ or flows/ is changed; a few functions are wrapped with timers inside the night's process.
Every case, name, member ID and response is synthetic and lives in a temporary folder.

    .venv/bin/python bench/bench_nightly.py                          # 10,000 cases, 2,000 responses
    .venv/bin/python bench/bench_nightly.py --cases 2500 --responses 500
    .venv/bin/python bench/bench_nightly.py --scaling 2500,5000,10000  # memory vs N (R = N/5)
    .venv/bin/python bench/bench_nightly.py --cases 2000 --responses 400 --flow  # Prefect flow
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import random
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml
from procs import (
    TreeSampler,
    machine_busy_s,
    proc_rss_mb,
    remove_later,
)
from synthetic import vary_case

# priorauth (and prefect) are imported inside functions: a night's process must set
# PRIORAUTH_* and PREFECT_* in os.environ before the first import.

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "fixtures"
STEPS = ("find-new-cases", "letters", "payer-responses", "notifications", "renewals-and-deadlines")
# The two attachments every synthetic case points at (small, 1 page each).
ATTACHMENT_FILES = {"clinic_note": "clinic-note-cidp-2002.pdf", "other": "lab-report-pid-3002.pdf"}


# The payer responses' outcomes (share of R). Adverse (→ denial notice): denied, partial.
OUTCOMES = {
    "approved": 0.60,
    "pending": 0.15,
    "info_requested": 0.08,
    "denied": 0.10,
    "partially_approved": 0.02,
    "not_required": 0.03,
    "rejection": 0.02,
}
X12_CODE = {
    "approved": "A1",
    "partially_approved": "A2",
    "denied": "A3",
    "pending": "A4",
    "info_requested": "CT",
    "not_required": "NA",
}
DENIAL_CODES = ["0F", "0G", "04", "NOT_MEDICALLY_NECESSARY", "STEP_THERAPY_NOT_MET", "ZZ9"]


# ---- /proc and machine ---------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    def run(*cmd: str) -> str:
        try:
            return subprocess.run(cmd, capture_output=True, text=True, check=False).stdout
        except OSError:
            return ""

    lscpu = {
        k.strip(): v.strip()
        for k, _, v in (line.partition(":") for line in run("lscpu").splitlines())
    }
    mem = run("free", "-g").splitlines()
    versions = {}
    for name in (
        "prefect",
        "SQLAlchemy",
        "reportlab",
        "pypdf",
        "pyx12",
        "apprise",
        "pydantic",
        "Jinja2",
        "PyYAML",
    ):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return {
        "nproc": run("nproc").strip(),
        "cpu": lscpu.get("Model name", ""),
        "hypervisor": lscpu.get("Hypervisor vendor", ""),
        "free_g_mem": " ".join(mem[1].split()[1:3]) if len(mem) > 1 else "",
        "python": platform.python_version(),
        "kernel": platform.release(),
        "versions": versions,
    }


# ---- the notification receiver -------------------------------------------------------------


class Receiver:
    """A local HTTP endpoint answering 200 to every POST (apprise `json://127.0.0.1:PORT/`)."""

    def __init__(self) -> None:
        self.posts = 0
        self.keys: set[str] = set()
        self.bad = 0
        lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    ok = isinstance(json.loads(body), dict)
                except ValueError:
                    ok = False
                with lock:
                    outer.posts += 1
                    outer.bad += not ok
                    outer.keys.add(self.headers.get("X-Priorauth-Dedup", ""))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"json://127.0.0.1:{self.port}/"

    def counts(self) -> dict[str, int]:
        return {"posts": self.posts, "distinct_dedup_keys": len(self.keys), "bad": self.bad}

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# ---- synthetic cases -----------------------------------------------------------------------


def load_shapes(catalog: Any, today: date) -> list[dict[str, Any]]:
    """Fixture cases that are valid (apart from their attachments): the shapes to vary."""
    from priorauth.intake import find_case_files, parse_case_file, validate_case

    shapes = []
    for path in find_case_files([FIXTURES / "cases"]):
        data = parse_case_file(path)
        probe = {k: v for k, v in data.items() if k != "attachments"}
        try:
            validate_case(probe, catalog=catalog, today=today, case_dir=None)
        except Exception as exc:  # a fixture being edited right now must not stop the bench
            print(f"  (skipping fixture {path.name}: {type(exc).__name__})", file=sys.stderr)
            continue
        shapes.append(data)
    if not shapes:
        raise SystemExit("no valid fixture case in fixtures/cases")
    return shapes


def vary(shape: dict[str, Any], i: int, rng: random.Random, catalog: Any) -> dict[str, Any]:
    data = vary_case(shape, f"NB-{i:06d}", i, rng, catalog)
    attachments = data.get("attachments") or []
    data["attachments"] = [
        {
            **a,
            "path": "../attachments/" + ATTACHMENT_FILES.get(a["kind"], ATTACHMENT_FILES["other"]),
        }
        for a in attachments[:2]
    ]
    if not data["attachments"]:
        data.pop("attachments")
    return data


def make_home(root: Path, n: int, seed: int, invalid_share: float) -> dict[str, Any]:
    """root/home/intake/*.yaml (N synthetic cases), root/home/attachments/ (2 small PDFs)."""
    from priorauth.catalog import load_catalog
    from priorauth.dosing import compute_dose
    from priorauth.intake import validate_case
    from priorauth.pipeline import dose_request
    from priorauth.settings import load_settings

    t0 = time.perf_counter()
    today = date.today()
    catalog = load_catalog(load_settings().reference_dir)
    shapes = load_shapes(catalog, today)
    home = root / "home"
    intake, attachments = home / "intake", home / "attachments"
    intake.mkdir(parents=True)
    attachments.mkdir()
    for name in ATTACHMENT_FILES.values():
        shutil.copy(FIXTURES / "attachments" / name, attachments / name)
    rng = random.Random(seed)
    invalid = 0
    for i in range(n):
        shape = shapes[i % len(shapes)]
        for attempt in range(20):
            data = vary(shape, i, rng, catalog)
            try:  # valid and dosable, so every case but the planted invalid ones gets a letter
                case = validate_case(data, catalog=catalog, today=today, case_dir=intake)
                compute_dose(dose_request(case), catalog.product(case.request.product_id))
                break
            except Exception:
                if attempt == 19:
                    raise
        if rng.random() < invalid_share:  # set aside at intake (quarantine) with a reason
            data["patient"]["weight"] = {"value": 950, "unit": "kg"}
            invalid += 1
        text = yaml.dump(data, Dumper=yaml.CSafeDumper, allow_unicode=True, sort_keys=False)
        (intake / f"nb-{i:06d}.yaml").write_text(text, encoding="utf-8")
    return {
        "n": n,
        "planted_invalid": invalid,
        "fixture_shapes": len(shapes),
        "attachment_pdfs_kb": [
            round((attachments / f).stat().st_size / 1024, 1) for f in ATTACHMENT_FILES.values()
        ],
        "generate_s": round(time.perf_counter() - t0, 1),
    }


# ---- submissions and payer responses (between night 1 and night 2) -------------------------


def submit_and_write_responses(
    home: Path, n_responses: int, seed: int, now: datetime
) -> dict[str, Any]:
    """Mark ~1.2 x R ready cases submitted (tracking.submit), then write R responses to some."""
    from sqlalchemy import select

    from priorauth.catalog import load_catalog
    from priorauth.settings import load_settings
    from priorauth.store import CaseRow, Store
    from priorauth.tracking import Actor, submit

    t0 = time.perf_counter()
    settings = load_settings(home=home)
    catalog = load_catalog(settings.reference_dir)
    store = Store(settings.db_url)
    rng = random.Random(seed + 1)
    with store.session() as session:
        ready = session.execute(
            select(
                CaseRow.case_id,
                CaseRow.member_id,
                CaseRow.hcpcs,
                CaseRow.service_start,
                CaseRow.payer_id,
                CaseRow.units_requested,
            )
            .where(CaseRow.status == "ready")
            .order_by(CaseRow.case_id)
        ).all()
    n_submit = min(len(ready), int(n_responses * 1.2))
    if n_submit < n_responses:
        raise SystemExit(f"only {len(ready)} ready cases for {n_responses} responses")
    chosen = rng.sample(ready, n_submit)
    coordinator = Actor("bench-coordinator", "coordinator", "coordinator")
    for start in range(0, n_submit, 500):
        with store.session() as session:
            for c in chosen[start : start + 500]:
                # submitted 1 hour to 20 days ago: some are past the payer's deadline by night 2
                submit(
                    session,
                    c.case_id,
                    method=rng.choice(["fax", "portal", "epa"]),
                    reference=f"PR-{c.case_id}",
                    actor=coordinator,
                    now=now - timedelta(hours=rng.uniform(1, 480)),
                    catalog=catalog,
                )
    store.dispose()
    submit_s = time.perf_counter() - t0

    t1 = time.perf_counter()
    answered = chosen[:n_responses]
    outcomes = rng.choices(list(OUTCOMES), weights=list(OUTCOMES.values()), k=n_responses)
    today = now.date()
    responses = []
    for c, outcome in zip(answered, outcomes, strict=True):
        r: dict[str, Any] = {"case": c, "outcome": outcome}
        match = rng.random()
        r["by"] = "trace" if match < 0.85 else "payer_ref" if match < 0.95 else "member"
        if outcome in ("approved", "partially_approved"):
            window = rng.random()
            if window < 0.05:  # ends within the renewal window: a renewal letter on night 2
                end = today + timedelta(days=rng.randrange(1, 29))
            elif window < 0.06:  # already ended: expired on night 2
                end = today - timedelta(days=rng.randrange(1, 10))
            else:
                end = (c.service_start or today) + timedelta(days=179)
            r["auth"] = (end - timedelta(days=179), end, c.units_requested or 100)
        responses.append(r)
    rng.shuffle(responses)
    x12_share = 0.2
    n_x12 = int(n_responses * x12_share)
    x12, js = responses[:n_x12], responses[n_x12:]
    folder = home / "responses"
    folder.mkdir(parents=True, exist_ok=True)
    files = Counter()
    for k in range(0, len(js), 200):
        body = {"responses": [json_response(r, now, rng) for r in js[k : k + 200]]}
        path = folder / f"portal-export-{k // 200:03d}.json"
        path.write_text(json.dumps(body, indent=1), encoding="utf-8")
        files["json"] += 1
    single, batched = x12[: len(x12) // 2], x12[len(x12) // 2 :]
    control = 1000
    for r in single:
        control += 1
        path = folder / f"x12-{r['case'].case_id.lower()}.x12"
        path.write_text(x12_interchange([r], control, now, catalog), encoding="ascii")
        files["x12_single"] += 1
    for k in range(0, len(batched), 50):
        control += 1
        path = folder / f"x12-batch-{k // 50:03d}.278"
        path.write_text(x12_interchange(batched[k : k + 50], control, now, catalog), "ascii")
        files["x12_batch"] += 1
    return {
        "submitted": n_submit,
        "responses": n_responses,
        "outcomes": dict(Counter(outcomes)),
        "matched_by": dict(Counter(r["by"] for r in responses)),
        "files": dict(files),
        "x12_responses": len(x12),
        "json_responses": len(js),
        "submit_s": round(submit_s, 1),
        "write_s": round(time.perf_counter() - t1, 1),
    }


def json_response(r: dict[str, Any], now: datetime, rng: random.Random) -> dict[str, Any]:
    c, outcome = r["case"], r["outcome"]
    out: dict[str, Any] = {}
    if r["by"] == "trace":
        out["case_id"] = c.case_id
    if r["by"] in ("trace", "payer_ref"):
        out["payer_reference"] = f"PR-{c.case_id}"
    out["member_id"] = c.member_id
    out["hcpcs"] = c.hcpcs
    if c.service_start:
        out["service_start"] = c.service_start.isoformat()
    if outcome == "rejection":
        out["rejection_errors"] = [{"code": rng.choice(["72", "75", "57"])}]
    else:
        out["decision"] = outcome
        out["certification_number"] = f"CERT-{c.case_id}"
    if outcome in ("denied", "partially_approved"):
        out["reason_code"] = rng.choice(DENIAL_CODES)
        out["reason_text"] = "Synthetic benchmark decision: criteria in the plan policy not met."
    if "auth" in r:
        start, end, units = r["auth"]
        out["authorized_start"] = start.isoformat()
        out["authorized_end"] = end.isoformat()
        out["authorized_units"] = units
    out["decision_date"] = now.date().isoformat()
    return out


def x12_interchange(rs: list[dict[str, Any]], control: int, now: datetime, catalog: Any) -> str:
    """One 005010X217 278 response interchange, one transaction per response."""
    payer = catalog.payer(rs[0]["case"].payer_id)
    sender = payer.id.upper().replace("-", "")[:15]
    isa = (
        f"ISA*00*{' ' * 10}*00*{' ' * 10}*ZZ*{sender:<15}*ZZ*{'NORTHWINDSP':<15}*"
        f"{now:%y%m%d}*{now:%H%M}*^*00501*{control:09d}*0*P*:~"
    )
    segments = [f"GS*HI*{sender}*NORTHWINDSP*{now:%Y%m%d}*{now:%H%M}*{control}*X*005010X217"]
    for number, r in enumerate(rs, start=1):
        c, outcome = r["case"], r["outcome"]
        st = f"{number:04d}"
        start = c.service_start or now.date()
        dates = f"{start:%Y%m%d}-{start + timedelta(days=179):%Y%m%d}"
        tx = [
            f"ST*278*{st}*005010X217",
            f"BHT*0007*11*NB{control:06d}{st}*{now:%Y%m%d}*{now:%H%M}",
            "HL*1**20*1",
            f"NM1*X3*2*{payer.name.upper()}*****PI*{sender}",
            "HL*2*1*21*1",
            "NM1*1P*2*NORTHWIND SPECIALTY PHARMACY*****XX*1538296470",
            "HL*3*2*22*1",
            f"NM1*IL*1*SYNTHETIC*PATIENT****MI*{c.member_id}",
        ]
        if outcome == "rejection":
            tx.append("AAA*N**75*C")
        tx.append("HL*4*3*EV*1")
        if r["by"] == "trace":
            tx.append(f"TRN*2*{c.case_id}*1538296470")
        if r["by"] in ("trace", "payer_ref"):
            tx.append(f"TRN*1*PR-{c.case_id}*9{sender[:9]}")
        tx += ["UM*HS*I*1", f"DTP*AAH*RD8*{dates}", "HL*5*4*SS*0", "UM*HS*I*1"]
        if outcome != "rejection":
            reason = ""
            if outcome in ("denied", "partially_approved"):
                reason = "*" + random.Random(c.case_id).choice(["0F", "0G", "04", "10"])
            tx.append(f"HCR*{X12_CODE[outcome]}*CERT-{c.case_id}{reason}")
        tx.append(f"DTP*472*RD8*{dates}")
        if "auth" in r:
            a_start, a_end, _ = r["auth"]
            tx += [f"DTP*007*D8*{a_start:%Y%m%d}", f"DTP*036*D8*{a_end:%Y%m%d}"]
        units = r["auth"][2] if "auth" in r else c.units_requested or 100
        tx.append(f"SV1*HC:{c.hcpcs}**UN*{units}")
        if outcome in ("denied", "partially_approved"):
            tx.append("MSG*Synthetic benchmark decision: criteria in the plan policy not met.")
        tx.append(f"SE*{len(tx) + 1}*{st}")
        segments += tx
    segments += [f"GE*{len(rs)}*{control}", f"IEA*1*{control:09d}"]
    return isa + "\n" + "".join(s + "~\n" for s in segments)


# ---- one night, in its own process ----------------------------------------------------------


class Timers:
    """Seconds and calls per name, from any thread."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: Counter = Counter()

    def add(self, name: str, seconds: float) -> None:
        with self.lock:
            self.seconds[name] += seconds
            self.calls[name] += 1

    def wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.add(name, time.perf_counter() - t)

        return timed

    def as_dict(self) -> dict[str, dict[str, float]]:
        return {
            k: {"s": round(v, 3), "calls": self.calls[k]} for k, v in sorted(self.seconds.items())
        }


def rss_mb() -> float:
    return proc_rss_mb()


def instrument(timers: Timers, marks: dict[str, Any]) -> Callable[..., Any]:
    """Wrap the functions run_night calls with timers; return a timed run_night that wraps the
    `step` and `map_chunks` hooks it is given (the flow's, or the defaults)."""
    from priorauth import nightly, pipeline

    nightly.record_results = timers.wrap("letters: record in store", nightly.record_results)
    nightly.document_records = timers.wrap("letters: hash+link PDFs", nightly.document_records)
    pipeline.BatchRunner.run_chunk = timers.wrap(
        "letters: render (wait for worker)", pipeline.BatchRunner.run_chunk
    )
    pipeline.BatchRunner.__exit__ = timers.wrap("workers: shut down", pipeline.BatchRunner.__exit__)
    nightly.parse_response_file = timers.wrap("responses: parse", nightly.parse_response_file)
    nightly.ingest_response = timers.wrap("responses: apply in store", nightly.ingest_response)
    nightly.send = timers.wrap("notifications: send (HTTP)", nightly.send)
    nightly.generate_case = timers.wrap("renewals: render in main process", nightly.generate_case)
    nightly.finish = timers.wrap("deadlines: expire, overdue, counts", nightly.finish)
    nightly.Store = timers.wrap("setup: open store", nightly.Store)
    build = pipeline.Workbench.build.__func__
    pipeline.Workbench.build = classmethod(timers.wrap("setup: workbench (catalog)", build))
    real = nightly.run_night
    marks["rss_mb"] = []

    def run_night(settings: Any, now: datetime, **hooks: Any) -> Any:
        step = hooks.pop("step", nightly._call)
        map_chunks = hooks.pop("map_chunks", None) or nightly._threads(settings.workers)
        marks["run_night_enter"] = time.perf_counter()
        marks["rss_mb"].append(("enter", round(rss_mb(), 1)))

        def timed_step(name: str, fn: Callable[[], Any]) -> Any:
            def inner() -> Any:
                t = time.perf_counter()
                try:
                    return fn()
                finally:
                    timers.add(f"step {name}: inside", time.perf_counter() - t)

            inner.__name__ = inner.__qualname__ = name.replace("-", "_")
            marks.setdefault("first_step", time.perf_counter())
            t = time.perf_counter()
            try:
                return step(name, inner)
            finally:
                timers.add(f"step {name}", time.perf_counter() - t)
                marks["rss_mb"].append((name, round(rss_mb(), 1)))

        def timed_map(fn: Callable[[list[Path]], Any], chunks: list[list[Path]]) -> list[Any]:
            @functools.wraps(fn)
            def chunk(paths: list[Path]) -> Any:
                t = time.perf_counter()
                try:
                    return fn(paths)
                finally:
                    timers.add("step letters: inside", time.perf_counter() - t)

            marks.setdefault("first_step", time.perf_counter())
            marks["chunks"] = len(chunks)
            marks["chunk_size"] = max((len(c) for c in chunks), default=0)
            marks["rss_mb"].append(("letters start", round(rss_mb(), 1)))
            t = time.perf_counter()
            try:
                return map_chunks(chunk, chunks)
            finally:
                timers.add("step letters", time.perf_counter() - t)
                marks["rss_mb"].append(("letters", round(rss_mb(), 1)))

        try:
            return real(settings, now, step=timed_step, map_chunks=timed_map, **hooks)
        finally:
            marks["run_night_exit"] = time.perf_counter()

    return run_night


def night_child(spec_path: str) -> None:
    """One night in this process: PRIORAUTH_*/PREFECT_* are already in os.environ."""
    spec = json.loads(Path(spec_path).read_text())
    t0 = time.perf_counter()
    timers, marks = Timers(), {}
    run_night = instrument(timers, marks)
    import_s = time.perf_counter() - t0
    t_call = time.perf_counter()
    if spec["flow"]:
        sys.path.insert(0, str(REPO))
        import flows.nightly as flow_module

        import_s = time.perf_counter() - t0
        flow_module.run_night = run_night
        t_call = time.perf_counter()
        summary = flow_module.nightly_run()
    else:
        from priorauth.settings import load_settings

        summary = run_night(load_settings(), datetime.now(UTC)).summary()
    t_done = time.perf_counter()
    try:  # reap the forkserver, so RUSAGE_CHILDREN covers it and the render workers it reaped
        from multiprocessing import forkserver

        forkserver._forkserver._stop()
    except Exception as exc:  # a private API: the figures from /proc do not depend on it
        print(f"could not stop the forkserver: {exc!r}", file=sys.stderr)
    self_ru = resource.getrusage(resource.RUSAGE_SELF)
    kids_ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = {
        "import_s": round(import_s, 3),
        "call_s": round(t_done - t_call, 3),
        "before_run_night_s": round(marks.get("run_night_enter", t_call) - t_call, 3),
        "setup_s": round(marks.get("first_step", t_call) - marks.get("run_night_enter", t_call), 3),
        "after_run_night_s": round(t_done - marks.get("run_night_exit", t_done), 3),
        "timers": timers.as_dict(),
        "chunks": marks.get("chunks", 0),
        "chunk_size": marks.get("chunk_size", 0),
        "rss_mb_after": marks["rss_mb"],
        "ru_maxrss_self_mb": round(self_ru.ru_maxrss / 1024, 1),
        "ru_maxrss_children_mb": round(kids_ru.ru_maxrss / 1024, 1),
        "cpu_self_s": round(self_ru.ru_utime + self_ru.ru_stime, 1),
        "cpu_children_s": round(kids_ru.ru_utime + kids_ru.ru_stime, 1),
        "summary": {
            k: (len(v) if isinstance(v, list) else v)
            for k, v in summary.items()
            if k not in ("by_status",)
        },
        "by_status": summary.get("by_status", {}),
    }
    Path(spec["result"]).write_text(json.dumps(out))
    # A normal exit: Prefect's atexit handler stops the flow's temporary server (os._exit would
    # leave it running). The process wall time reported includes that shutdown.


def run_night_process(
    name: str, root: Path, args: argparse.Namespace, notify_url: str
) -> dict[str, Any]:
    """Run one night in a child process; sample its process tree; return the measurements."""
    home = root / "home"
    spec = {"flow": args.flow, "result": str(root / f"{name}.json")}
    spec_path = root / f"{name}.spec.json"
    spec_path.write_text(json.dumps(spec))
    env = {
        **os.environ,
        "PRIORAUTH_HOME": str(home),
        "PRIORAUTH_WORKERS": str(args.workers),
        "PRIORAUTH_NOTIFY_URLS": notify_url,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    for key in ("PRIORAUTH_DATABASE_URL", "PRIORAUTH_CRASH_AT", "PREFECT_API_URL"):
        env.pop(key, None)
    if args.chunk_size:
        env["PRIORAUTH_CHUNK_SIZE"] = str(args.chunk_size)
    if args.flow:
        env["PREFECT_HOME"] = str(root / "prefect-home")  # its own temporary server database
    log_path = root / f"{name}.log"
    busy0, t0 = machine_busy_s(), time.perf_counter()
    with log_path.open("w") as log:
        child = subprocess.Popen(
            [sys.executable, __file__, "--night-child", str(spec_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=REPO,
        )
        sampler = TreeSampler(child.pid, worker_role="render_worker")
        sampler.start()
        code = child.wait()
    wall = time.perf_counter() - t0
    sampler.stop()
    reap_leftovers(sampler, child.pid)
    if code != 0 or not Path(spec["result"]).exists():
        tail = log_path.read_text(errors="replace")[-4000:]
        raise SystemExit(f"{name} failed (exit {code}):\n{tail}")
    result = json.loads(Path(spec["result"]).read_text())
    procs = sampler.summary()
    result["process_wall_s"] = round(wall, 2)
    result["processes"] = procs
    result["others_cores"] = round(
        max(0.0, machine_busy_s() - busy0 - procs["cpu_s_total"]) / wall, 2
    )
    return result


def reap_leftovers(sampler: TreeSampler, root: int, grace_s: float = 15.0) -> None:
    """Processes the night started that outlive it (e.g. a temporary Prefect server whose
    parent died): wait a little, then SIGTERM them by PID (same PID and command line only)."""
    deadline = time.monotonic() + grace_s
    for pid, cmd in sampler.cmd.items():
        if pid == root:
            continue
        while time.monotonic() < deadline and _alive(pid, cmd):
            time.sleep(0.2)
        if _alive(pid, cmd):
            print(f"stopping leftover process {pid}: {cmd[:80]}", file=sys.stderr)
            os.kill(pid, signal.SIGTERM)


def _alive(pid: int, cmd: str) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read().replace(b"\0", b" ").decode(errors="replace") == cmd
    except OSError:
        return False


# ---- report --------------------------------------------------------------------------------


def split(night: dict[str, Any], workers: int) -> dict[str, float]:
    """Where the night's wall time went, in seconds (phases run one after another)."""
    t = {k: v["s"] for k, v in night["timers"].items()}
    letters = t.get("step letters", 0.0)
    render_wait = t.get("letters: render (wait for worker)", 0.0)
    record = t.get("letters: record in store", 0.0)
    worker_cpu = night["processes"]["cpu_s"].get("render_worker", 0.0)
    renewals = t.get("renewals: render in main process", 0.0)
    steps = sum(t.get(f"step {s}", 0.0) for s in STEPS)
    inside = sum(t.get(f"step {s}: inside", 0.0) for s in STEPS if s != "letters")
    out = {
        "process_wall_s": night["process_wall_s"],
        "interpreter+imports_s": night["process_wall_s"] - night["call_s"],
        "flow_start_s": night["before_run_night_s"],
        "setup_s": night["setup_s"],
        "letters_phase_s": letters,
        "render_wait_thread_s": render_wait,
        "record_thread_s": record,
        "render_worker_cpu_s": worker_cpu,
        "worker_utilisation": worker_cpu / (workers * letters) if letters else 0.0,
        "renewal_render_s": renewals,
        "other_steps_s": steps - letters,
        "prefect_task_overhead_s": steps - letters - inside,
        "flow_finish_s": night["after_run_night_s"],
    }
    # Rendering: the letters phase at the share its threads spent waiting on a render worker,
    # plus renewal letters rendered in the main process; orchestration: the rest of the wall.
    busy = render_wait + record
    out["rendering_s"] = (letters * render_wait / busy if busy else 0.0) + renewals
    out["orchestration_s"] = night["process_wall_s"] - out["rendering_s"]
    return {k: round(v, 3 if k == "worker_utilisation" else 1) for k, v in out.items()}


def print_report(report: dict[str, Any]) -> None:
    m = report["machine"]
    v = m["versions"]
    print(
        f"machine: {m['nproc']} CPUs ({m['cpu']}, {m['hypervisor']}), free -g: {m['free_g_mem']} "
        f"GiB total/used, Python {m['python']}, kernel {m['kernel']}"
    )
    print("versions: " + ", ".join(f"{k} {x}" for k, x in v.items()))
    c, s = report["cases"], report["between"]
    print(
        f"cases: {c['n']} synthetic ({c['planted_invalid']} planted invalid) from "
        f"{c['fixture_shapes']} fixture shapes, generated in {c['generate_s']} s; "
        f"mode: {'Prefect flow' if report['args']['flow'] else 'run_night'}, "
        f"workers {report['args']['workers']}"
    )
    print(
        f"between nights: {s['submitted']} submitted in {s['submit_s']} s; {s['responses']} "
        f"responses ({s['json_responses']} JSON, {s['x12_responses']} X12) in {s['files']}; "
        f"outcomes {s['outcomes']}"
    )
    print()
    head = (
        f"{'night':<7} {'wall s':>7} {'run s':>7} {'main MB':>8} {'worker MB':>11} "
        f"{'fsrv MB':>7} {'prefect MB':>10} {'ru self':>7} {'ru kids':>7} {'others':>6}"
    )
    print(head)
    print("-" * len(head))
    for name, night in report["nights"].items():
        peaks = night["processes"]["peak_mb"]
        workers = "/".join(f"{x:.0f}" for x in peaks.get("render_worker", [])) or "-"
        fsrv = "/".join(f"{x:.0f}" for x in peaks.get("forkserver", [])) or "-"
        prefect = "/".join(f"{x:.0f}" for x in peaks.get("prefect_server", [])) or "-"
        print(
            f"{name:<7} {night['process_wall_s']:>7.1f} {night['call_s']:>7.1f} "
            f"{max(peaks.get('main', [0])):>8.0f} {workers:>11} {fsrv:>7} {prefect:>10} "
            f"{night['ru_maxrss_self_mb']:>7.0f} {night['ru_maxrss_children_mb']:>7.0f} "
            f"{night['others_cores']:>6.2f}"
        )
    print(
        "wall s: the night's process from start to exit; run s: the run_night/flow call alone;\n"
        "MB: peak RSS (VmHWM sampled every 0.5 s); ru self/kids: getrusage ru_maxrss of the "
        "night's process and of its reaped children;\nothers: cores used meanwhile by other "
        "processes on the machine (noise)"
    )
    for name, night in report["nights"].items():
        print()
        sp = night["split"]
        print(
            f"{name}: rendering {sp['rendering_s']:.1f} s, orchestration/store "
            f"{sp['orchestration_s']:.1f} s of {sp['process_wall_s']:.1f} s; "
            f"render workers busy {sp['worker_utilisation'] * 100:.0f} % of the letters phase "
            f"({sp['render_worker_cpu_s']:.0f} CPU s); main process CPU "
            f"{night['processes']['cpu_s'].get('main', 0):.0f} s"
        )
        for k, x in sp.items():
            print(f"    {k:<26} {x:>9}")
        for k, x in night["timers"].items():
            print(f"    {k:<42} {x['s']:>9.2f} s  {x['calls']:>6} calls")
        print(f"    summary: {night['summary']}")
        print(f"    statuses: {night['by_status']}")
        print(f"    main RSS after each step (MB): {night['rss_mb_after']}")
    if "receiver" in report:
        print()
        print(f"notification receiver: {report['receiver']}")


def print_scaling(rows: list[dict[str, Any]]) -> None:
    head = (
        f"{'N':>6} {'R':>5} {'night1 s':>8} {'cases/s':>7} {'night2 s':>8} {'night3 s':>8} "
        f"{'main MB n1/n2/n3':>17} {'worker MB':>11} {'others':>6}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        nights = r["nights"]
        mains = "/".join(
            f"{max(n['processes']['peak_mb'].get('main', [0])):.0f}" for n in nights.values()
        )
        workers = "/".join(
            f"{x:.0f}" for x in nights["night1"]["processes"]["peak_mb"].get("render_worker", [])
        )
        n1 = nights["night1"]
        print(
            f"{r['cases']['n']:>6} {r['between']['responses']:>5} {n1['process_wall_s']:>8.1f} "
            f"{r['cases']['n'] / n1['process_wall_s']:>7.1f} "
            f"{nights['night2']['process_wall_s']:>8.1f} {nights['night3']['process_wall_s']:>8.1f} "
            f"{mains:>17} {workers:>11} {max(n['others_cores'] for n in nights.values()):>6.2f}"
        )


# ---- main ----------------------------------------------------------------------------------


def bench(args: argparse.Namespace) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="priorauth-bench-nightly-", dir=args.tmp))
    log = functools.partial(print, file=sys.stderr)
    receiver = Receiver()
    report: dict[str, Any] = {
        "machine": machine_info(),
        "args": {
            "cases": args.cases,
            "responses": args.responses,
            "workers": args.workers,
            "flow": args.flow,
            "seed": args.seed,
        },
        "nights": {},
    }
    try:
        log(f"{args.cases} cases into {root}/home/intake …")
        report["cases"] = make_home(root, args.cases, args.seed, args.invalid_share)
        log("night 1 (intake and letters) …")
        report["nights"]["night1"] = run_night_process("night1", root, args, receiver.url)
        log(f"night 1: {report['nights']['night1']['process_wall_s']:.0f} s; submitting …")
        report["between"] = submit_and_write_responses(
            root / "home", args.responses, args.seed, datetime.now(UTC)
        )
        log("night 2 (responses, notifications, deadlines, renewals) …")
        report["nights"]["night2"] = run_night_process("night2", root, args, receiver.url)
        log("night 3 (no new files) …")
        report["nights"]["night3"] = run_night_process("night3", root, args, receiver.url)
        time.sleep(0.2)
        report["receiver"] = receiver.counts()
        for night in report["nights"].values():
            night["split"] = split(night, args.workers)
    finally:
        receiver.close()
        if args.keep:
            log(f"kept {root}")
        else:
            remove_later(root)
    return report


def scaling(args: argparse.Namespace) -> list[dict[str, Any]]:
    """One bench process per N (R = N/5), so every night's process starts fresh."""
    rows = []
    for n in args.scaling:
        cmd = [
            sys.executable,
            __file__,
            "--cases",
            str(n),
            "--responses",
            str(max(1, n // 5)),
            "--workers",
            str(args.workers),
            "--json",
        ]
        if args.tmp:
            cmd += ["--tmp", str(args.tmp)]
        print(f"N={n} …", file=sys.stderr)
        out = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=True).stdout
        rows.append(json.loads(out))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=10000, help="synthetic cases (10000)")
    parser.add_argument("--responses", type=int, default=2000, help="payer responses (2000)")
    parser.add_argument("--workers", type=int, default=2, help="PRIORAUTH_WORKERS (2)")
    parser.add_argument(
        "--flow",
        action="store_true",
        help="run each night through flows/nightly.py:nightly_run (temporary Prefect server)",
    )
    parser.add_argument("--chunk-size", type=int, default=0, help="PRIORAUTH_CHUNK_SIZE")
    parser.add_argument("--invalid-share", type=float, default=0.005, help="invalid case files")
    parser.add_argument(
        "--scaling",
        type=lambda s: [int(x) for x in s.split(",")],
        default=None,
        metavar="N1,N2,…",
        help="one run per N with R = N/5; prints memory and time against N",
    )
    parser.add_argument("--seed", type=int, default=20261125)
    parser.add_argument("--tmp", type=Path, default=None, help="parent of the temporary folder")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--night-child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.night_child:
        night_child(args.night_child)
        return 0
    if args.scaling:
        rows = scaling(args)
        if args.json:
            print(json.dumps(rows, indent=2, ensure_ascii=False))
        else:
            print_scaling(rows)
        return 0
    report = bench(args)
    if args.json:
        print(json.dumps(report, indent=2, ensure_ascii=False))
    else:
        print_report(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
