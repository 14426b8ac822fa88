"""Letters per second and peak memory: the pipeline the flow uses, next to raw reportlab renders.

Generates N synthetic case files from the fixtures, then times (1) `render.render_letter` alone on
pre-computed inputs and (2) `pipeline.BatchRunner.run`, which is what `flows/letters.py` runs in
each chunk task, over the same cases, with the same number of long-lived worker processes. It
reports letters/s, CPU time / wall time and peak RSS per process. It must not change src/; every
case, name and attachment it makes is synthetic and lives in a temporary folder.

    .venv/bin/python bench/bench_letters.py                # N=1000, 2 workers: ≈ 80 s on 2 cores
    .venv/bin/python bench/bench_letters.py --scaling      # memory at N=250, 1000, 2000: ≈ 3 min
    .venv/bin/python bench/bench_letters.py --flow         # also the real Prefect flow
    .venv/bin/python bench/bench_letters.py --profile 100  # stage costs, workers=1

Results and how to read them: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import functools
import io
import json
import multiprocessing
import os
import platform
import pstats
import random
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import date
from importlib import metadata
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import yaml
from procs import (
    TreeSampler,
    machine_busy_s,
    proc_cpu_s,
    proc_hwm_mb,
    proc_rss_mb,
    remove_later,
    wait_for_removals,
)
from synthetic import vary_case

# priorauth is imported inside the functions that need it: worker processes import this script as
# __mp_main__, and the raw-render workers must carry reportlab only, not the pipeline's imports
# (the ICD-10-CM code set alone is ~160 MB).

REPO = Path(__file__).resolve().parents[1]
FIXTURE_CASES = REPO / "fixtures" / "cases"
STAGES = ("raw", "raw1", "pipeline", "pipeline1")
TARGET_RATIO = 0.80

# Fictional names; some outside Latin-1 on purpose (the letter embeds DejaVu for them).


# ---- machine -------------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    model = ""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        model = next(
            (
                line.split(":", 1)[1].strip()
                for line in out.splitlines()
                if line.startswith("Model name")
            ),
            "",
        )
    except OSError:
        pass
    mem_kb = 0
    with open("/proc/meminfo", encoding="ascii") as handle:
        for line in handle:
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    versions = {}
    for name in ("reportlab", "rl_accel", "pypdf", "prefect", "pydantic", "jinja2", "PyYAML"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu": model,
        "ram_gib": round(mem_kb / 1_048_576, 1),
        "python": platform.python_version(),
        "versions": versions,
    }


# ---- /proc readings ------------------------------------------------------------------------


def reset_own_peak() -> bool:
    """Reset this process's VmHWM (Linux >= 4.0), so each stage reports its own parent peak."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
            handle.write("5")
    except OSError:
        return False
    return True


def own_cpu_s() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


class Clock:
    """Wall time, our CPU time (this process + the given workers) and everyone else's, from now."""

    def __init__(self, worker_pids: list[int]) -> None:
        self.pids = worker_pids
        self.worker0 = {pid: proc_cpu_s(pid) for pid in worker_pids}
        reset_own_peak()
        self.rss0 = proc_rss_mb()  # the parent's memory before the stage (harness leftovers too)
        self.own0, self.busy0 = own_cpu_s(), machine_busy_s()
        self.t0 = time.perf_counter()

    def stop(self) -> tuple[float, float, float]:
        """(wall s, our CPU s, cores used by other processes on the machine meanwhile)."""
        wall = time.perf_counter() - self.t0
        cpu = own_cpu_s() - self.own0 + sum(proc_cpu_s(p) - self.worker0[p] for p in self.pids)
        others = max(0.0, machine_busy_s() - self.busy0 - cpu) / wall
        return wall, cpu, others


# ---- synthetic cases -----------------------------------------------------------------------


def make_attachments(folder: Path) -> dict[str, str]:
    """Small synthetic attachment PDFs (no patient data): kind → file name."""
    from reportlab.lib.pagesizes import LETTER
    from reportlab.pdfgen import canvas

    folder.mkdir(parents=True, exist_ok=True)
    specs = {"clinic_note": ("clinic-note.pdf", 2), "mri_report": ("mri-report.pdf", 1)}
    specs["other"] = ("lab-report.pdf", 3)
    out = {}
    for kind, (name, pages) in specs.items():
        c = canvas.Canvas(str(folder / name), pagesize=LETTER, invariant=1)
        for page in range(1, pages + 1):
            c.setFont("Helvetica-Bold", 14)
            c.drawString(72, 720, f"Synthetic {kind.replace('_', ' ')} (benchmark only)")
            c.setFont("Helvetica", 10)
            for line in range(40):
                c.drawString(
                    72,
                    690 - 14 * line,
                    f"Page {page}, line {line + 1}: synthetic text, no patient data.",
                )
            c.showPage()
        c.save()
        out[kind] = name
    return out


