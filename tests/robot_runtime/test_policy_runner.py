"""Any policy as the slow process, without sockets: chunks checked before anything is sent,
policies loaded by name, the runner's counts, the scripted VLA as one policy among others, the
clock-offset rule, and the checks on the slow process's reports and command line."""

import numpy as np
import pytest

from robot_runtime import link
from robot_runtime.cli import main
from robot_runtime.client import ClockSample, SlowClient, estimate_offset
from robot_runtime.policy_runner import (
    PolicyRejected,
    PolicyRunner,
    check_chunk,
    load_policy,
    parse_policy_args,
)


def test_estimate_offset_trusts_the_shortest_round_trip():
    samples = [
        ClockSample(0.0, 105.0, 0.010),  # 10 ms round trip, replied late in it
        ClockSample(1.0, 101.0005, 1.001),  # 1 ms: the one to trust
        ClockSample(2.0, 102.0, 2.004),
    ]
    est = estimate_offset(samples)
    assert est.offset_s == pytest.approx(100.0) and est.rtt_s == pytest.approx(0.001)
    with pytest.raises(ValueError):
        estimate_offset([ClockSample(1.0, 5.0, 0.5)])  # negative round trip: unusable


def test_a_remote_address_without_curve_keys_is_refused():
    with pytest.raises(link.MessageError, match="needs CURVE keys"):
        SlowClient(None, "tcp://10.1.2.3:5601")


def test_chunks_are_checked_before_anything_is_sent():
    assert check_chunk(None) is None
    assert check_chunk([[0.0] * 6] * 3).shape == (3, 6)
    cases = {
        "shape": np.zeros((3, 7)),
        "chunk_size": np.zeros((0, 6)),
        "non_finite": np.array([[0, 0, 0, 0, 0, np.inf]]),
        "dtype": np.array([["a"] * 6]),
    }
    for reason, value in cases.items():
        with pytest.raises(PolicyRejected) as e:
            check_chunk(value)
        assert e.value.reason == reason
    with pytest.raises(PolicyRejected) as e:
        check_chunk(np.zeros((300, 6)), max_rows=200)
    assert e.value.reason == "chunk_size"


def test_policies_load_by_name_with_keyword_strings_and_bad_ones_are_one_line_errors():
    policy = load_policy("tests.robot_runtime.fake_slow_policies:make_hold", {"rows": "4"})
    assert policy.dt == 0.1 and policy({"observation.state": np.ones(6, np.float32)}).shape == (
        4,
        6,
    )
    assert parse_policy_args(["rows=4", "name=a=b"]) == {"rows": "4", "name": "a=b"}
    bad = {
        "nocolon": "is not MODULE:FACTORY",
        "no_such_module_xyz:f": "cannot import",
        "tests.robot_runtime.fake_slow_policies:missing": "no callable 'missing'",
        "tests.robot_runtime.fake_slow_policies:make_bad_dt": "dt 5.0 s is outside",
        "tests.robot_runtime.fake_slow_policies:make_not_callable": "not a callable",
    }
    for spec, message in bad.items():
        with pytest.raises(ValueError, match=message):
            load_policy(spec)
    with pytest.raises(ValueError, match="refused its arguments"):
        load_policy("tests.robot_runtime.fake_slow_policies:make_hold", {"colour": "red"})
    with pytest.raises(ValueError, match="not KEY=VALUE"):
        parse_policy_args(["rows"])


def test_the_runner_counts_none_as_no_chunk_not_as_a_refusal():
    runner = PolicyRunner(lambda obs: None, timeout_s=1.0)
    assert runner({}) is None
    assert runner.counts() == {"calls": 1, "chunks": 0, "no_chunk": 1} and runner.rejections == {}


@pytest.mark.parametrize(
    "args, message",
    [
        (["--policy", "nocolon"], "is not MODULE:FACTORY"),
        (["--policy", "lerobot:/no/such/folder"], "checkpoint folder /no/such/folder does not"),
        (["--policy-arg", "a=1"], "--policy-arg needs --policy"),
    ],
)
def test_kiwi_slow_policy_errors_are_one_line(args, message, capsys):
    assert main(["slow", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_the_scripted_vla_is_a_policy_like_any_other():
    """`kiwi slow --vla`'s default policy through the same runner: a wrist frame rendered by
    MuJoCo with the cube in view gives the scripted grasp's next 25 actions from the frame's
    joints; a frame without the cube gives no chunk (not a refusal)."""
    from robot_runtime.client import Frame, policy_observation
    from robot_runtime.perception import CubePerception
    from robot_runtime.slow import ScriptedVLA
    from sim.kiwi_grasp import KiwiGraspEnv

    env = KiwiGraspEnv()
    try:
        obs, _ = env.reset(seed=0)
        image = env.render_camera("wrist", 128, 128)
    finally:
        env.close()
    state = np.asarray(obs["state"], np.float32)
    runner = PolicyRunner(ScriptedVLA(CubePerception()), timeout_s=10.0)
    assert runner.dt == 0.02
    chunk = runner(policy_observation(Frame(5.0, state, {"wrist": image}), "grasp"))
    assert chunk is not None and chunk.shape == (25, 6) and runner.rejections == {}
    black = Frame(5.1, state, {"wrist": np.zeros_like(image)})
    assert runner(policy_observation(black, "grasp")) is None
    assert runner.counts() == {"calls": 2, "chunks": 1, "no_chunk": 1}


@pytest.mark.parametrize(
    "meta",
    [
        {"counts": {"calls": "3"}},
        {"counts": {"calls": True}},
        {"rejections": {"error": -1}},
        {"rejections": {"x" * 33: 1}},
        {"rejections": {f"r{i}": 1 for i in range(17)}},
        {"counts": [1, 2]},
    ],
)
def test_hostile_slow_reports_are_refused_and_counted(meta):
    from robot_runtime.messages import Rejected, check_report

    msg = link.decode(link.encode("slow_report", meta=meta))
    with pytest.raises(Rejected) as e:
        check_report(msg)
    assert e.value.reason == "report"
