"""The runtime: the fast loop on the world model's latent, corrected by the slow process.

Per tick: swap in finished corrections; drain the observation socket (keep-newest) into the
estimator; read the joints; let the controller choose targets from the latent; pass them through
safety (limits, step clamp, staleness watchdog); write them to the arm; advance the latent with
the prior and the action sent; answer queries; publish telemetry. A malformed message is counted
and dropped; the loop never waits for the slow process.

Run: ``python -m robot_runtime.service --config configs/sim_grasp.yaml`` (what `kiwi sim`
starts), or through ``kiwi run`` on a real arm.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from drivers.arm import LEROBOT_JOINTS

from . import link
from .config import GraspJob
from .controllers import GraspController, GraspPolicy
from .estimator import LatentEstimator
from .loop import FastLoop, LoopStats
from .safety import SafetyConfig, Watchdog, safe_targets


class RemoteSimArm:
    """The simulated world's arm over ZeroMQ (same interface as drivers.arm.Arm): targets go
    out on the command socket, joints come back on the state socket."""

    joint_names = LEROBOT_JOINTS

    def __init__(self, ctx: link.Context, job: GraspJob):
        import zmq

        from sim.kiwi_grasp import ACTION_HIGH, ACTION_LOW

        self.commands = ctx.connect(zmq.PUSH, job.link.command, hwm=16)
        self.state = ctx.connect(zmq.SUB, job.link.sim_state, hwm=64)
        self.state.setsockopt(zmq.SUBSCRIBE, b"")
        self._limits = np.stack([ACTION_LOW, ACTION_HIGH], 1).astype(float)
        self.joints: np.ndarray | None = None
        self.truth: link.Message | None = None
        self.counter: dict = {}

    @property
    def limits(self) -> np.ndarray:
        return self._limits

    def connect(self) -> None:
        pass

    def reset(self, seed: int, timeout_s: float = 5.0) -> np.ndarray:
        """Starts an episode in the simulated world; returns its first joint state."""
        self.joints, deadline = None, time.monotonic() + timeout_s
        self.commands.send_multipart(link.encode("reset", meta={"seed": seed}))
        while time.monotonic() < deadline:
            self._drain()
            if self.joints is not None:
                return self.joints
            time.sleep(0.005)
        raise TimeoutError("the simulated world did not answer a reset (is it running?)")

    def _drain(self) -> None:
        for msg in link.drain(self.state, self.counter, max_messages=256):
            if msg.kind == "sim_state":
                self.joints = np.asarray(msg.arrays["state"], float)
            elif msg.kind == "truth":
                self.truth = msg

    def read_joints(self) -> np.ndarray:
        self._drain()
        return self.joints.copy()

    def write_targets(self, targets: np.ndarray) -> None:
        import zmq

        self.commands.send_multipart(
            link.encode("targets", {"targets": np.asarray(targets, np.float64)}), flags=zmq.NOBLOCK
        )

    def disconnect(self, torque_off: bool = True) -> None:
        self.commands.close(0)
        self.state.close(0)


@dataclass
class Attempt:
    seed: int
    t_start: float
    t_first_obs: float | None = None
    phases: list = field(default_factory=list)


class Runtime:
    """One fast loop: estimator + grasp controller + safety + link, on any Arm."""

    def __init__(
        self,
        job: GraspJob,
        wm,
        arm,
        clock=time.monotonic,
        ctx: link.Context | None = None,
        bind_sockets: bool = True,
        policy=None,
    ):
        import zmq

        self.job, self.wm, self.arm, self.clock = job, wm, arm, clock
        self.period = 1.0 / job.runtime.rate_hz
        self.estimator = LatentEstimator(
            wm, self.period, job.runtime.buffer_ticks, job.runtime.mode, job.runtime.seed
        )
        s = job.safety
        self.safety = SafetyConfig(s.max_step_deg, s.slow_after_s, s.hold_after_s, s.slow_factor)
        self.policy = policy or GraspPolicy(GraspController(job.controller, aim=job.controller.aim))
        self.ctx = ctx or link.Context()
        self.obs_sock = self.query_sock = self.telemetry_sock = None
        if bind_sockets:
            curve = None
            if job.link.curve_secret:
                from pathlib import Path

                curve = link.CurveKeys(
                    Path(job.link.curve_secret),
                    Path(job.link.curve_clients) if job.link.curve_clients else None,
                )
            self.obs_sock = self.ctx.bind(zmq.PULL, job.link.obs, curve, hwm=8)
            self.query_sock = self.ctx.bind(zmq.REP, job.link.query, curve, hwm=8)
            self.telemetry_sock = self.ctx.bind(zmq.PUB, job.link.telemetry, curve, hwm=64)
        self.counter: dict = {"rejected": 0}
        self.loop: FastLoop | None = None
        self.watchdog: Watchdog | None = None
        self.command: np.ndarray | None = None
        self.attempt: Attempt | None = None
        self.events_sent = 0
        self.telemetry_every = max(1, int(round(job.runtime.rate_hz / job.runtime.telemetry_hz)))
        self.seq = 0

    # --- an attempt -------------------------------------------------------------------------
    def start_attempt(self, seed: int, joints: np.ndarray) -> None:
        t = self.clock()
        self.estimator.reset(t)
        self.watchdog = Watchdog(self.safety, t)
        self.command = np.asarray(joints, float).copy()
        self.attempt = Attempt(seed, t)
        self.policy.reset(t)
        self.events_sent = 0
        self.publish("event", {}, {"event": "attempt_start", "seed": seed})

    def tick(self, k: int, t: float) -> None:
        est = self.estimator
        est.poll()
        if self.obs_sock is not None:
            for msg in link.drain(self.obs_sock, self.counter):
                self.observe(msg, t)
        self.answer_queries()
        joints = self.arm.read_joints()
        targets = self.policy.act(t, k, joints, est)
        if targets is None:  # nothing to do yet: hold
            targets = self.command if self.command is not None else joints
        mode, changed = self.watchdog.update(t)
        if changed is not None:
            self.publish("event", {}, {"event": "watchdog", "mode": mode, "was": changed})
        previous = self.command if self.command is not None else joints
        safe = safe_targets(
            np.asarray(targets, float), previous, self.arm.limits, mode, self.safety
        )
        self.arm.write_targets(safe)
        self.command = safe
        action = self.wm.normalize_action(torch.as_tensor(safe, dtype=torch.float32)[None])
        est.predict(action, t + self.period)
        self.flush_events()
        if k % self.telemetry_every == 0:
            self.publish_telemetry(t, joints, mode)

    def observe(self, msg: link.Message, t: float) -> None:
        """A message from the slow process: an observation for the estimator (checked)."""
        if msg.kind != "obs":
            self.counter["rejected"] += 1
            self.counter["last_error"] = f"unexpected message kind {msg.kind!r} on obs"
            return
        if "actions" in msg.arrays:
            actions = msg.arrays["actions"]
            if (
                actions.ndim != 2
                or actions.shape[1] != len(self.arm.joint_names)
                or not np.all(np.isfinite(actions))
            ):
                self.counter["rejected"] += 1
                self.counter["last_error"] = f"action chunk of shape {actions.shape} is wrong"
                return
            self.policy.on_observation(msg, t)
            self.watchdog.observed(t)
        obs = {k: msg.arrays.get(k) for k in self.wm.obs_keys}
        if all(v is None for v in obs.values()) and "actions" in msg.arrays:
            return  # a chunk without an observation
        bad = [
            k
            for k, v in obs.items()
            if v is None or v.shape != (self.wm.spec.vector_dims[k],) or not np.all(np.isfinite(v))
        ]
        if bad:
            self.counter["rejected"] += 1
            self.counter["last_error"] = f"observation fields {bad} missing or wrong"
            return
        result = self.estimator.correct(obs, msg.header.t_capture)
        if not result.startswith("dropped"):
            self.watchdog.observed(t)
            if self.attempt is not None and self.attempt.t_first_obs is None:
                self.attempt.t_first_obs = t

    # --- the outside ------------------------------------------------------------------------
    def answer_queries(self) -> None:
        import zmq

        if self.query_sock is None:
            return
        for _ in range(4):
            try:
                frames = self.query_sock.recv_multipart(flags=zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                msg = link.decode(frames)
                reply = self.query(msg)
            except link.MessageError as e:
                self.counter["rejected"] += 1
                reply = link.encode("error", meta={"error": str(e)})
            self.query_sock.send_multipart(reply)

    def query(self, msg: link.Message) -> list[bytes]:
        if msg.kind == "clock":
            return link.encode("clock", t_capture=self.clock(), meta={"t": self.clock()})
        if msg.kind == "status":
            return link.encode("status", t_capture=self.clock(), meta=self.status())
        if msg.kind == "grasp_query":
            return self.grasp_query(msg)
        raise link.MessageError(f"unknown query kind {msg.kind!r} (status, clock, grasp_query)")

    def grasp_query(self, msg: link.Message) -> list[bytes]:
        """P(success) of a commit plan from the current belief: the message's ``plan`` array
        ``[H, 6]`` (degrees, gripper 0..100), or the controller's own plan for its current aim."""
        gate = getattr(self.policy, "gate", None)
        if gate is None:
            raise link.MessageError(
                "this runtime has no grasp predictor (its model file has no "
                "success head, or the gate is off)"
            )
        gate.estimator = self.estimator
        plan = msg.arrays.get("plan")
        if plan is not None:
            if (
                plan.ndim != 2
                or plan.shape[1] != 6
                or len(plan) < gate.predictor.horizon
                or not np.all(np.isfinite(plan))
            ):
                raise link.MessageError(
                    f"plan must be [H >= {gate.predictor.horizon}, 6] finite "
                    f"numbers, got shape {list(plan.shape)}"
                )
            forecast = gate.predictor.forecast(self.estimator.state, plan)
        else:
            aim = getattr(self.policy.controller, "aim", None)
            if aim is None:
                raise link.MessageError("no plan given and the controller has no aim yet")
            forecast = gate.forecast(aim, self.policy.controller.roll_hint)
        return link.encode(
            "grasp_forecast",
            t_capture=self.clock(),
            meta={
                "p_success": forecast.p_success,
                "spread": forecast.spread,
                "samples": forecast.samples,
                "horizon": forecast.horizon,
                "ms": forecast.ms,
                "phase": self.policy.phase,
                "threshold": gate.threshold,
            },
        )

    def status(self) -> dict:
        stats = self.loop.stats.summary() if self.loop else LoopStats().summary()
        return {
            "loop": stats,
            "estimator": self.estimator.stats.summary(),
            "phase": self.policy.phase,
            "rejected": self.counter.get("rejected", 0),
            "watchdog": self.watchdog.mode(self.clock()) if self.watchdog else None,
        }

    def publish(self, kind: str, arrays: dict, meta: dict, t: float | None = None) -> None:
        import zmq

        if self.telemetry_sock is None:
            return
        self.seq += 1
        try:
            self.telemetry_sock.send_multipart(
                link.encode(
                    kind,
                    arrays,
                    seq=self.seq,
                    t_capture=self.clock() if t is None else t,
                    meta=meta,
                ),
                flags=zmq.NOBLOCK,
            )
        except zmq.Again:
            pass

    def flush_events(self) -> None:
        for event in self.policy.events[self.events_sent :]:
            self.publish(
                "event", {}, {"event": "phase", "phase": event.kind, **event.detail}, event.t
            )
        self.events_sent = len(self.policy.events)

    def publish_telemetry(self, t: float, joints: np.ndarray, mode: str) -> None:
        decoded = self.estimator.decode()
        loop = self.loop.stats if self.loop else None
        jitter = (
            float(np.percentile(np.asarray(loop.jitter_s)[-500:], 99) * 1e6)
            if loop and loop.jitter_s
            else 0.0
        )
        self.publish(
            "telemetry",
            {
                "object_estimate": decoded["object"].astype(np.float32),
                "joints": np.asarray(joints, np.float32),
                "command": np.asarray(self.command, np.float32),
            },
            {
                "phase": self.policy.phase,
                "watchdog": mode,
                "tick": self.estimator.tick,
                "overruns": loop.overruns if loop else 0,
                "jitter_us_p99": jitter,
                "estimator": self.estimator.stats.summary(),
                "rejected": self.counter.get("rejected", 0),
            },
            t,
        )

    # --- running ----------------------------------------------------------------------------
    def run_attempt(self, seed: int, max_s: float) -> str:
        """One grasp attempt on a simulated arm; returns the controller's final phase."""
        joints = self.arm.reset(seed)
        self.start_attempt(seed, joints)
        self.loop = loop = FastLoop(self.job.runtime.rate_hz, self._tick_until_done, self.clock)
        loop.run(duration_s=max_s)
        final = self.policy.phase
        self.publish(
            "event",
            {},
            {
                "event": "attempt_end",
                "seed": seed,
                "phase": final,
                "loop": loop.stats.summary(),
                "estimator": self.estimator.stats.summary(),
            },
        )
        return final

    def _tick_until_done(self, k: int, t: float) -> None:
        self.tick(k, t)
        if self.policy.finished:
            self.loop.stop("finished")

    def hold_on_stop(self) -> None:
        """Safe stop: command where the arm is."""
        if self.command is not None:
            self.arm.write_targets(self.command)

    def close(self) -> None:
        gate = getattr(self.policy, "gate", None)
        if gate is not None and hasattr(gate, "close"):
            gate.close()  # a forecast in flight finishes first
        for sock in (self.obs_sock, self.query_sock, self.telemetry_sock):
            if sock is not None:
                sock.close(0)
        self.ctx.close()


