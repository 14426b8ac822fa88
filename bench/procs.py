"""What the benchmarks read from /proc, and the clean-up they share (Linux only).

CPU time and peak memory of processes the benchmark did not start itself (forkserver workers are
grandchildren, so `os.times()` misses them), the machine's total CPU use (to report how much other
processes took meanwhile), a sampler for a whole process tree, and background deletion of the
large temporary folders.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

CLK_TCK = os.sysconf("SC_CLK_TCK")
REMOVING = ".removing"  # marks a temporary folder whose deletion is under way


def proc_cpu_s(pid: int) -> float:
    """utime + stime of one process, in seconds (works for grandchildren, unlike os.times)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def _status_mb(pid: int | str, key: str) -> float:
    with open(f"/proc/{pid}/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return 0.0


def proc_hwm_mb(pid: int | str = "self") -> float:
    """Peak resident set size (VmHWM) of one process, in MiB."""
    return _status_mb(pid, "VmHWM")


def proc_rss_mb(pid: int | str = "self") -> float:
    """Resident set size now (VmRSS), in MiB."""
    return _status_mb(pid, "VmRSS")


def machine_busy_s() -> float:
    """CPU seconds every process on the machine has used since boot (/proc/stat, all cores)."""
    with open("/proc/stat", encoding="ascii") as handle:
        user, nice, system, _idle, _iowait, irq, softirq, steal = map(
            int, handle.readline().split()[1:9]
        )
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


class TreeSampler(threading.Thread):
    """Polls the process tree under `root` every `interval_s`: each process's VmHWM, CPU time,
    parent and command. `summary()` groups them by role: main, forkserver, the forkserver's
    children (`worker_role`), a Prefect server, other."""

    def __init__(self, root: int, interval_s: float = 0.5, worker_role: str = "worker") -> None:
        super().__init__(daemon=True)
        self.root = root
        self.interval_s = interval_s
        self.worker_role = worker_role
        self.peak_mb: dict[int, float] = {}
        self.parent: dict[int, int] = {}
        self.cmd: dict[int, str] = {}
        self.cpu_s: dict[int, float] = {}  # last reading: up to one interval short at exit
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.sample()
            self._stop_event.wait(self.interval_s)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()

    def sample(self) -> None:
        parents: dict[int, int] = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as handle:
                        parents[int(entry)] = int(handle.read().rsplit(")", 1)[1].split()[1])
                except (OSError, ValueError, IndexError):
                    continue
        tree, frontier = {self.root}, [self.root]
        while frontier:
            pid = frontier.pop()
            kids = [p for p, pp in parents.items() if pp == pid and p not in tree]
            tree.update(kids)
            frontier.extend(kids)
        for pid in tree:
            try:
                hwm = proc_hwm_mb(pid)
                self.cpu_s[pid] = proc_cpu_s(pid)
                if pid not in self.cmd:
                    with open(f"/proc/{pid}/cmdline", "rb") as handle:
                        self.cmd[pid] = handle.read().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            self.peak_mb[pid] = max(self.peak_mb.get(pid, 0.0), hwm)
            self.parent[pid] = parents.get(pid, 0)

    def role(self, pid: int) -> str:
        forkserver = "multiprocessing.forkserver"
        if pid == self.root:
            return "main"
        if forkserver in self.cmd.get(self.parent.get(pid, 0), ""):
            return self.worker_role  # forked by the forkserver
        if forkserver in self.cmd.get(pid, ""):
            return "forkserver"
        return "prefect_server" if "prefect" in self.cmd.get(pid, "") else "other"

    def summary(self) -> dict[str, Any]:
        peaks: dict[str, list[float]] = {}
        cpu: dict[str, float] = {}
        for pid, mb in self.peak_mb.items():
            role = self.role(pid)
            peaks.setdefault(role, []).append(round(mb, 1))
            cpu[role] = cpu.get(role, 0.0) + self.cpu_s.get(pid, 0.0)
        return {
            "peak_mb": {role: sorted(values) for role, values in sorted(peaks.items())},
            "cpu_s": {role: round(value, 1) for role, value in sorted(cpu.items())},
            "cpu_s_total": round(sum(cpu.values()), 1),
        }


def wait_for_removals(base: Path | None) -> None:
    """Wait (up to 5 min) while an earlier run's files are still being deleted: it loads the disk."""
    base = base or Path(tempfile.gettempdir())
    deadline = time.monotonic() + 300
    told = False
    while list(base.glob(f"priorauth-bench-*/{REMOVING}")) and time.monotonic() < deadline:
        if not told:
            print("waiting for an earlier run's files to be deleted …", file=sys.stderr)
            told = True
        time.sleep(1)


def remove_later(folder: Path) -> None:
    """Delete the temporary folder in a detached `rm -rf`: with ext4 `discard` (as here) each
    unlink waits for the disk, and tens of thousands of files take minutes. Not timed."""
    (folder / REMOVING).touch()
    subprocess.Popen(
        ["rm", "-rf", "--", str(folder)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    print(f"removing {folder} in the background", file=sys.stderr)
