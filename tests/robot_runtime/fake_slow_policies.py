"""Policy factories for `kiwi slow --policy MODULE:FACTORY` tests (fakes, named so: they stand
in for a user's learned policy)."""

import numpy as np


class FakeHoldPolicy:
    """Answers a chunk that holds the joints of the frame (plus ``offset`` on the pan joint)."""

    dt = 0.1

    def __init__(self, rows: int, offset_deg: float):
        self.rows, self.offset_deg = rows, offset_deg

    def __call__(self, observation):
        state = np.asarray(observation["observation.state"], np.float32).copy()
        state[0] += self.offset_deg
        return np.tile(state, (self.rows, 1))


def make_hold(rows: str = "10", offset_deg: str = "0"):
    return FakeHoldPolicy(int(rows), float(offset_deg))


def make_bad_dt():
    policy = FakeHoldPolicy(1, 0.0)
    policy.dt = 5.0
    return policy


def make_not_callable():
    return 42
