"""The grasp-success predictor's maths, the commit gate's retry bound and grasp queries."""

import math
import time

import numpy as np
import pytest
import torch
import zmq

from robot_runtime import link
from robot_runtime.config import GraspControllerConfig
from robot_runtime.controllers import (
    BACK_OFF,
    CLOSE,
    GAVE_UP,
    GraspController,
    GraspPolicy,
    blend_aim,
    cube_in_world,
)
from robot_runtime.dryrun import free_ports
from robot_runtime.gate import PENDING, GraspGate, commit_plan
from robot_runtime.service import Runtime
from world_model.grasp import (
    Forecast,
    GraspPredictor,
    SuccessHead,
    auroc,
    brier,
    fit_isotonic,
    fit_platt,
    fit_temperature,
    reliability,
)

from .runtime_helpers import grasp_job, tiny_grasp_model


def test_temperature_against_a_hand_computed_case():
    # Logit +2 is right 3 times in 4, logit -2 likewise: the best temperature makes
    # sigmoid(2 / T) = 0.75, i.e. T = 2 / ln 3.
    logits = np.array([2, 2, 2, 2, -2, -2, -2, -2], float)
    labels = np.array([1, 1, 1, 0, 0, 0, 0, 1], float)
    assert fit_temperature(logits, labels) == pytest.approx(2 / math.log(3), rel=1e-4)


def test_platt_scale_and_bias_against_a_hand_computed_case():
    # Logit +1 is right 4 times in 5, logit -1 is wrong 3 times in 5 (an over-confident, biased
    # head). Two distinct logits: the fit reproduces both frequencies, sigmoid(a + b) = 0.8 and
    # sigmoid(-a + b) = 0.4, so a + b = ln 4 and b - a = ln(2/3).
    logits = np.array([1] * 5 + [-1] * 5, float)
    labels = np.array([1, 1, 1, 1, 0] + [1, 1, 0, 0, 0], float)
    c = fit_platt(logits, labels, l2=0.0)
    a, b = (math.log(4) - math.log(2 / 3)) / 2, (math.log(4) + math.log(2 / 3)) / 2
    assert 1 / c.temperature == pytest.approx(a, rel=1e-6)
    assert c.bias == pytest.approx(b, rel=1e-6)
    assert c(np.array([1.0, -1.0])) == pytest.approx([0.8, 0.4], rel=1e-6)


def test_platt_fit_is_the_likelihoods_stationary_point_on_random_data():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, 400)
    labels = (rng.random(400) < 1 / (1 + np.exp(-(0.5 * logits - 1.0)))).astype(float)
    c = fit_platt(logits, labels, l2=0.0)
    q = c(logits)  # d NLL / d(a, b) = mean((q - y) * (z, 1)) vanishes at the optimum
    assert abs(np.mean((q - labels) * logits)) < 1e-6 and abs(np.mean(q - labels)) < 1e-6
    assert 1 / c.temperature == pytest.approx(0.5, abs=0.15)
    assert c.bias == pytest.approx(-1, abs=0.4)
    # a head that ranks backwards is not turned around: the temperature alone, no bias
    backwards = fit_platt(-logits, labels, l2=0.0)
    assert backwards.bias == 0.0 and backwards.temperature > 0


def test_calibration_on_too_little_data_stays_finite():
    """Tiny calibration sets (a quick run, one class, a NaN logit) give a usable calibration,
    not NaN: nothing to fit is no change, one class is a temperature without a bias."""
    assert fit_temperature(np.array([]), np.array([])) == 1.0
    for logits, labels in [
        (np.array([]), np.array([])),
        (np.array([1.0, 2.0, 3.0]), np.array([1.0, 1.0, 1.0])),
        (np.array([0.5]), np.array([0.0])),
        (np.array([np.nan, 1.0, -1.0]), np.array([1.0, 1.0, 0.0])),
    ]:
        c = fit_platt(logits, labels)
        assert np.isfinite(c.temperature) and c.temperature > 0 and np.isfinite(c.bias)
        assert np.all(np.isfinite(c(np.array([-3.0, 0.0, 3.0]))))