def serve(job: GraspJob, wm, arm, policy, duration_s: float | None = None, ready=None) -> dict:
    """Runs the service on ``arm`` until SIGINT/SIGTERM (or ``duration_s``); the arm is made
    safe on the way out (torque off, or holding, as configured). Returns the loop's stats."""
    from .loop import StopOnSignals

    runtime = Runtime(job, wm, arm, policy=policy)
    arm.connect()
    try:
        runtime.start_attempt(0, arm.read_joints())
        runtime.loop = loop = FastLoop(job.runtime.rate_hz, runtime.tick, runtime.clock)
        if ready is not None:
            ready(runtime)
        with StopOnSignals(loop):
            loop.run(duration_s=duration_s)
        runtime.publish("event", {}, {"event": "done", "reason": loop.stop_reason or "finished"})
        return {
            "loop": loop.stats.summary(),
            "estimator": runtime.estimator.stats.summary(),
            "rejected": runtime.counter.get("rejected", 0),
        }
    finally:
        try:
            arm.disconnect(torque_off=job.runtime.torque_off_on_exit)
        finally:
            runtime.close()


def load_world_model(spec: str):
    """``shipped:NAME`` (robot_runtime/assets) or a path; a clear error when missing."""
    from world_model.model import WorldModel

    from .assets import resolve

    wm, _, _ = WorldModel.load(resolve(spec))
    return wm.eval()


