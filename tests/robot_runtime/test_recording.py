"""`--rerun`: a recording written from link messages (as the Recorder receives them; FAKE
telemetry built here) opened again with the SDK's RRD reader."""

from collections import Counter

import numpy as np
import pytest

from robot_runtime import link

rr = pytest.importorskip("rerun", reason="rerun-sdk is not installed (pip install rerun-sdk)")
from rerun.chunk import RrdReader  # noqa: E402

from robot_runtime.recording import open_recording  # noqa: E402

JOINTS = np.array([0.0, -70.0, 30.0, 88.0, 0.0, 100.0], np.float32)
CUBE = np.array([0.02, -0.01, 0.2, 5.0], np.float32)


def message(kind, arrays=None, t=0.0, **meta):
    return link.decode(link.encode(kind, arrays or {}, t_capture=t, meta=meta))


def test_a_recording_holds_camera_joints_cube_phases_gate_and_timing(tmp_path):
    path = tmp_path / "run.rrd"
    rec = open_recording(path, "kiwi test", t0=100.0)
    est = {"applied": 1, "last_age_ms": 150.0}
    for i in range(10):
        t = 100.0 + 0.1 * i
        phase = "approach" if i < 5 else "descend"
        rec.message(message("camera", {"wrist": np.zeros((32, 32, 3), np.uint8),
                                       "state": JOINTS}, t))  # fmt: skip
        rec.message(message("truth", {"object_true": CUBE, "state": JOINTS}, t, lifted_m=0.0))
        rec.message(message("telemetry", {"joints": JOINTS, "command": JOINTS,
                                          "object_estimate": CUBE}, t, phase=phase,
                            estimator=est, jitter_us_p99=300.0, overruns=0))  # fmt: skip
        rec.message(message("observation", {"object": CUBE, "state": JOINTS}, t, result="applied"))
    rec.message(message("event", {}, 100.95, event="phase", phase="decide"))  # between samples
    rec.message(message("event", {}, 101.0, event="phase", phase="decision", p_success=0.9,
                        verdict="commit", spread=0.05, ms=14.0))  # fmt: skip
    rec.message(message("event", {}, 101.1, event="attempt_end", seed=7, phase="done"))
    rec.close()

    assert RrdReader(path).blueprints(), "the viewer's opening layout comes with it"
    rows = Counter()
    for chunk in RrdReader(path).stream():
        if not chunk.is_static:  # the series' names and colours are static
            rows[chunk.entity_path.lstrip("/")] += chunk.num_rows
    assert rows["camera/wrist"] >= 2, "frames, at most CAMERA_HZ of them"
    assert rows["joints"] == 10 and rows["command"] == 10
    for source in ("latent", "perception", "truth"):
        for frame in ("camera", "world"):
            assert rows[f"cube/{frame}/position/{source}"] > 0, (frame, source)
            assert rows[f"cube/{frame}/yaw/{source}"] > 0, (frame, source)
        assert rows[f"world/cube/{source}"] > 0
    assert rows["phase"] == 3, "approach, descend, then decide (an event between samples)"
    assert rows["gate/p_success"] == 1 and rows["gate/decision"] == 1
    assert rows["loop/jitter_us_p99"] == 10 and rows["events"] == 1
