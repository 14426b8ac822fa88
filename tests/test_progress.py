"""Progress for people at a terminal: the line's wording, and silence when not on a terminal."""

from __future__ import annotations

import io

from priorauth.progress import Progress, progress_line


def test_progress_line_counts_rate_and_time_left() -> None:
    assert progress_line(0, 1000, 0.0) == "cases 0/1,000 (0%)"
    assert progress_line(250, 1000, 10.0) == "cases 250/1,000 (25%) · 25.0/s · 30s left"
    assert progress_line(100, 1000, 60.0) == "cases 100/1,000 (10%) · 1.7/s · 9m00s left"
    assert progress_line(1000, 1000, 61.0) == "cases 1,000/1,000 (100%) · 16.4/s · done in 1m01s"


def test_progress_is_silent_off_a_terminal_and_draws_on_one() -> None:
    quiet = io.StringIO()  # not a terminal: cron, CI, a pipe
    bar = Progress(3, stream=quiet)
    for done in (1, 2, 3):
        bar.update(done)
    bar.close()
    assert quiet.getvalue() == ""

    shown = io.StringIO()
    bar = Progress(3, stream=shown, force=True)
    bar.update(3)
    bar.close()
    out = shown.getvalue()
    assert out.startswith("\r\033[K") and out.endswith("\n")
    assert "cases 3/3 (100%)" in out


def test_the_night_reports_progress_of_its_letters(tmp_path) -> None:
    import shutil
    from datetime import UTC, datetime

    from conftest import ATTACHMENTS, CASES
    from priorauth.nightly import run_night
    from priorauth.settings import load_settings

    home = tmp_path / "home"
    (home / "intake").mkdir(parents=True)
    shutil.copytree(ATTACHMENTS, home / "attachments")
    names = ["ms-1002.yaml", "cidp-2001.json", "pid-3001.yaml"]
    for name in names:
        shutil.copy(CASES / name, home / "intake" / name)
    calls: list[tuple[int, int]] = []
    run_night(
        load_settings(home=home, workers=1, chunk_size=1),
        datetime(2026, 11, 25, 7, tzinfo=UTC),
        on_progress=lambda done, total: calls.append((done, total)),
    )
    assert calls == [(1, 3), (2, 3), (3, 3)]  # one call per finished chunk, counts only