def grasp_policy(job: GraspJob, spec: str, log=print):
    """The grasp policy, gated when the model file has a success head and the gate is on."""
    from world_model.checkpoint import load_tensors

    from .assets import resolve
    from .gate import GraspGate
    from .grasp_training import load_grasp_predictor

    path = resolve(spec)
    groups, meta = load_tensors(path)
    controller = GraspController(
        job.controller, max_retries=job.gate.retries, aim=job.controller.aim
    )
    if not job.gate.enabled or "success_head" not in groups:
        if job.gate.enabled:
            log(f"{path.name} has no success head: grasps are not gated (`kiwi train grasp`)")
        return GraspPolicy(controller), None
    _, predictor, _, _ = load_grasp_predictor(path, job.gate.samples)
    gate = GraspGate(
        predictor, job.controller, job.runtime.rate_hz, job.gate.threshold, background=True
    )
    return GraspPolicy(controller, gate), predictor


def main(argv: list[str] | None = None) -> int:
    """The runtime process of `kiwi sim`: grasp attempts on the simulated world's arm."""
    import argparse
    import signal

    from .config import load_config

    parser = argparse.ArgumentParser(description="the runtime process of `kiwi sim`")
    parser.add_argument("--config", default="sim_grasp")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args(argv)
    job, _ = load_config(args.config, GraspJob, args.overrides)
    torch.set_num_threads(job.runtime.threads)
    wm = load_world_model(job.runtime.checkpoint)
    policy, predictor = grasp_policy(job, job.runtime.checkpoint)
    ctx = link.Context()
    arm = RemoteSimArm(ctx, job)
    runtime = Runtime(job, wm, arm, ctx=ctx, policy=policy)
    stopping = {"reason": None}

    def on_signal(signum, frame):
        stopping["reason"] = signal.Signals(signum).name
        if runtime.loop is not None:
            runtime.loop.stop(stopping["reason"])

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    print("runtime ready", flush=True)
    time.sleep(0.3)  # let subscribers connect before the first events
    try:
        for i in range(job.sim.attempts):
            if stopping["reason"]:
                break
            runtime.run_attempt(job.sim.seed + i, job.sim.episode_s)
    finally:
        runtime.hold_on_stop()
        runtime.publish("event", {}, {"event": "done", "reason": stopping["reason"] or "finished"})
        time.sleep(0.1)
        arm.disconnect()
        runtime.close()
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
