"""The scripted hand of `kiwi emulate-bus --sweep`, the recorder `kiwi calibrate --yes` stops
on, and the two together on the emulator at a stepped clock."""

from __future__ import annotations

import pytest

from drivers.calibration import MotionRecorder, travel_problem
from drivers.tables import MODELS
from drivers.virtual_hand import HandSweep, middle_ticks

IDS = (1, 2, 3, 4, 5, 6)


def test_the_hand_holds_every_joint_at_its_middle_then_sweeps_one_at_a_time():
    hand = HandSweep(IDS, sweep_s=6.0, hold_s=2.0)
    middles = {i: middle_ticks(i) for i in IDS}
    assert hand.positions(0.0) == middles and hand.positions(1.99) == middles
    assert len(set(middles.values())) == len(IDS), "each servo its own middle"
    for k, servo_id in enumerate(IDS):  # one second each, starting at t = 2
        seen = [hand.positions(2.0 + k + j / 100) for j in range(101)]
        low, high = hand.extremes(servo_id)
        assert min(p[servo_id] for p in seen) == pytest.approx(low)
        assert max(p[servo_id] for p in seen) == pytest.approx(high)
        others = {i for i in IDS if i != servo_id}
        assert all(p[i] == middles[i] for p in seen[1:-1] for i in others)
    assert hand.positions(8.0 + 1.0) == middles, "the next cycle begins with a hold"
    assert hand.positions(hand.cycle_s + 2.5) == hand.positions(2.5)


@pytest.mark.parametrize("sweep_s", [2.4, 12.0, 120.0])
def test_the_hand_holds_each_end_for_a_20_ms_sampler_but_not_a_second(sweep_s):
    """Seen by calibrate's sampler, yet never still long enough to end its recording early."""
    hand = HandSweep(IDS, sweep_s=sweep_s)
    low, high = hand.extremes(1)
    times = [2.0 + k / 1000 for k in range(int(sweep_s / 6 * 1000))]
    for end in (low, high):
        at_end = [t for t in times if hand.positions(t)[1] == pytest.approx(end)]
        assert 0.05 <= max(at_end) - min(at_end) < 0.5


def test_the_hands_positions_fit_a_servos_turn_and_offsets():
    hand = HandSweep(tuple(range(0, 16)))
    sts = MODELS["sts3215"].register("Homing_Offset")
    for servo_id in hand.ids:
        low, high = hand.extremes(servo_id)
        assert 0 < low < high < 4095 and high - low > 600
        assert sts.allows(round(middle_ticks(servo_id)) - 2047)


@pytest.mark.parametrize(
    "kwargs", [{"ids": ()}, {"ids": IDS, "sweep_s": 0}, {"ids": IDS, "amplitude_ticks": 2000}]
)
def test_a_hand_refuses_settings_it_cannot_follow(kwargs):
    with pytest.raises(ValueError):
        HandSweep(**kwargs)


def test_the_recorder_tracks_ranges_and_stillness_on_the_samples_clock():
    rec = MotionRecorder(still_ticks=5)
    assert rec.still_s == 0.0
    rec.add(10.0, {1: 2000, 2: 2000})
    rec.add(10.5, {1: 2003, 2: 1998})  # wobble within the tolerance
    assert rec.still_s == pytest.approx(0.5)
    rec.add(11.0, {1: 2400, 2: 1998})
    assert rec.still_s == 0.0
    rec.add(11.2, {1: 1500, 2: 1998})
    rec.add(12.0, {1: 1502, 2: 1999})
    assert rec.still_s == pytest.approx(0.8)
    assert (rec.lows[1], rec.highs[1], rec.travel(1)) == (1500, 2400, 900)
    assert rec.travel(2) == 2 and rec.last == {1: 1502, 2: 1999}


def test_travel_problem_names_a_joint_that_barely_moved():
    assert travel_problem(1000, 3000, 200) is None
    assert travel_problem(2000, 2000, 200) == "did not move (range 2000..2000)"
    assert "moved through only 40 ticks" in travel_problem(2000, 2040, 200)


@pytest.mark.parametrize(
    ("protocol", "name"), [("feetech", "sts3215"), ("dynamixel", "xl330-m288")]
)
def test_the_emulator_moves_limp_servos_by_hand_and_reports_it_on_the_wire(
    protocol, name, make_virtual_bus, open_motor_bus
):
    """Present_Position follows the hand through the normal protocol while torque is off;
    a servo with torque on holds where it is."""
    from .test_virtual_bus import SteppedClock

    clock = SteppedClock()
    hand = HandSweep((1, 2), sweep_s=2.0, hold_s=1.0)
    virtual = make_virtual_bus(protocol, {1: name, 2: name}, clock=clock, hand=hand)
    bus = open_motor_bus(virtual)
    present = MODELS[name].register("Present_Position")
    torque = MODELS[name].register("Torque_Enable")
    t0 = clock.now
    assert bus.sync_read(present, [1, 2]) == {1: round(middle_ticks(1)), 2: round(middle_ticks(2))}
    clock.now = t0 + 1.0 + 0.3  # servo 1 held at its low end
    low, _ = hand.extremes(1)
    assert bus.read(1, present) == round(low)
    bus.write(2, torque, 1)
    clock.now = t0 + 1.0 + 1.0 + 0.7  # servo 2's high end, but its torque is on
    assert bus.read(2, present) == round(middle_ticks(2))
    bus.write(2, torque, 0)
    clock.now = t0 + 3.0 + 1.0 + 1.7  # limp again: where the hand is
    assert bus.read(2, present) == round(hand.extremes(2)[1])
