"""Why a grasp failed, read off a recorded episode (pure numpy; for summaries and plots)."""

from __future__ import annotations

import numpy as np

PHASES = ("settle", "approach", "descend", "close", "lift", "hold")
OUTCOMES = ("success", "missed", "pushed", "one finger", "slipped", "other")


def classify(episode: dict[str, np.ndarray]) -> str:
    """One of OUTCOMES:

    - missed: no finger ever touched the cube;
    - pushed: the cube moved more than 8 mm or tipped before the fingers closed on it (a finger
      came down on it or beside it);
    - one finger: only one finger ever held it;
    - slipped: both fingers held it, then lost it (squeezed out at an edge, or fell on the lift);
    - other: anything else (e.g. held to the end but never 5 cm up).
    """
    if bool(episode["success"][0]):
        return "success"
    contacts = np.asarray(episode["finger_contacts"], bool)
    if not contacts.any():
        return "missed"
    phase = np.asarray(episode["phase"])
    pos = np.asarray(episode["cube_pos"], float)
    start = pos[0]
    before_close = phase <= PHASES.index("close")
    moved = np.linalg.norm(pos[before_close, :2] - start[:2], axis=1).max()
    size = float(episode["cube_size_m"][0])
    tipped = (pos[before_close, 2] - start[2]).min() < -0.15 * size
    if moved > 0.008 or tipped:
        return "pushed"
    both = contacts.all(axis=1)
    if not both.any():
        return "one finger"
    if not contacts[-1].all():
        return "slipped"
    return "other"
