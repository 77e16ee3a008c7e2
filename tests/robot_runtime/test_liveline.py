"""The live line fits the terminal: fields dropped by priority, then cut; rewritten in place."""

import io

import pytest

from robot_runtime.liveline import LiveLine, SilenceTimer, fit_fields, run_fields, sim_fields

LAST = {
    "phase": "descend",
    "watchdog": "normal",
    "jitter_us_p99": 412.0,
    "overruns": 3,
    "estimator": {"applied": 27, "last_age_ms": 183.0},
}
STATUS = {
    "phase": "approach",
    "watchdog": "hold",
    "loop": {"ticks": 12345, "jitter_us_p99": 250.0, "overruns": 0},
    "estimator": {"applied": 0, "last_age_ms": None},
    "bus": {"retries": 12, "timeouts": 3, "corrupt": 1, "health": {"failed": 2}},
    "rejected": 4,
}


@pytest.mark.parametrize("width", [79, 119, 199])  # an 80/120/200-column terminal, less one
def test_the_sim_line_fits_and_keeps_what_matters(width):
    line = fit_fields(sim_fields(2, 20, LAST, (11.5, 4.2), (0.83, "commit")), width)
    assert len(line) <= width and "\n" not in line
    assert line.startswith("attempt 2/20  descend")
    assert "P=0.83 commit" in line and "obs 27 age 183 ms" in line
    if width >= 119:
        assert "overruns 3" in line and "jitter p99 412 µs" in line


@pytest.mark.parametrize("width", [79, 119, 199])
def test_the_run_line_fits_and_says_when_no_observation_arrives(width):
    addr = "tcp://127.0.0.1:5601"
    line = fit_fields(run_fields(STATUS, 12.0, addr), width)
    assert len(line) <= width
    assert "no observation for 12 s: is a slow process posting to tcp://127.0.0.1:5601?" in line
    if width >= 199:
        assert "bus retries 12 timeouts 3 corrupt 1 held 2" in line


def test_a_line_too_long_even_for_its_first_fields_is_cut():
    line = fit_fields([(0, "x" * 50), (0, "y" * 50), (1, "z")], 80)
    assert len(line) == 80 and line.endswith("…") and "z" not in line


def test_the_line_is_rewritten_in_place_only_when_it_changes():
    out = io.StringIO()
    live = LiveLine(out, width=lambda: 79)
    for _ in range(10):
        live.show([(0, "waiting for the runtime...")])
    live.show([(0, "attempt 1/3")])
    live.end()
    text = out.getvalue()
    assert text.count("waiting for the runtime") == 1, "said once"
    assert text == "\rwaiting for the runtime...\x1b[K\rattempt 1/3\x1b[K\n"


def test_silence_is_counted_from_the_last_new_observation():
    silence = SilenceTimer(after_s=3.0, t0=0.0)
    assert silence(0, 2.0) is None
    assert silence(0, 4.0) == 4.0
    assert silence(1, 5.0) is None, "an observation arrived"
    assert silence(1, 8.5) == 3.5


def test_kiwi_run_status_says_once_per_silence_when_not_live():
    from robot_runtime.liveline import RunStatusThread

    t = [0.0]
    status = {"phase": "approach", "watchdog": "hold", "estimator": {"applied": 0}}
    said = []
    watcher = RunStatusThread(
        lambda: status, "tcp://127.0.0.1:5601", None, said.append, clock=lambda: t[0]
    )
    for t[0] in (1.0, 2.0, 3.5, 4.0, 5.0):
        watcher.refresh()
    assert said == ["no observation for 4 s: is a slow process posting to tcp://127.0.0.1:5601?"]
    status["estimator"] = {"applied": 1}
    t[0] = 6.0
    watcher.refresh()
    status["watchdog"] = "normal"  # chunks keep the watchdog content: not silent
    for t[0] in (10.0, 20.0):
        watcher.refresh()
    assert len(said) == 1


def test_kiwi_run_live_line_shows_the_bus():
    from robot_runtime.liveline import RunStatusThread

    out = io.StringIO()
    watcher = RunStatusThread(lambda: STATUS, "tcp://x:1", LiveLine(out, width=lambda: 199))
    watcher.refresh()
    assert "bus retries 12 timeouts 3 corrupt 1 held 2" in out.getvalue()


@pytest.mark.parametrize("columns", [80, 120, 200])
def test_the_line_uses_the_terminal_less_one_column(monkeypatch, columns):
    import os
    import shutil

    from robot_runtime.liveline import terminal_width

    monkeypatch.setattr(
        shutil, "get_terminal_size", lambda fallback: os.terminal_size((columns, 24))
    )
    line = fit_fields(sim_fields(12, 20, LAST, (11.5, 4.2), (0.83, "commit")), terminal_width())
    assert len(line) < columns, "the cursor never reaches the last column: no wrap"
