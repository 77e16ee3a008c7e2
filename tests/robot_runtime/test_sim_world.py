"""The simulated world validates its commands: hostile ones are counted, never fatal."""

import subprocess
import sys
import time

import numpy as np
import pytest
import zmq

from robot_runtime import link
from robot_runtime.config import dump_config
from robot_runtime.dryrun import free_ports
from robot_runtime.sim_world import MAX_SEED, CommandError, parse_command

from .runtime_helpers import grasp_job


def message(kind: str, arrays: dict | None = None, meta: dict | None = None) -> link.Message:
    return link.decode(link.encode(kind, arrays, meta=meta))


BAD_SEEDS = ["abc", -5, MAX_SEED + 1, True, 3.5, None, [1], {"a": 1}, float("nan")]
BAD_TARGETS = [
    {"targets": np.zeros(5)},
    {"targets": np.zeros((2, 6))},
    {"targets": np.array([0, 0, 0, np.nan, 0, 0])},
    {"targets": np.array([0, 0, 0, np.inf, 0, 0])},
    {"targets": np.zeros(6, np.int64)},
    {"targets": np.zeros(6, bool)},
    {"other": np.zeros(6)},
    {},
]


@pytest.mark.parametrize("seed", BAD_SEEDS, ids=repr)
def test_a_reset_with_a_bad_seed_is_refused(seed):
    with pytest.raises(CommandError, match="seed"):
        parse_command(message("reset", meta={"seed": seed}))


def test_a_reset_without_a_seed_is_refused():
    with pytest.raises(CommandError, match="seed"):
        parse_command(message("reset"))


@pytest.mark.parametrize("arrays", BAD_TARGETS, ids=lambda a: repr(list(a)))
def test_bad_targets_are_refused(arrays):
    with pytest.raises(CommandError, match="targets"):
        parse_command(message("targets", arrays))


def test_valid_commands_parse():
    assert parse_command(message("reset", meta={"seed": 0})) == ("reset", 0)
    assert parse_command(message("reset", meta={"seed": MAX_SEED})) == ("reset", MAX_SEED)
    kind, targets = parse_command(message("targets", {"targets": np.ones(6, np.float32)}))
    assert kind == "targets" and targets.dtype == np.float64 and targets.shape == (6,)
    with pytest.raises(CommandError, match="unknown command kind"):
        parse_command(message("launch_missiles"))


def test_the_world_process_survives_hostile_commands_and_still_resets(tmp_path):
    command, camera, state = (f"tcp://127.0.0.1:{p}" for p in free_ports(3))
    job = grasp_job(f"link.command={command}", f"link.camera={camera}", f"link.sim_state={state}")
    (tmp_path / "job.yaml").write_text(dump_config(job))
    proc = subprocess.Popen(
        [sys.executable, "-m", "robot_runtime.sim_world", "--config", str(tmp_path / "job.yaml")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    ctx = link.Context()
    try:
        assert proc.stdout.readline().strip() == "sim world ready"
        push = ctx.connect(zmq.PUSH, command, hwm=1000)
        sub = ctx.connect(zmq.SUB, state, hwm=1000)
        sub.setsockopt(zmq.SUBSCRIBE, b"")

        def next_truth(episode: int, timeout_s: float = 10.0) -> dict:
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                for msg in link.drain(sub, None, 1000):
                    if msg.kind == "truth" and msg.header.meta["episode"] == episode:
                        # the joints the camera-frame truth was seen from (world-frame displays)
                        assert msg.arrays["state"].shape == (6,)
                        return msg.header.meta
                time.sleep(0.02)
            raise AssertionError(f"no truth of episode {episode} ({proc.poll()=})")

        push.send_multipart(link.encode("reset", meta={"seed": 1}))
        next_truth(0)
        hostile = [link.encode("reset", meta={"seed": s}) for s in BAD_SEEDS]
        hostile += [link.encode("targets", a) for a in BAD_TARGETS]
        hostile += [
            link.encode("reset"),
            link.encode("unknown"),
            [b"not json"],
            [b'{"v": 1, "kind": "targets"}', b"\x00" * 48],  # frames its header does not list
        ]
        for frames in hostile:
            push.send_multipart(frames)
        push.send_multipart(link.encode("reset", meta={"seed": 2}))
        meta = next_truth(1)
        assert proc.poll() is None, "the world is still running"
        assert meta["rejected"] == len(hostile)
        assert meta["last_rejection"]  # the reason travels with the count
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=10)
        ctx.close()
    assert "reset: seed 'abc' is not an integer" in out, "each rejection is logged"
    assert "Traceback" not in out
