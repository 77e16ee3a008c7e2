"""A person's hand on an emulated arm: the moves of LeRobot-style calibration, as a function of
time, so that ``kiwi calibrate`` can run against ``kiwi emulate-bus --sweep`` with nobody there.

One cycle of ``HandSweep.positions(t_s)``: every joint held still at its middle for ``hold_s``;
then each joint in turn (by id) to near one end of its range, to near the other end and back to
the middle, while the others stay still (``sweep_s`` for all of them). Each end is held for a
moment, so a sampler that reads every 20 ms sees it. Then the next cycle.

Positions are motor ticks before any homing offset (the servo's ``actual``). The middles differ a
little per servo, so calibrate's homing offsets are not all the same. Pure: the emulator
(``VirtualBus(hand=...)``) applies them to the servos whose torque is off, as a hand moves a limp
servo; a servo with torque on holds against the hand.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# How long the hand holds each end: long enough for a 20 ms sampler to see it, short of the
# second of stillness that ends a step of `kiwi calibrate --yes`, however slow the sweep.
END_HOLD_S = 0.3


def keyframes(slot_s: float) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """One joint's move in a slot of ``slot_s`` seconds, as (fractions of the slot, offsets from
    its middle in amplitudes): out to the low end, held, across to the high end, held, back."""
    hold = min(0.15, END_HOLD_S / slot_s)
    ramp = (1.0 - 2 * hold) / 4  # out and back take one part each, across takes two
    xs = (0.0, ramp, ramp + hold, 3 * ramp + hold, 3 * ramp + 2 * hold, 1.0)
    return xs, (0.0, -1.0, -1.0, 1.0, 1.0, 0.0)


def middle_ticks(servo_id: int) -> float:
    """Where the hand holds a servo "in the middle": near half a turn, a little apart per id."""
    return 2048.0 + 37.0 * (servo_id % 8 - 3)


@dataclass(frozen=True)
class HandSweep:
    ids: tuple[int, ...]
    sweep_s: float = 12.0  # one pass through every joint
    hold_s: float = 2.0  # still at the middle before each pass (calibrate waits for stillness)
    amplitude_ticks: float = 1100.0  # each way from the middle (~97 degrees), less 40 per id

    def __post_init__(self):
        if not self.ids:
            raise ValueError("a hand sweep needs at least one servo")
        if self.sweep_s <= 0 or self.hold_s <= 0:
            raise ValueError(f"sweep_s and hold_s must be > 0, got {self.sweep_s}, {self.hold_s}")
        if not 320 < self.amplitude_ticks < 1800:
            raise ValueError(f"amplitude_ticks must be in (320, 1800), got {self.amplitude_ticks}")

    @property
    def cycle_s(self) -> float:
        return self.hold_s + self.sweep_s

    def positions(self, t_s: float) -> dict[int, float]:
        """Each servo's position (ticks) ``t_s`` seconds after the hand started."""
        out = {i: middle_ticks(i) for i in self.ids}
        into_sweep = t_s % self.cycle_s - self.hold_s
        if into_sweep < 0:
            return out
        slot_s = self.sweep_s / len(self.ids)
        k = min(int(into_sweep // slot_s), len(self.ids) - 1)
        fraction = (into_sweep - k * slot_s) / slot_s
        xs, ys = keyframes(slot_s)
        out[self.ids[k]] += self.amplitude(self.ids[k]) * float(np.interp(fraction, xs, ys))
        return out

    def amplitude(self, servo_id: int) -> float:
        """How far each way from its middle the hand takes ``servo_id`` (a little less per id,
        so that each joint's range is its own)."""
        return self.amplitude_ticks - 40.0 * (servo_id % 8)

    def extremes(self, servo_id: int) -> tuple[float, float]:
        """The lowest and highest position the hand takes ``servo_id`` to."""
        mid, amplitude = middle_ticks(servo_id), self.amplitude(servo_id)
        return mid - amplitude, mid + amplitude