def load_templates(catalog: Any, today: date, fixture_dir: Path) -> list[dict[str, Any]]:
    """Fixture cases that are valid apart from their attachments: the shapes to vary."""
    from priorauth.dosing import compute_dose
    from priorauth.intake import find_case_files, parse_case_file, validate_case
    from priorauth.pipeline import dose_request

    shapes = []
    for path in find_case_files([fixture_dir]):
        data = parse_case_file(path)
        probe = {k: v for k, v in data.items() if k != "attachments"}
        try:
            case = validate_case(probe, catalog=catalog, today=today, case_dir=None)
            compute_dose(dose_request(case), catalog.product(case.request.product_id))
        except Exception as exc:  # a fixture being edited right now must not stop the bench
            print(f"  (skipping fixture {path.name}: {type(exc).__name__})", file=sys.stderr)
            continue
        shapes.append(data)
    if not shapes:
        raise SystemExit(f"no valid fixture case in {fixture_dir}")
    return shapes


def vary(
    shape: dict[str, Any],
    i: int,
    rng: random.Random,
    catalog: Any,
    attachments: dict[str, str] | None,
) -> dict[str, Any]:
    data = vary_case(shape, f"BENCH-{i:05d}", i, rng, catalog)
    if attachments is None:
        data.pop("attachments", None)
    else:
        for a in data.get("attachments", []):
            a["path"] = f"../attachments/{attachments.get(a['kind'], attachments['other'])}"
    return data


def make_cases(
    n: int,
    root: Path,
    *,
    catalog: Any,
    today: date,
    seed: int,
    with_attachments: bool,
    fixture_dir: Path,
) -> tuple[list[Path], dict[str, Any]]:
    """N synthetic case files under root/cases, each checked to be valid and dosable."""
    from priorauth.dosing import compute_dose
    from priorauth.intake import parse_case_file, validate_case
    from priorauth.pipeline import dose_request

    shapes = load_templates(catalog, today, fixture_dir)
    attachments = make_attachments(root / "attachments") if with_attachments else None
    case_dir = root / "cases"
    case_dir.mkdir(parents=True)
    rng = random.Random(seed)
    paths = []
    attached = 0
    for i in range(n):
        shape = shapes[i % len(shapes)]
        for attempt in range(20):
            data = vary(shape, i, rng, catalog, attachments)
            path = case_dir / f"bench-{i:05d}.yaml"
            path.write_text(
                yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8"
            )
            try:
                case = validate_case(
                    parse_case_file(path), catalog=catalog, today=today, case_dir=case_dir
                )
                compute_dose(dose_request(case), catalog.product(case.request.product_id))
                break
            except Exception:
                if attempt == 19:
                    raise
        attached += len(case.attachments)
        paths.append(path)
    info = {"fixtures": len(shapes), "attachments_per_case": round(attached / max(n, 1), 2)}
    return paths, info


# ---- raw render ----------------------------------------------------------------------------


class _Captured(BaseException):
    """Carries render_letter's arguments out of generate_case (BaseException: never swallowed)."""


def prepare(paths: list[Path], bench: Any) -> list[tuple[Any, ...]]:
    """The exact arguments the pipeline passes to `render_letter`, one tuple per case.

    Runs the real `generate_case` with `render_letter` replaced by a stub that raises with its
    arguments, so parse, validation, dosing, context and wording are the pipeline's own code (no
    copy of build_letter here to drift); nothing is written.
    """
    from priorauth import pipeline

    def capture(ctx: Any, sections: Any, **kwargs: Any) -> bytes:
        raise _Captured(ctx, sections, kwargs)

    items = []
    real = pipeline.render_letter
    pipeline.render_letter = capture
    try:
        for path in paths:
            try:
                result = pipeline.generate_case(path, bench=bench, out_dir=path.parent / "unused")
            except _Captured as captured:
                items.append(captured.args)
                continue
            raise SystemExit(f"{path.name}: the pipeline never reached render_letter: {result}")
    finally:
        pipeline.render_letter = real
    # Plain namespaces instead of pydantic models: unpickling a Case in a raw worker would import
    # priorauth.domain and with it the ICD-10-CM code set. The PDFs must not change (checked).
    plain_items = [(plain(ctx), sections, plain(kw)) for ctx, sections, kw in items]
    if render_pdfs(items[:3]) != render_pdfs(plain_items[:3]):
        raise SystemExit("raw render inputs as namespaces give different PDFs")
    return plain_items