def test_isotonic_pools_adjacent_violators():
    knots, values = fit_isotonic(np.array([0.1, 0.2, 0.3, 0.4]), np.array([0, 1, 0, 1]))
    assert np.interp([0.1, 0.2, 0.3, 0.4], knots, values).tolist() == [0.0, 0.5, 0.5, 1.0]


def test_auroc_brier_and_ece_against_hand_computed_cases():
    p, y = np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])
    assert auroc(p, y) == pytest.approx(0.75)  # 3 of the 4 (success, failure) pairs ordered
    assert brier(p, y) == pytest.approx((0.01 + 0.16 + 0.4225 + 0.04) / 4)
    # two bins: [0.1, 0.4, 0.35] -> mean 0.2833, freq 1/3; [0.8] -> 0.8, freq 1
    ece, table = reliability(p, y, bins=2)
    assert ece == pytest.approx(0.75 * abs(0.85 / 3 - 1 / 3) + 0.25 * 0.2)
    assert [n for *_, n in table] == [3, 1]


class AlwaysBackOff:
    def __init__(self):
        self.calls = 0

    def __call__(self, t, aim, roll_hint):
        self.calls += 1
        return "back_off"


def drive(controller, ticks=2000, dt=0.02):
    joints = np.array([0.0, -70.0, 30.0, 90.0, 0.0, 100.0])
    estimate = np.array([0.0, 0.02, 0.22, 10.0])  # a cube below the home camera
    controller.reset(0.0, joints)
    phases = []
    for k in range(ticks):
        controller.act(k * dt, joints, estimate)
        if not phases or phases[-1] != controller.phase:
            phases.append(controller.phase)
        if controller.finished:
            break
    return phases


def test_the_gate_backs_off_at_most_the_retry_bound_then_gives_up():
    gate = AlwaysBackOff()
    phases = drive(GraspController(GraspControllerConfig(), gate, max_retries=2))
    assert gate.calls == 3  # the first decision and two retries
    assert phases.count(BACK_OFF) == 2 and phases[-1] == GAVE_UP and CLOSE not in phases


class FakeSlowPredictor:
    """A fake GraspPredictor (the real one is timed by the tests below and `kiwi eval grasp`):
    each forecast takes ``seconds`` and answers ``p``; records the belief it was given."""

    horizon, samples = 20, 4

    def __init__(self, seconds: float, p: float):
        self.seconds, self.p, self.beliefs = seconds, p, []

    def forecast(self, state, plan):
        self.beliefs.append(state)
        time.sleep(self.seconds)
        return Forecast(self.p, 0.0, self.samples, self.horizon, self.seconds * 1e3)


class Belief:
    """A fake estimator (named as such): a belief, observed 0.1 s before it was made."""

    def __init__(self, model):
        self.state = model.initial(1)
        self.stats = type("Stats", (), {"applied": 1, "last_age_s": 0.1})()


def test_a_background_gate_holds_at_decide_until_its_forecast_is_in():
    model = tiny_grasp_model()
    predictor = FakeSlowPredictor(0.2, p=0.9)
    gate = GraspGate(predictor, GraspControllerConfig(), 50.0, 0.5, background=True)
    belief = Belief(model)
    controller = GraspController(
        GraspControllerConfig(), lambda t, aim, roll: gate(t, aim, roll, belief.state)
    )
    joints = np.array([0.0, -70.0, 30.0, 90.0, 0.0, 100.0])
    controller.reset(0.0, joints)
    estimate = np.array([0.0, 0.02, 0.22, 10.0])
    k = 0
    while controller.phase != "decide":
        controller.act(k * 0.02, joints, estimate)
        k += 1
    targets = controller.act(k * 0.02, joints, estimate)  # starts the forecast, returns at once
    started = time.perf_counter()
    assert controller.phase == "decide" and gate._pending is not None
    while controller.phase == "decide":
        assert np.allclose(controller.act(k * 0.02, joints, estimate), targets)  # holding
        assert time.perf_counter() - started < 5, "the forecast never arrived"
        time.sleep(0.01)
    assert controller.phase == CLOSE and time.perf_counter() - started >= 0.19
    assert [d.verdict for d in gate.decisions] == ["commit"]
    # the forecast saw a copy of the belief, not the live state the loop goes on updating
    assert predictor.beliefs[0].deter is not belief.state.deter
    assert torch.equal(predictor.beliefs[0].deter, belief.state.deter)
    gate.close()


