"""FastLoop's schedule and deadline accounting on a stepped clock (no sleeps), and the safety layer:
clamps, the watchdog's modes and what reaches the motors."""

import signal

import numpy as np
import pytest

from robot_runtime.config import SafetySection
from robot_runtime.loop import FastLoop, SteppedClock, StopOnSignals
from robot_runtime.safety import (
    HOLD,
    NORMAL,
    SLOW,
    Watchdog,
    clamp_limits,
    clamp_step,
    safe_targets,
)

RATE_HZ = 128  # a period of 2**-7 s: schedule arithmetic is exact in binary floating point
PERIOD = 1.0 / RATE_HZ


class Recorder:
    """A tick that records (k, scheduled, clock at start) and takes ``cost[k]`` periods."""

    def __init__(self, clock: SteppedClock, cost: dict[int, float] | None = None):
        self.clock, self.cost, self.calls = clock, cost or {}, []

    def __call__(self, k: int, scheduled: float) -> None:
        self.calls.append((k, scheduled, self.clock()))
        self.clock.advance(self.cost.get(k, 0.0) * PERIOD)


def make_loop(cost=None, start=0.0):
    clock = SteppedClock(start)
    tick = Recorder(clock, cost)
    return FastLoop(RATE_HZ, tick, clock), tick, clock


# --- FastLoop ---------------------------------------------------------------------------------


def test_ticks_are_scheduled_at_t0_plus_k_periods_without_jitter():
    loop, tick, clock = make_loop(cost={k: 0.3 for k in range(10)}, start=5.0)
    stats = loop.run(max_ticks=10)
    assert [k for k, _, _ in tick.calls] == list(range(10))
    assert [s for _, s, _ in tick.calls] == [5.0 + k * PERIOD for k in range(10)]
    assert [started for _, _, started in tick.calls] == [5.0 + k * PERIOD for k in range(10)]
    assert list(stats.jitter_s) == [0.0] * 10
    assert stats.ticks == 10 and stats.overruns == 0 and stats.skipped == 0
    assert list(stats.tick_s) == pytest.approx([0.3 * PERIOD] * 10)


def test_a_tick_of_two_and_a_half_periods_overruns_once_and_skips_the_missed_slot():
    loop, tick, _ = make_loop(cost={1: 2.5})
    stats = loop.run(max_ticks=5)
    # tick 1 runs from 1.0 to 3.5 periods: slot 2 is missed (skipped), slot 3 starts at once
    assert [k for k, _, _ in tick.calls] == [0, 1, 3, 4, 5]
    assert [started / PERIOD for _, _, started in tick.calls] == [0.0, 1.0, 3.5, 4.0, 5.0]
    assert stats.overruns == 1 and stats.skipped == 1 and stats.ticks == 5
    assert [j / PERIOD for j in stats.jitter_s] == [0.0, 0.0, 0.5, 0.0, 0.0]


def test_a_tick_of_one_and_a_half_periods_overruns_without_skipping():
    loop, tick, _ = make_loop(cost={0: 1.5})
    stats = loop.run(max_ticks=3)
    assert [k for k, _, _ in tick.calls] == [0, 1, 2]
    assert [j / PERIOD for j in stats.jitter_s] == [0.0, 0.5, 0.0]
    assert stats.overruns == 1 and stats.skipped == 0


def test_a_tick_of_exactly_one_period_is_not_an_overrun():
    loop, _, _ = make_loop(cost={k: 1.0 for k in range(4)})
    stats = loop.run(max_ticks=4)
    assert stats.overruns == 0 and list(stats.jitter_s) == [0.0] * 4


def test_stop_ends_the_loop_after_the_current_tick():
    clock = SteppedClock()
    seen = []

    def tick(k, scheduled):
        seen.append(k)
        if k == 3:
            loop.stop("enough")
            loop.stop("again")  # the first reason is kept

    loop = FastLoop(RATE_HZ, tick, clock)
    stats = loop.run(max_ticks=100)
    assert seen == [0, 1, 2, 3] and stats.ticks == 4 and loop.stop_reason == "enough"


def test_a_loop_stopped_before_it_runs_does_not_tick():
    loop, tick, _ = make_loop()
    loop.stop()
    assert loop.run(max_ticks=5).ticks == 0 and tick.calls == []


def test_max_ticks_and_duration_are_honoured():
    loop, _, _ = make_loop()
    assert loop.run(max_ticks=7).ticks == 7
    loop, tick, clock = make_loop(start=2.0)
    stats = loop.run(duration_s=0.5)
    assert stats.ticks == 64  # slots 0..63 start before 0.5 s
    assert tick.calls[-1][1] == 2.0 + 63 * PERIOD
    loop, _, _ = make_loop(cost={0: 10.0})
    stats = loop.run(duration_s=0.5)
    assert stats.ticks + stats.skipped == 64 and stats.skipped == 9


def test_an_exception_in_a_tick_propagates_and_stops_the_loop():
    clock = SteppedClock()

    def tick(k, scheduled):
        if k == 2:
            raise RuntimeError("servo bus gone")

    loop = FastLoop(RATE_HZ, tick, clock)
    with pytest.raises(RuntimeError, match="servo bus gone"):
        loop.run(max_ticks=10)
    assert loop.stats.ticks == 2