def same_letters(items: list[tuple[Any, ...]], out_root: Path) -> bool | None:
    """Do the raw renders equal the letter.pdf files the pipeline wrote? None: nothing to compare."""
    compared = None
    for folder in sorted(out_root.glob("pipeline-*")):
        for item, pdf in zip(items, render_pdfs(items), strict=True):
            written = folder / item[0]["case"].case_id / "letter.pdf"
            if written.exists():
                if written.read_bytes() != pdf:
                    return False
                compared = True
    return compared


def plain(obj: Any) -> Any:
    """pydantic models and dataclasses → SimpleNamespace trees (same attributes, same values)."""
    from pydantic import BaseModel

    if isinstance(obj, BaseModel):
        return SimpleNamespace(**{k: plain(getattr(obj, k)) for k in type(obj).model_fields})
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        if type(obj).__name__ == "Section":  # documents.Section: render imports it anyway
            return obj
        fields = dataclasses.fields(obj)
        return SimpleNamespace(**{f.name: plain(getattr(obj, f.name)) for f in fields})
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(plain(v) for v in obj)
    return obj


def render_pdfs(items: list[tuple[Any, ...]]) -> list[bytes]:
    from priorauth.letters.page import ensure_fonts
    from priorauth.letters.render import render_letter

    ensure_fonts()  # once per process, before any render (PDF.md: threads and lazy fonts)
    return [render_letter(ctx, sections, **kwargs) for ctx, sections, kwargs in items]


def _raw_init() -> None:
    render_pdfs([])  # imports reportlab and registers the fonts, before the timing


def _raw_chunk(items: list[tuple[Any, ...]]) -> int:
    """Render a chunk in a raw worker; only sizes go back (the pipeline returns no PDFs either)."""
    return sum(len(pdf) for pdf in render_pdfs(items))