def test_a_new_attempt_discards_the_forecast_of_the_one_before():
    model = tiny_grasp_model()
    gate = GraspGate(
        FakeSlowPredictor(0.05, p=0.9), GraspControllerConfig(), 50.0, 0.5, background=True
    )
    policy = GraspPolicy(GraspController(GraspControllerConfig()), gate)
    policy.estimator = Belief(model)
    policy._t_observed = 0.0  # a fresh belief: the gate starts a forecast
    assert policy._decide(0.0, (np.array([0.19, 0.0]), 0.0), 0.0) == PENDING
    assert gate.in_flight
    policy.reset(1.0)
    assert gate._pending is None
    gate.close()


def test_background_and_inline_gates_give_the_same_forecast():
    model = tiny_grasp_model()
    head = SuccessHead(model.rssm.feat_dim)
    aim = (np.array([0.19, 0.01]), 0.2)
    answers = []
    for background in (False, True):
        predictor = GraspPredictor(model, head, 5, 8, seed=3)
        gate = GraspGate(predictor, GraspControllerConfig(), 50.0, 0.5, background=background)
        belief = Belief(model).state
        verdict = gate(0.0, aim, 0.0, belief)
        while verdict == PENDING:
            verdict = gate(0.0, aim, 0.0, belief)
        answers.append((verdict, gate.decisions[-1].p_success))
        gate.close()
    assert answers[0] == answers[1]


def test_a_committing_gate_closes_the_gripper():
    phases = drive(GraspController(GraspControllerConfig(), lambda t, a, r: "commit"))
    assert phases[-1] == "done" and CLOSE in phases and BACK_OFF not in phases


def test_tracking_low_passes_the_aim_and_turns_yaw_the_short_way():
    old = (np.array([0.20, 0.00]), math.radians(40.0))
    new = (np.array([0.22, 0.02]), math.radians(-44.0))  # the same cube face as +46 degrees
    xy, yaw = blend_aim(old, new, 0.25)
    assert xy == pytest.approx([0.205, 0.005])
    assert math.degrees(yaw) == pytest.approx(41.5)  # a quarter of +6, not of -84
    xy, yaw = blend_aim(old, new, 1.0)
    assert xy == pytest.approx(new[0]) and math.degrees(yaw) == pytest.approx(46.0)

    # with a fixed estimate, tracking converges on the aim it gives
    c = GraspControllerConfig(aim="track", track_gain=0.05)
    controller = GraspController(c, aim="track")
    joints = np.array([0.0, -70.0, 30.0, 90.0, 0.0, 100.0])
    controller.reset(0.0, joints)
    controller.act(0.0, joints, np.array([0.0, 0.02, 0.22, 10.0]))
    first = controller.aim
    moved = np.array([0.03, 0.02, 0.22, 10.0])
    for k in range(1, 40):
        controller.act(k * 0.02, joints, moved)
    target = cube_in_world(moved, joints)[0]
    expected = target + (first[0] - target) * 0.95**39
    assert controller.aim[0] == pytest.approx(expected, abs=1e-9)


def test_commit_plan_closes_then_lifts():
    c = GraspControllerConfig()
    plan = commit_plan(np.array([0.19, 0.0]), 0.3, 0.0, c, 50.0, 60)
    assert plan.shape == (60, 6)
    grip = plan[:, 5]
    assert grip[0] > 90 and grip[29] == pytest.approx(0.0, abs=1e-6) and np.all(np.diff(grip) <= 0)


@pytest.fixture
def gated_runtime():
    from drivers.sim_arm import SimArm

    query, obs, tele = free_ports(3)
    job = grasp_job(
        f"link.query=tcp://127.0.0.1:{query}",
        f"link.obs=tcp://127.0.0.1:{obs}",
        f"link.telemetry=tcp://127.0.0.1:{tele}",
    )
    wm = tiny_grasp_model()
    torch.manual_seed(0)
    predictor = GraspPredictor(wm, SuccessHead(wm.rssm.feat_dim), horizon=5, samples=8)
    gate = GraspGate(predictor, job.controller, job.runtime.rate_hz)
    arm = SimArm(seed=1)
    arm.connect()
    rt = Runtime(job, wm, arm, policy=GraspPolicy(GraspController(job.controller), gate))
    rt.start_attempt(1, arm.read_joints())
    ctx = link.Context()
    req = ctx.connect(zmq.REQ, job.link.query)
    yield rt, req
    ctx.close()
    rt.close()
    arm.disconnect()


