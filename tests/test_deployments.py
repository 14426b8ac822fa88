"""The production path, run as the README's "Prefect" section runs it, on a fresh copy of the
repository: a real `prefect server start` (on PostgreSQL when PRIORAUTH_DATABASE_URL names a
server, as in CI; SQLite otherwise), `prefect work-pool create priorauth --type process`,
`prefect deploy --all`, `prefect worker start --pool priorauth`, then flow runs triggered the way
a coordinator (`prefect deployment run`) and the 02:00 schedule trigger them.

One server and one worker serve the whole module (≈ 30–60 s in all); every process started here
is stopped, and every folder and database made here removed, even when a test fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from datetime import time as clock
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import yaml

from conftest import PG_URL

pytestmark = pytest.mark.deployment

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the repository's .venv/bin: prefect, priorauth
NEW_YORK = ZoneInfo("America/New_York")
# What the night takes in (`priorauth intake`, as in the README): every fixture case, and one
# invalid case file that the night sets aside (tests/test_nightly.py).
INTAKE = ["fixtures/cases", "fixtures/invalid/bad-g35-category.yaml"]
# A fresh checkout: the working tree (uncommitted changes included) without what is made locally.
LOCAL_ONLY = {".venv", "var", "out", ".git"}
CACHES = shutil.ignore_patterns(
    "__pycache__", "*.pyc", ".pytest_cache", ".ruff_cache", ".hypothesis", "*.egg-info"
)
WRITTEN = {"ready", "needs_info"}  # letter.pdf and packet.pdf written (needs_info: a DRAFT)
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
RUN_TIMEOUT = 180  # seconds a flow run may take from trigger to its final state


# -- processes -------------------------------------------------------------------------------


def _start_time(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _descendants(pid: int) -> list[tuple[int, str]]:
    """Every process below `pid` (Linux /proc), with its start time, so that a PID reused
    after its process ended is never signalled. Flow-run processes start in process groups of
    their own, so killing the worker's group alone would miss them."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    found, stack = [], [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            if (started := _start_time(child)) is not None:
                found.append((child, started))
            stack.append(child)
    return found