def chunk_size(n: int, workers: int, settings: Any) -> int:
    """The same rule as BatchRunner.run: chunks of at most chunk_size, >= 4 per worker."""
    return max(1, min(settings.chunk_size, -(-n // (workers * 4))))


def chunked(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


@dataclass
class Stage:
    name: str
    procs: int
    letters: int
    wall_s: float
    cpu_s: float
    parent_peak_mb: float
    worker_peaks_mb: list[float] = field(default_factory=list)
    startup_s: float = 0.0
    ok: int = 0
    others_cores: float = 0.0  # CPU used by other processes on the machine meanwhile, in cores
    parent_start_mb: float = 0.0

    @property
    def rate(self) -> float:
        return self.letters / self.wall_s if self.wall_s else 0.0

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["letters_per_s"] = round(self.rate, 2)
        out["cpu_per_wall"] = round(self.cpu_s / self.wall_s, 2) if self.wall_s else 0.0
        out["cpu_ms_per_letter"] = (
            round(self.cpu_s * 1000 / self.letters, 2) if self.letters else 0.0
        )
        for key in (
            "wall_s",
            "cpu_s",
            "parent_peak_mb",
            "parent_start_mb",
            "startup_s",
            "others_cores",
        ):
            out[key] = round(out[key], 1 if key.endswith("_mb") else 3)
        out["worker_peaks_mb"] = [round(x, 1) for x in self.worker_peaks_mb]
        return out


def run_raw(items: list[tuple[Any, ...]], workers: int, settings: Any) -> Stage:
    warm = items[: 4 * workers]
    if workers == 1:
        _raw_init()
        _raw_chunk(warm)
        clock = Clock([])
        _raw_chunk(items)
        wall, cpu, others = clock.stop()
        return Stage(
            "raw render",
            1,
            len(items),
            wall,
            cpu,
            proc_hwm_mb(),
            [],
            0.0,
            len(items),
            others,
            clock.rss0,
        )
    # spawn, not BatchRunner's forkserver: a forkserver already started with the pipeline
    # preloaded would put its imports into these workers' memory. Startup is not timed.
    context = multiprocessing.get_context("spawn")
    t_start = time.perf_counter()
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_raw_init) as pool:
        list(pool.map(_raw_chunk, [[item] for item in warm]))  # start and warm every worker
        startup = time.perf_counter() - t_start
        pids = list(pool._processes)  # private, but the only way to the worker pids
        clock = Clock(pids)
        futures = [
            pool.submit(_raw_chunk, chunk)
            for chunk in chunked(items, chunk_size(len(items), workers, settings))
        ]
        for future in futures:
            future.result()
        wall, cpu, others = clock.stop()
        peaks = [proc_hwm_mb(p) for p in pids]
        parent = proc_hwm_mb()
    return Stage(
        "raw render",
        workers,
        len(items),
        wall,
        cpu,
        parent,
        peaks,
        startup,
        len(items),
        others,
        clock.rss0,
    )


# ---- pipeline ------------------------------------------------------------------------------


def run_pipeline(
    paths: list[Path], settings: Any, today: date, out_root: Path, workers: int
) -> Stage:
    from priorauth.pipeline import BatchRunner

    settings = settings.model_copy(update={"workers": workers})
    t_start = time.perf_counter()
    with BatchRunner(settings, today=today, out_dir=out_root / f"warm-{workers}") as runner:
        runner.run(paths[: 4 * workers])  # start the workers (forkserver) and warm them up
        startup = time.perf_counter() - t_start
        runner.out_dir = out_root / f"pipeline-{workers}"  # fresh folder: nothing to skip
        pool = runner._pool
        pids = list(pool._processes) if pool is not None else []  # type: ignore[attr-defined]
        clock = Clock(pids)
        results = runner.run(paths)
        wall, cpu, others = clock.stop()
        peaks = [proc_hwm_mb(p) for p in pids]
        parent = proc_hwm_mb()
    ok = sum(r.ok for r in results)
    if ok != len(paths):
        bad = next(r for r in results if not r.ok)
        print(
            f"  warning: {len(paths) - ok} case(s) invalid, e.g. {bad.errors[:2]}", file=sys.stderr
        )
    return Stage(
        "pipeline", workers, len(paths), wall, cpu, parent, peaks, startup, ok, others, clock.rss0
    )


# ---- Prefect flow --------------------------------------------------------------------------


def flow_child(cases_dir: str, out_root: str) -> None:
    """Runs in a child process: import the flow, call it twice (server cold, then warm).

    BatchRunner is wrapped (timestamps only) to split each call into: before the first chunk
    starts (flow run, temporary server, worker start), the chunks, and after the last one.
    """
    t0 = time.perf_counter()
    sys.path.insert(0, str(REPO / "flows"))
    import letters  # flows/letters.py, imported as the flow's own module (prefect, priorauth)

    t_import = time.perf_counter() - t0
    from priorauth.pipeline import BatchRunner

    chunks: list[tuple[float, float]] = []
    real_run_chunk = BatchRunner.run_chunk

    def run_chunk(self: Any, paths: list[Path]) -> Any:
        start = time.perf_counter()
        try:
            return real_run_chunk(self, paths)
        finally:
            chunks.append((start, time.perf_counter()))

    BatchRunner.run_chunk = run_chunk  # type: ignore[method-assign]
    runs = []
    for run in (1, 2):
        chunks.clear()
        t = time.perf_counter()
        summary = letters.generate_letters(paths=[cases_dir], out_dir=f"{out_root}/flow-{run}")
        end = time.perf_counter()
        first = min(c[0] for c in chunks)
        last = max(c[1] for c in chunks)
        runs.append(
            {
                "total_s": end - t,
                "before_first_chunk_s": first - t,
                "chunks_s": last - first,
                "after_last_chunk_s": end - last,
                "chunks": len(chunks),
                "chunk_s_sum": sum(b - a for a, b in chunks),  # a task waits for its chunk
                "ready": summary["ready"],
                "invalid": summary["invalid"],
            }
        )
    print(json.dumps({"import_s": t_import, "runs": runs}))


def run_flow(cases_dir: Path, root: Path, n: int, workers: int) -> dict[str, Any]:
    env = {
        **os.environ,
        "PRIORAUTH_WORKERS": str(workers),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    env.pop("PREFECT_API_URL", None)  # the flow's own temporary server, as in the quick start
    out: dict[str, Any] = {}

    # 1. In a child: the first call starts the temporary server, the second one reuses it.
    child = subprocess.Popen(
        [sys.executable, __file__, "--flow-child", str(cases_dir), str(root / "flow-child")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
    )
    sampler = TreeSampler(child.pid)
    sampler.start()
    busy0, t = machine_busy_s(), time.perf_counter()
    stdout, stderr = child.communicate()
    child_s = time.perf_counter() - t
    sampler.stop()
    child_others = max(0.0, machine_busy_s() - busy0 - sampler.summary()["cpu_s_total"]) / child_s
    if child.returncode != 0:
        raise SystemExit(f"flow child failed ({child.returncode}):\n{stderr[-3000:]}")
    data = json.loads(stdout.strip().splitlines()[-1])
    first, second = ({k: round(v, 2) for k, v in r.items()} for r in data["runs"])
    out["import_s"] = round(data["import_s"], 2)
    out["first_call"] = first
    out["second_call"] = second
    out["first_call_s"] = first["total_s"]
    out["second_call_s"] = second["total_s"]
    out["first_call_extra_s"] = round(first["total_s"] - second["total_s"], 2)
    out["ready"] = [first["ready"], second["ready"]]
    out["letters_per_s_excluding_start"] = round(n / second["total_s"], 2)
    out["letters_per_s_including_start"] = round(n / first["total_s"], 2)
    out["letters_per_s_chunks_only"] = round(n / second["chunks_s"], 2)
    out["child_s"] = round(child_s, 2)
    out["processes"] = sampler.summary()
    out["others_cores"] = round(child_others, 2)

    # 2. The literal command from the README, wall clock from outside (interpreter start included).
    cmd = [sys.executable, "flows/letters.py", str(cases_dir), "--out", str(root / "flow-cli")]
    busy0, t = machine_busy_s(), time.perf_counter()
    proc = subprocess.Popen(
        cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, text=True
    )
    sampler = TreeSampler(proc.pid)
    sampler.start()
    _, stderr = proc.communicate()
    sampler.stop()
    cli_s = time.perf_counter() - t
    cli_others = max(0.0, machine_busy_s() - busy0 - sampler.summary()["cpu_s_total"]) / cli_s
    if proc.returncode not in (0, 1):
        raise SystemExit(f"flows/letters.py failed ({proc.returncode}):\n{stderr[-3000:]}")
    out["command"] = "python flows/letters.py CASES --out OUT"
    out["command_s"] = round(cli_s, 2)
    out["command_letters_per_s"] = round(n / cli_s, 2)
    out["command_processes"] = sampler.summary()
    out["command_others_cores"] = round(cli_others, 2)
    return out


# ---- profile -------------------------------------------------------------------------------

# Functions `generate_case` calls through the pipeline module's namespace, timed by wrapping.
STAGE_FUNCS = [
    "parse_case_file",
    "validate_case",
    "compute_dose",
    "case_findings",
    "read_attachment",
    "letter_context",
    "render_letter_text",
    "render_letter",
    "render_cover",
    "assemble_packet",
    "sha256_bytes",
    "write_atomic",
]


def stage_breakdown(
    paths: list[Path], settings: Any, today: date, out_dir: Path
) -> dict[str, float]:
    """ms per case of each step, workers=1, no profiler: wrap the names pipeline calls."""
    from priorauth import files, pipeline

    spent: dict[str, float] = dict.fromkeys([*STAGE_FUNCS, "fsync", "generate_case"], 0.0)
    originals = {name: getattr(pipeline, name) for name in STAGE_FUNCS if hasattr(pipeline, name)}
    real_fsync = os.fsync

    def timed(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[name] += time.perf_counter() - t

        return wrapper

    bench = pipeline.Workbench.build(settings.model_copy(update={"workers": 1}), today)
    for p in paths[:5]:  # warm-up, not counted
        pipeline.generate_case(p, bench=bench, out_dir=out_dir / "warm")
    try:
        for name, fn in originals.items():
            setattr(pipeline, name, timed(name, fn))
        os.fsync = timed("fsync", real_fsync)  # files.write_atomic calls os.fsync
        t0 = time.perf_counter()
        for p in paths:
            pipeline.generate_case(p, bench=bench, out_dir=out_dir / "stages")
        spent["generate_case"] = time.perf_counter() - t0
    finally:
        for name, fn in originals.items():
            setattr(pipeline, name, fn)
        os.fsync = real_fsync
    assert files.os.fsync is real_fsync
    # render_cover runs inside assemble_packet (the cover callback): report the packet without it.
    spent["assemble_packet"] -= spent["render_cover"]
    return {k: round(v * 1000 / len(paths), 2) for k, v in spent.items()}


def profile(paths: list[Path], settings: Any, today: date, out_dir: Path, top: int = 20) -> str:
    from priorauth import pipeline

    bench = pipeline.Workbench.build(settings.model_copy(update={"workers": 1}), today)
    for p in paths[:5]:
        pipeline.generate_case(p, bench=bench, out_dir=out_dir / "warm-prof")
    profiler = cProfile.Profile()
    profiler.enable()
    for p in paths:
        pipeline.generate_case(p, bench=bench, out_dir=out_dir / "prof")
    profiler.disable()
    buffer = io.StringIO()
    stats = pstats.Stats(profiler, stream=buffer).strip_dirs()
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)
    return buffer.getvalue()


# ---- report --------------------------------------------------------------------------------


def mb_range(stage: dict[str, Any]) -> str:
    return f"{stage['parent_start_mb']:.0f}→{stage['parent_peak_mb']:.0f}"


def print_table(report: dict[str, Any]) -> None:
    m = report["machine"]
    v = m["versions"]
    print(
        f"machine: {m['nproc']} CPUs ({m['cpu']}), {m['ram_gib']} GiB RAM, Python {m['python']}; "
        f"reportlab {v['reportlab']} (rl_accel {v['rl_accel']}), pypdf {v['pypdf']}, prefect {v['prefect']}"
    )
    c = report["cases"]
    print(
        f"cases: {c['n']} synthetic from {c['fixtures']} fixture(s), {c['attachments_per_case']} "
        f"attachment(s) per case; generated in {c['generate_s']} s; chunk size {c['chunk_size']}"
    )
    print()
    head = f"{'what':<12} {'procs':>5} {'letters':>7} {'wall s':>7} {'letters/s':>9} {'CPU/wall':>8} {'CPU ms/l':>8} {'parent MB':>11} {'others':>6}  worker peak MB"
    print(head)
    print("-" * len(head))
    for s in report["stages"]:
        workers = ", ".join(f"{x:.0f}" for x in s["worker_peaks_mb"]) or "(in parent)"
        print(
            f"{s['name']:<12} {s['procs']:>5} {s['letters']:>7} {s['wall_s']:>7.2f} "
            f"{s['letters_per_s']:>9.1f} {s['cpu_per_wall']:>8.2f} {s['cpu_ms_per_letter']:>8.1f} {mb_range(s):>11} {s['others_cores']:>6.2f}  {workers}"
        )
    print(
        "CPU/wall: CPU seconds of this process and its workers per wall second (2.0 = two cores busy);"
        "\nCPU ms/l: CPU time per letter (less sensitive than letters/s to other load on the machine);"
        "\nparent MB: the parent's resident memory at the start of the stage → its peak during it;"
        "\nothers: cores used meanwhile by other processes on the machine (noise, should be ~0)"
    )
    busiest = max((s["others_cores"] for s in report["stages"]), default=0.0)
    if busiest > 0.2:
        print(
            f"WARNING: other processes used up to {busiest:.2f} cores: figures are low; rerun idle"
        )
    print()
    for key, ratio in report["ratios"].items():
        verdict = "met" if ratio >= TARGET_RATIO else "NOT met"
        print(f"pipeline / raw, {key}: {ratio:.2f}  (target >= {TARGET_RATIO:.2f}: {verdict})")
    for s in report["stages"]:
        if s["procs"] > 1:
            print(
                f"{s['name']}: {s['procs']} workers started and warmed in {s['startup_s']:.2f} s (not in letters/s)"
            )
    if "flow" in report:
        print_flow(report["flow"], c["n"])
    if "stages_ms_per_case" in report:
        print()
        print("stage costs, workers=1, ms per case (wrapped timers, no profiler):")
        for name, ms in report["stages_ms_per_case"].items():
            print(f"  {name:<20} {ms:>7.2f}")


def print_flow(f: dict[str, Any], n: int) -> None:
    def processes(summary: dict[str, Any]) -> str:
        return "; ".join(
            f"{role} {'/'.join(f'{mb:.0f}' for mb in peaks)} MB, {summary['cpu_s'][role]:.0f} s CPU"
            for role, peaks in summary["peak_mb"].items()
        )

    print()
    print(f"Prefect flow generate_letters, {n} cases (a child process; temporary Prefect server):")
    print(f"  import flows/letters.py   {f['import_s']:>6.2f} s")
    print(
        f"  first call                {f['first_call_s']:>6.2f} s  {f['letters_per_s_including_start']:>5.1f} letters/s"
        "  (includes starting the temporary server and the forkserver)"
    )
    print(
        f"  second call               {f['second_call_s']:>6.2f} s  {f['letters_per_s_excluding_start']:>5.1f} letters/s"
        "  (server already up)"
    )
    for name in ("first_call", "second_call"):
        r = f[name]
        print(
            f"    {name.replace('_', ' ')}: {r['before_first_chunk_s']:.2f} s before the first chunk, "
            f"{r['chunks_s']:.2f} s of {r['chunks']:.0f} chunks ({n / r['chunks_s']:.1f} letters/s), "
            f"{r['after_last_chunk_s']:.2f} s after the last"
        )
    print(f"  processes: {processes(f['processes'])}; others {f['others_cores']:.2f} cores")
    print(
        f"`{f['command']}`: {f['command_s']:.2f} s wall, {f['command_letters_per_s']:.1f} letters/s "
        "(interpreter, imports, server start, flow, shutdown)"
    )
    print(
        f"  processes: {processes(f['command_processes'])}; others {f['command_others_cores']:.2f} cores"
    )


def scaling(args: argparse.Namespace) -> None:
    """One child process per N (a fresh parent each time); files removed after the last one."""
    scratch = Path(tempfile.mkdtemp(prefix="priorauth-bench-scaling-", dir=args.tmp))
    rows = []
    for n in args.scaling_ns:
        cmd = [
            sys.executable,
            __file__,
            "--n",
            str(n),
            "--workers",
            str(args.workers),
            "--stages",
            "pipeline,raw",
            "--json",
            "--keep",
            "--tmp",
            str(scratch),
        ]
        print(f"running N={n} …", file=sys.stderr)
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        rows.append(json.loads(out))
    remove_later(scratch)
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(
        f"{'N':>5}  {'pipeline l/s':>12} {'CPU/wall':>8} {'parent MB':>11} {'worker peak MB':>15}"
        f"   {'raw l/s':>7} {'raw worker MB':>14}  {'ratio':>5}  {'others':>6}"
    )
    for r in rows:
        p = next(s for s in r["stages"] if s["name"] == "pipeline")
        raw = next(s for s in r["stages"] if s["name"] == "raw render")
        pw = "/".join(f"{x:.0f}" for x in p["worker_peaks_mb"])
        rw = "/".join(f"{x:.0f}" for x in raw["worker_peaks_mb"])
        others = max(p["others_cores"], raw["others_cores"])
        print(
            f"{r['cases']['n']:>5}  {p['letters_per_s']:>12.1f} {p['cpu_per_wall']:>8.2f} "
            f"{mb_range(p):>11} {pw:>15}   {raw['letters_per_s']:>7.1f} {rw:>14}  "
            f"{p['letters_per_s'] / raw['letters_per_s']:>5.2f}  {others:>6.2f}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1000, help="cases to generate (default 1000)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument(
        "--stages",
        default=",".join(STAGES),
        help=f"comma list of {', '.join(STAGES)} (raw1/pipeline1: one process)",
    )
    parser.add_argument(
        "--n1",
        type=int,
        default=None,
        help="cases for the one-process stages (default: N, at most 500)",
    )
    parser.add_argument(
        "--flow",
        action="store_true",
        help="also time the real Prefect flow (starts a temporary server)",
    )
    parser.add_argument(
        "--profile",
        type=int,
        metavar="K",
        default=0,
        help="stage costs and cProfile of K cases, workers=1",
    )
    parser.add_argument(
        "--scaling",
        action="store_true",
        help="memory and speed at N=250, 1000, 2000 (one process each)",
    )
    parser.add_argument(
        "--scaling-ns", type=lambda s: [int(x) for x in s.split(",")], default=[250, 1000, 2000]
    )
    parser.add_argument("--no-attachments", action="store_true", help="cases without attachments")
    parser.add_argument("--seed", type=int, default=20261125)
    parser.add_argument(
        "--fixtures", type=Path, default=FIXTURE_CASES, help="folder of case files to vary"
    )
    parser.add_argument(
        "--tmp", type=Path, default=None, help="parent folder for the temporary files"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--flow-child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.flow_child:
        flow_child(*args.flow_child)
        return 0
    wait_for_removals(args.tmp)
    if args.scaling:
        scaling(args)
        return 0
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = set(stages) - set(STAGES)
    if unknown:
        parser.error(f"unknown stage(s): {', '.join(sorted(unknown))}")

    from priorauth.cli import run_date
    from priorauth.pipeline import Workbench
    from priorauth.settings import load_settings

    settings = load_settings(workers=args.workers)
    today = run_date()
    root = Path(tempfile.mkdtemp(prefix="priorauth-bench-", dir=args.tmp))
    log = functools.partial(print, file=sys.stderr)
    try:
        bench = Workbench.build(settings.model_copy(update={"workers": 1}), today)
        t = time.perf_counter()
        paths, info = make_cases(
            args.n,
            root,
            catalog=bench.catalog,
            today=today,
            seed=args.seed,
            with_attachments=not args.no_attachments,
            fixture_dir=args.fixtures,
        )
        n1 = min(args.n1 or 500, args.n)
        report: dict[str, Any] = {
            "machine": machine_info(),
            "cases": {
                "n": args.n,
                "n_one_process": n1,
                **info,
                "generate_s": round(time.perf_counter() - t, 1),
                "chunk_size": chunk_size(args.n, args.workers, settings),
                "workers": args.workers,
            },
            "stages": [],
        }
        log(f"{args.n} cases in {root}")
        results: dict[str, Stage] = {}
        # Pipeline first: the parent's memory then holds only paths, as in the flow.
        if "pipeline" in stages:
            log("pipeline …")
            results["pipeline"] = run_pipeline(paths, settings, today, root / "out", args.workers)
        if "pipeline1" in stages:
            log("pipeline, one process …")
            results["pipeline1"] = run_pipeline(paths[:n1], settings, today, root / "out", 1)
        if "raw" in stages or "raw1" in stages:
            log("preparing raw render inputs …")
            items = prepare(paths, bench)
            report["cases"]["raw_equals_pipeline_letters"] = same_letters(items[:5], root / "out")
            if "raw" in stages:
                log("raw render …")
                results["raw"] = run_raw(items, args.workers, settings)
            if "raw1" in stages:
                log("raw render, one process …")
                results["raw1"] = run_raw(items[:n1], 1, settings)
            del items
        report["stages"] = [results[k].as_dict() for k in STAGES if k in results]
        ratios = {}
        if "pipeline" in results and "raw" in results:
            ratios[f"{args.workers} processes"] = round(
                results["pipeline"].rate / results["raw"].rate, 3
            )
        if "pipeline1" in results and "raw1" in results:
            ratios["1 process"] = round(results["pipeline1"].rate / results["raw1"].rate, 3)
        if "pipeline" in results and "raw" in results:
            raw_cpu = results["raw"].cpu_s / results["raw"].letters
            ratios["CPU time per letter"] = round(
                raw_cpu / (results["pipeline"].cpu_s / results["pipeline"].letters), 3
            )
        report["ratios"] = ratios
        report["parent_ru_maxrss_mb"] = round(
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1
        )
        if args.profile:
            k = min(args.profile, len(paths))
            log(f"stage costs and profile over {k} cases …")
            report["stages_ms_per_case"] = stage_breakdown(paths[:k], settings, today, root / "out")
            report["profile"] = profile(paths[:k], settings, today, root / "out")
        if args.flow:
            log("Prefect flow (temporary server) …")
            report["flow"] = run_flow(root / "cases", root, args.n, args.workers)
        if args.json:
            print(json.dumps(report, indent=2, ensure_ascii=False))
        else:
            print_table(report)
            if args.profile:
                print()
                print(report["profile"])
    finally:
        if args.keep:
            log(f"kept {root}")
        else:
            remove_later(root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