@pytest.mark.parametrize("rate_hz", [0.5, 1001])
def test_rates_outside_1_to_1000_hz_are_refused(rate_hz):
    with pytest.raises(ValueError, match="rate_hz"):
        FastLoop(rate_hz, lambda k, s: None, SteppedClock())


def test_summary_reports_microseconds():
    loop, _, _ = make_loop(cost={0: 1.5})
    summary = loop.run(max_ticks=2).summary()
    assert summary["ticks"] == 2 and summary["overruns"] == 1
    assert summary["jitter_us_max"] == pytest.approx(0.5 * PERIOD * 1e6)
    assert summary["tick_us_p50"] == pytest.approx(0.75 * PERIOD * 1e6)


def test_sigterm_stops_the_loop_and_the_handler_is_restored():
    before = signal.getsignal(signal.SIGTERM)
    clock = SteppedClock()

    def tick(k, scheduled):
        if k == 2:
            signal.raise_signal(signal.SIGTERM)

    loop = FastLoop(RATE_HZ, tick, clock)
    with StopOnSignals(loop):
        stats = loop.run(max_ticks=100)
    assert stats.ticks == 3 and loop.stop_reason == "SIGTERM"
    assert signal.getsignal(signal.SIGTERM) is before


# --- safety -----------------------------------------------------------------------------------

LIMITS = np.array([[-90.0, 90.0], [0.0, 100.0], [-10.0, 10.0]])


def test_clamp_limits():
    out = clamp_limits(np.array([-120.0, 50.0, 10.5]), LIMITS)
    np.testing.assert_array_equal(out, [-90.0, 50.0, 10.0])


def test_clamp_step_with_a_scalar_and_a_per_joint_limit():
    previous = np.array([0.0, 50.0, 5.0])
    targets = np.array([10.0, 40.0, 6.0])
    np.testing.assert_array_equal(clamp_step(targets, previous, 4.0), [4.0, 46.0, 6.0])
    np.testing.assert_array_equal(
        clamp_step(targets, previous, np.array([1.0, 2.0, 0.5])), [1.0, 48.0, 5.5]
    )


def test_safe_targets_per_mode():
    config = SafetySection(max_step_deg=4.0, slow_factor=0.25)
    previous = np.array([88.0, 50.0, 0.0])
    targets = np.array([200.0, 30.0, 2.0])
    # the limit first (200 -> 90), then the step: 88 -> 90, 50 -> 46, 0 -> 2
    np.testing.assert_array_equal(
        safe_targets(targets, previous, LIMITS, NORMAL, config), [90.0, 46.0, 2.0]
    )
    np.testing.assert_array_equal(
        safe_targets(targets, previous, LIMITS, SLOW, config), [89.0, 49.0, 1.0]
    )
    held = safe_targets(targets, previous, LIMITS, HOLD, config)
    np.testing.assert_array_equal(held, previous)
    assert held is not previous


def test_safe_targets_hold_joints_whose_target_is_not_finite():
    config = SafetySection(max_step_deg=4.0)
    previous = np.array([10.0, 50.0, 0.0])
    targets = np.array([np.nan, 60.0, np.inf])
    out = safe_targets(targets, previous, LIMITS, NORMAL, config)
    np.testing.assert_array_equal(out, [10.0, 54.0, 0.0])


def test_watchdog_modes_follow_the_age_of_the_last_observation():
    config = SafetySection(slow_after_s=0.5, hold_after_s=1.5)
    clock = SteppedClock(100.0)
    dog = Watchdog(config, clock())
    seen = []
    for dt in (0.25, 0.24, 0.01, 0.99, 0.01, 1.0):
        clock.advance(dt)
        seen.append(dog.mode(clock()))
    # ages 0.25, 0.49, 0.5, 1.49, 1.5, 2.5
    assert seen == [NORMAL, NORMAL, SLOW, SLOW, HOLD, HOLD]
    dog.observed(clock())
    assert dog.mode(clock()) == NORMAL


def test_watchdog_update_reports_each_transition_exactly_once():
    config = SafetySection(slow_after_s=0.5, hold_after_s=1.5)
    clock = SteppedClock(0.0)
    dog = Watchdog(config, clock())
    events = []
    for step in range(12):  # 0.25 s steps; an observation arrives at 2.5 s
        if step == 10:
            dog.observed(clock())
        events.append(dog.update(clock()))
        clock.advance(0.25)
    assert events == [
        (NORMAL, None),  # 0.0
        (NORMAL, None),  # 0.25
        (SLOW, NORMAL),  # 0.5
        (SLOW, None),
        (SLOW, None),
        (SLOW, None),  # 1.25
        (HOLD, SLOW),  # 1.5
        (HOLD, None),
        (HOLD, None),
        (HOLD, None),  # 2.25
        (NORMAL, HOLD),  # 2.5: observed
        (NORMAL, None),
    ]