def _stop(procs: list[subprocess.Popen]) -> None:
    """SIGTERM each process's group (each was started as a session leader), all at once; then
    SIGKILL whatever of them and of their descendants is left after a grace period."""
    # (only of processes not yet reaped: a reaped one's PID may belong to another process now)
    trees = [_descendants(p.pid) for p in procs if p.poll() is None and Path("/proc").is_dir()]
    for proc in procs:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    for proc in procs:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    for pid, started in (item for tree in trees for item in tree):
        if _start_time(pid) == started:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _die_with_parent() -> None:
    """In the child, before exec (Linux): SIGTERM when the test process dies, however it dies,
    so that a killed pytest leaves no server or worker behind."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return f"({path.name}: nothing written)"
    return f"--- last {lines} lines of {path.name} ---\n" + "\n".join(text.splitlines()[-lines:])


# -- the PostgreSQL database of the Prefect server --------------------------------------------


def _prefect_database(stack: ExitStack) -> tuple[str, dict[str, Any]] | None:
    """A fresh database for Prefect on the server PRIORAUTH_DATABASE_URL names (dropped at the
    end): the asyncpg URL Prefect's server takes, and psycopg's connection arguments for it.
    None when no PostgreSQL is configured."""
    if not PG_URL:
        return None
    import psycopg
    from sqlalchemy.engine import make_url

    base = make_url(PG_URL)
    name = f"prefect_test_{uuid.uuid4().hex[:12]}"
    conninfo = {
        "host": base.host or "127.0.0.1",
        "port": base.port or 5432,
        "user": base.username,
        "password": base.password,
        "dbname": base.database or "postgres",
        "autocommit": True,
    }
    with psycopg.connect(**conninfo) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        with psycopg.connect(**conninfo) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    stack.callback(drop)
    url = base.set(drivername="postgresql+asyncpg", database=name)
    return url.render_as_string(hide_password=False), conninfo | {"dbname": name}


# -- the production setup ---------------------------------------------------------------------


@dataclass
class Production:
    root: Path  # the temporary folder holding everything below
    repo: Path  # the fresh copy of the repository, where `prefect deploy --all` ran
    home: Path  # the worker's PRIORAUTH_HOME: the nightly's data folder
    api: str
    env: dict[str, str]  # the environment of every prefect/priorauth command here
    logs: Path
    postgresql: dict[str, Any] | None  # psycopg.connect() arguments of Prefect's database
    procs: list[subprocess.Popen] = field(default_factory=list)  # all stopped at the end

    def diagnostics(self) -> str:
        return "\n".join(_tail(self.logs / name) for name in ("worker.log", "server.log"))

    def cli(self, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
        """Start `.venv/bin/<args>` in the repository copy (stdout and stderr captured)."""
        return self.start(
            [str(BIN / args[0]), *args[1:]],
            cwd=self.repo,
            env={**self.env, **(env or {})},
            stdout=subprocess.PIPE,
            text=True,
        )

    def start(self, args: list[str], **options: Any) -> subprocess.Popen:
        proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            **options,
        )
        self.procs.append(proc)
        return proc

    def finish(self, proc: subprocess.Popen, timeout: float = 120) -> str:
        try:
            output, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            output, _ = proc.communicate()
            pytest.fail(f"{proc.args} took over {timeout} s:\n{output}\n{self.diagnostics()}")
        if proc.returncode != 0:
            pytest.fail(f"{proc.args} exited {proc.returncode}:\n{output}\n{self.diagnostics()}")
        return output

    def client(self):
        from prefect.client.orchestration import SyncPrefectClient

        return SyncPrefectClient(api=self.api)

    def wait(self, run_id: uuid.UUID, until: Callable[[Any], bool], what: str) -> Any:
        """Poll the flow run until `until(run)` holds; fail with its state and the logs."""
        deadline = time.monotonic() + RUN_TIMEOUT
        with self.client() as client:
            while True:
                run = client.read_flow_run(run_id)
                if until(run):
                    return run
                if run.state_type.value in TERMINAL or time.monotonic() > deadline:
                    state = f"{run.state_type.value} {run.state.message if run.state else ''}"
                    pytest.fail(
                        f"flow run {run.name} ({run_id}) of {what} did not reach the expected "
                        f"state in time; it is {state}\n{self.diagnostics()}"
                    )
                time.sleep(0.25)


def _copy_repository(target: Path) -> None:
    def ignore(folder: str, names: list[str]) -> set[str]:
        local = LOCAL_ONLY if Path(folder) == ROOT else set()
        return {n for n in names if n in local} | CACHES(folder, names)

    shutil.copytree(ROOT, target, ignore=ignore, symlinks=True)


def _wait_healthy(server: subprocess.Popen, api: str, logs: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"prefect server start exited {server.returncode}\n{_tail(logs)}")
        try:
            with urllib.request.urlopen(f"{api}/health", timeout=2) as response:  # noqa: S310
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    pytest.fail(f"the Prefect server did not answer {api}/health in {timeout} s\n{_tail(logs)}")


@pytest.fixture(scope="module")
def production() -> Iterator[Production]:
    """Server, work pool, deployments and worker, set up as the README says, on a fresh copy."""
    if not (BIN / "prefect").exists() or not (BIN / "priorauth").exists():
        pytest.skip(f"no prefect/priorauth commands next to {sys.executable} (make test installs)")
    with ExitStack() as stack:
        root = Path(tempfile.mkdtemp(prefix="priorauth-deploy-"))
        stack.callback(shutil.rmtree, root, ignore_errors=True)
        repo, home, logs = root / "priorauth", root / "home", root / "logs"
        logs.mkdir()
        _copy_repository(repo)
        port = _free_port()
        api = f"http://127.0.0.1:{port}/api"
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("PREFECT_", "PRIORAUTH_", "_PRIORAUTH_"))
        }
        env |= {
            "PREFECT_HOME": str(root / "prefect"),
            "PREFECT_API_URL": api,
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_SERVER_UI_ENABLED": "false",
            # the copy's code, as a checkout with its own `pip install -e .` would run it
            "PYTHONPATH": str(repo / "src"),
            "PYTHONUNBUFFERED": "1",
        }
        url, postgresql = _prefect_database(stack) or (None, None)
        server_env = env | ({"PREFECT_API_DATABASE_CONNECTION_URL": url} if url else {})
        production = Production(root, repo, home, api, env, logs, postgresql)
        stack.callback(_stop, production.procs)

        server_log = (logs / "server.log").open("w")
        worker_log = (logs / "worker.log").open("w")
        stack.callback(worker_log.close)
        stack.callback(server_log.close)
        server = production.start(
            [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            cwd=root,
            env=server_env,
            stdout=server_log,
        )
        # While the server starts (and migrates its database): what needs no server.
        intake = production.cli("priorauth", "intake", *INTAKE, env={"PRIORAUTH_HOME": str(home)})
        import prefect.client.orchestration  # noqa: F401  (the tests' client: ≈ 1-2 s to import)

        _wait_healthy(server, api, logs / "server.log")
        production.finish(intake)
        production.finish(
            production.cli("prefect", "work-pool", "create", "priorauth", "--type", "process")
        )
        # The worker polls every second; it serves the deployments as soon as they exist.
        production.start(
            [str(BIN / "prefect"), "worker", "start", "--pool", "priorauth"],
            cwd=root,  # anywhere: the deployments say where the code is
            # Settings reach flow runs through the worker's environment (README, "Prefect"); one
            # render process per flow run keeps this module quick on a 2-core machine.
            env=env
            | {
                "PRIORAUTH_HOME": str(home),
                "PRIORAUTH_WORKERS": "1",
                "PREFECT_WORKER_QUERY_SECONDS": "1",
            },
            stdout=worker_log,
        )
        production.finish(production.cli("prefect", "deploy", "--all"))
        yield production


@pytest.fixture(scope="module")
def runs(production: Production) -> dict[str, Any]:
    """letters-on-demand and nightly triggered with `prefect deployment run`, as the README
    says; while that nightly run is Running, a second nightly trigger. Returns the final runs."""
    coordinator_home = production.root / "coordinator"
    letters = production.cli(
        "prefect",
        "deployment",
        "run",
        "generate-letters/letters-on-demand",
        "-p",
        'paths=["fixtures/cases"]',
        "--job-variable",
        "env=" + json.dumps({"PRIORAUTH_HOME": str(coordinator_home)}),
    )
    nightly = production.cli("prefect", "deployment", "run", "nightly/nightly")
    ids = {}
    for name, proc in (("letters", letters), ("nightly", nightly)):
        found = re.search(r"UUID: ([0-9a-f-]{36})", production.finish(proc))
        assert found, f"no flow run ID in the output of {proc.args}"
        ids[name] = uuid.UUID(found.group(1))

    first = production.wait(ids["nightly"], lambda r: r.state_type.value == "RUNNING", "nightly")
    with production.client() as client:
        deployment = client.read_deployment_by_name("nightly/nightly")
        ids["second-nightly"] = client.create_flow_run_from_deployment(deployment.id).id
    final = {
        name: production.wait(run_id, lambda r: r.state_type.value in TERMINAL, name)
        for name, run_id in ids.items()
    }
    final["nightly-when-second-triggered"] = first
    final["coordinator-home"] = coordinator_home
    return final


def _case_ids(folder: Path) -> set[str]:
    ids = set()
    for path in folder.iterdir():
        if path.suffix in {".yaml", ".json"}:
            ids.add(yaml.safe_load(path.read_text(encoding="utf-8"))["case_id"])
    return ids


def _table(artifact: Any) -> list[dict[str, Any]]:
    data = artifact.data
    return json.loads(data) if isinstance(data, str) else data


# -- the tests ---------------------------------------------------------------------------------


def test_deploy_resolves_the_repository_folder_into_each_deployment(production: Production):
    """No template is left for run time: the pull step and the worker's working directory name
    the folder `prefect deploy` ran in, and the schedule and one-at-a-time limit are there."""
    repo = str(production.repo.resolve())
    with production.client() as client:
        letters = client.read_deployment_by_name("generate-letters/letters-on-demand")
        nightly = client.read_deployment_by_name("nightly/nightly")
    for deployment in (letters, nightly):
        assert deployment.pull_steps == [
            {"prefect.deployments.steps.set_working_directory": {"directory": repo}}
        ]
        assert deployment.job_variables == {"working_dir": repo}
        assert deployment.work_pool_name == "priorauth"
        assert "{{" not in json.dumps(deployment.model_dump(mode="json"))
    assert letters.parameters == {"paths": ["fixtures/cases"], "out_dir": None}
    assert set(letters.tags) == {"priorauth", "letters"} and letters.schedules == []
    assert set(nightly.tags) == {"priorauth", "nightly"}
    [schedule] = nightly.schedules
    assert (schedule.schedule.cron, schedule.schedule.timezone) == ("0 2 * * *", "America/New_York")
    assert schedule.active
    assert nightly.global_concurrency_limit.limit == 1
    assert nightly.concurrency_options.collision_strategy.value == "CANCEL_NEW"
    if production.postgresql:  # CI: the server keeps them in the PostgreSQL database made here
        import psycopg

        with psycopg.connect(**production.postgresql) as conn:
            rows = conn.execute("SELECT name FROM deployment").fetchall()
        assert sorted(name for (name,) in rows) == ["letters-on-demand", "nightly"]


def test_letters_on_demand_runs_on_the_worker(production: Production, runs: dict[str, Any]):
    run = runs["letters"]
    assert run.state_type.value == "COMPLETED", f"{run.state}\n{production.diagnostics()}"
    assert run.parameters == {"paths": ["fixtures/cases"], "out_dir": None}
    # `fixtures/cases` resolved in the repository folder; the output went to the default
    # $PRIORAUTH_HOME/letters of the run's `env` job variable (which wins over the worker's).
    letters = runs["coordinator-home"] / "letters"
    expected = _case_ids(production.repo / "fixtures" / "cases")
    assert expected and {p.name for p in letters.iterdir()} == expected
    statuses = {}
    for case_id in expected:
        summary = json.loads((letters / case_id / "summary.json").read_text(encoding="utf-8"))
        statuses[case_id] = summary["status"]
        assert summary["status"] in WRITTEN, (case_id, summary["errors"])
        for name in ("letter.pdf", "packet.pdf"):
            assert (letters / case_id / name).read_bytes()[:5] == b"%PDF-", (case_id, name)
    with production.client() as client:
        from prefect.client.schemas.filters import FlowRunFilter

        artifacts = client.read_artifacts(
            flow_run_filter=FlowRunFilter(id={"any_": [run.id]})  # type: ignore[arg-type]
        )
    [artifact] = [a for a in artifacts if a.key == "letters-run"]
    assert artifact.type == "table"
    assert [a.data for a in artifacts if a.type == "progress"] == [100.0]  # progress, complete
    assert {row["case_id"]: row["status"] for row in _table(artifact)} == statuses


def test_nightly_runs_on_the_worker_fills_the_store_and_publishes_its_artifact(
    production: Production, runs: dict[str, Any]
):
    run = runs["nightly"]
    assert run.state_type.value == "COMPLETED", f"{run.state}\n{production.diagnostics()}"
    home = production.home  # from the worker's environment
    accepted = _case_ids(production.repo / "fixtures" / "cases")

    from sqlalchemy import select

    from priorauth.store import CaseRow, DocumentRow, Store

    store = Store(f"sqlite:///{(home / 'priorauth.sqlite3').resolve()}")
    try:
        with store.session() as session:
            cases = dict(session.execute(select(CaseRow.case_id, CaseRow.status)).all())
            documents = session.execute(
                select(DocumentRow.case_id, DocumentRow.kind, DocumentRow.sha256)
            ).all()
    finally:
        store.dispose()
    assert set(cases) == accepted and set(cases.values()) <= WRITTEN, cases
    assert {case_id for case_id, _, _ in documents} == accepted
    for case_id in accepted:
        for name in ("letter.pdf", "packet.pdf"):
            assert (home / "letters" / case_id / name).read_bytes()[:5] == b"%PDF-"
    reason = (home / "quarantine" / "bad-g35-category.yaml.reason.txt").read_text()
    assert "diagnoses[0].code" in reason

    from prefect.client.schemas.filters import FlowRunFilter

    with production.client() as client:
        artifacts = client.read_artifacts(
            flow_run_filter=FlowRunFilter(id={"any_": [run.id]})  # type: ignore[arg-type]
        )
    [artifact] = [a for a in artifacts if a.key == "nightly-summary"]
    assert artifact.type == "table"
    rows = {row["what"]: row for row in _table(artifact)}
    assert rows["new cases"]["count"] == len(accepted)
    assert set(rows["new cases"]["cases"].split()) == accepted
    by_status = {
        k.removeprefix("status: "): r["count"] for k, r in rows.items() if k[:7] == "status:"
    }
    assert by_status == dict(Counter(cases.values()))


def test_a_second_nightly_trigger_while_one_runs_is_cancelled(
    production: Production, runs: dict[str, Any]
):
    first, second = runs["nightly"], runs["second-nightly"]
    assert runs["nightly-when-second-triggered"].state_type.value == "RUNNING"
    assert second.state_type.value == "CANCELLED", f"{second.state}\n{production.diagnostics()}"
    assert "concurrency limit" in (second.state.message or "").lower(), second.state
    assert second.run_count == 0  # never ran
    assert first.state_type.value == "COMPLETED"
    assert first.end_time > second.state.timestamp  # cancelled while the first one ran


def test_the_nightly_schedule_is_two_am_in_new_york(production: Production):
    """The scheduler's next run of `nightly` is the next 02:00 America/New_York."""
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.sorting import FlowRunSort

    now = datetime.now(NEW_YORK)
    deadline = time.monotonic() + 60
    with production.client() as client:
        nightly = client.read_deployment_by_name("nightly/nightly")
        while True:
            scheduled = client.read_flow_runs(
                deployment_filter=DeploymentFilter(id={"any_": [nightly.id]}),  # type: ignore[arg-type]
                flow_run_filter=FlowRunFilter(
                    state=FlowRunFilterState(type=FlowRunFilterStateType(any_=["SCHEDULED"]))  # type: ignore[list-item]
                ),
                sort=FlowRunSort.EXPECTED_START_TIME_ASC,
            )
            scheduled = [r for r in scheduled if r.auto_scheduled]
            if scheduled or time.monotonic() > deadline:
                break
            time.sleep(0.5)
    assert scheduled, f"no scheduled nightly run within 60 s\n{production.diagnostics()}"
    next_run = scheduled[0].expected_start_time.astimezone(NEW_YORK)
    day = now.date() if now.time() < clock(2) else now.date() + timedelta(days=1)
    expected = datetime.combine(day, clock(2), tzinfo=NEW_YORK)
    if expected.astimezone(UTC).astimezone(NEW_YORK).time() == clock(2):
        assert next_run == expected, f"next nightly run at {next_run}, not {expected}"
    else:  # the one night a year when New York skips from 02:00 to 03:00
        assert next_run.date() == day, next_run
