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