def ask(rt, req, frames):
    req.send_multipart(frames)
    for k in range(300):
        rt.tick(k, rt.attempt.t_start + k * rt.period)
        if req.poll(5):
            return link.decode(req.recv_multipart())
    raise AssertionError("no reply")


def test_grasp_queries_answer_a_plan_and_explain_bad_ones(gated_runtime):
    rt, req = gated_runtime
    plan = np.tile(np.array([0, -70, 30, 90, 0, 100], np.float32), (5, 1))
    reply = ask(rt, req, link.encode("grasp_query", {"plan": plan}))
    assert reply.kind == "grasp_forecast"
    m = reply.header.meta
    assert 0 <= m["p_success"] <= 1 and m["samples"] == 8 and m["horizon"] == 5
    short = ask(rt, req, link.encode("grasp_query", {"plan": plan[:2]}))
    assert short.kind == "error" and "plan has 2 rows (5..1000)" in short.header.meta["error"]
    no_aim = ask(rt, req, link.encode("grasp_query"))
    assert no_aim.kind == "error" and "no aim yet" in no_aim.header.meta["error"]
    nan_plan = plan.copy()
    nan_plan[0, 0] = np.nan
    bad = ask(rt, req, link.encode("grasp_query", {"plan": nan_plan}))
    assert bad.kind == "error"


def test_a_flood_of_grasp_queries_runs_at_most_one_forecast_per_interval(gated_runtime):
    """Issue 9, finding 2: 300 grasp queries dropped the loop to 17 Hz (each forecast ran in
    the tick). Now forecasts run on the gate's worker, one per grasp_query_interval_s (0.2 s);
    the rest are answered "busy" at once, and every request gets an answer."""
    rt, _ = gated_runtime
    plan = np.tile(np.array([0, -70, 30, 90, 0, 100], np.float32), (5, 1))
    dealer = rt.ctx.connect(zmq.DEALER, rt.job.link.query, hwm=1000)
    for _ in range(60):
        dealer.send_multipart([b"", *link.encode("grasp_query", {"plan": plan})])
    kinds, k = [], 0
    t0 = rt.attempt.t_start
    deadline = time.monotonic() + 30
    while len(kinds) < 60 and time.monotonic() < deadline:
        rt.tick(k, t0 + k * rt.period)  # stepped: 20 ms of runtime clock per tick
        k += 1
        time.sleep(0.002)
        while dealer.poll(0):
            kinds.append(link.decode(dealer.recv_multipart()[1:]).kind)
    assert len(kinds) == 60
    forecasts = kinds.count("grasp_forecast")
    assert forecasts <= k * rt.period / 0.2 + 1
    assert forecasts >= 1 and kinds.count("error") == 60 - forecasts
    assert rt.rejections.get("busy") == 60 - forecasts


def test_the_ece_of_a_calibrated_forecast_by_chance_shrinks_with_more_decisions():
    """`ece_if_calibrated`: what a perfectly calibrated forecast scores by chance, so a user can
    tell a miscalibrated model from a small test set."""
    from world_model.grasp import ece_if_calibrated, reliability

    rng = np.random.default_rng(1)
    small, large = rng.random(300), rng.random(3000)
    median_small, p95_small = ece_if_calibrated(small, draws=300)
    median_large, _ = ece_if_calibrated(large, draws=100)
    assert 0.02 < median_small < p95_small < 0.12
    assert median_large < median_small / 2  # ~1/sqrt(n)
    # a forecast that says 0.9 where 0.6 happens is far outside the chance band
    p = np.full(300, 0.9)
    y = (rng.random(300) < 0.6).astype(float)
    assert reliability(p, y)[0] > ece_if_calibrated(p, draws=300)[1] + 0.2
    assert np.isnan(ece_if_calibrated(np.array([]))[0])
