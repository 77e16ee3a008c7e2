"""The runtime's I/O shell around the control step (control.py).

Per tick: swap in finished corrections; drain the observation socket within its budget, check
every message (messages.py) and apply the newest observation and chunk; answer queries; run the
control step (read, estimate, policy, safety, write, predict); publish telemetry. A bad message
is counted and dropped; the loop never waits for the slow process. ``serve`` runs it on any arm
(`kiwi run`); robot_runtime/runtime_process.py is the runtime process of `kiwi sim`.
"""

from __future__ import annotations

import math
import time
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

from drivers.errors import BusError

from . import link
from .config import GraspJob
from .control import ControlStep
from .estimator import LatentEstimator
from .gate import commit_plan
from .loop import FastLoop, LoopStats
from .messages import MessageLimits, Rejected, check_observation, check_plan, check_report
from .policies import build_policy
from .safety import BusHealth

TRIM_EVERY_S = 60.0
STATUS_TICKS = 3000


MMAP_THRESHOLD_BYTES = 16 * 1024
M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number


def tune_allocator() -> bool:
    """Blocks of 16 KiB and more from their own mappings (glibc ``mallopt``), returned to the OS
    when freed. With glibc's default (128 KiB, raised as it goes) the tick's mid-sized arrays
    and tensors fragment the heap, and a `kiwi run` grew 3.4 MiB in 29 minutes with its live
    heap flat; with 16 KiB, `kiwi bench soak` stays flat. False where there is no glibc."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
    except (OSError, AttributeError):
        return False


def memory_trimmer():
    """glibc's ``malloc_trim``, or None elsewhere. The allocator keeps memory freed in the
    middle of its heap (the tick's small tensors and arrays fragment it); handing it back once a
    minute keeps a service that runs for days at a flat resident size (`kiwi bench soak`
    measured the creep without it: 3.4 MiB in 29 minutes, with the live heap flat)."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


@dataclass
class Attempt:
    seed: int
    t_start: float
    t_first_obs: float | None = None
    phases: list = field(default_factory=list)


class Runtime:
    """The runtime's I/O shell around one ``ControlStep``: the observation, query and telemetry
    sockets, the attempt's bookkeeping, and the loop's stop when a fault demands it."""

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
        rc = job.runtime
        self.period = 1.0 / rc.rate_hz
        s, f = job.safety, rc.faults
        self.control = ControlStep(
            wm,
            LatentEstimator(wm, self.period, rc.buffer_ticks, rc.mode, rc.seed),
            policy or build_policy(job, "grasp", gated=False).policy,
            arm,
            s,
            BusHealth(f.max_consecutive_failures, f.max_failure_rate, f.window_ticks),
            self.period,
        )
        lim = rc.limits
        self.limits = MessageLimits(
            self.period,
            max_future_s=lim.max_future_s,
            max_age_s=lim.max_age_s,
            max_chunk_rows=lim.max_chunk_rows,
            max_chunk_s=lim.max_chunk_s,
        )
        self.obs_dims = {k: wm.spec.vector_dims[k] for k in wm.obs_keys}
        self.ctx = ctx or link.Context()
        self.obs_sock = self.query_sock = self.telemetry_sock = None
        if bind_sockets:
            curve = link.curve_keys(job.link.curve_secret, job.link.curve_clients)
            self.obs_sock = self.ctx.bind(zmq.PULL, job.link.obs, curve, hwm=8)
            self.query_sock = self.ctx.bind(zmq.REP, job.link.query, curve, hwm=8)
            self.telemetry_sock = self.ctx.bind(zmq.PUB, job.link.telemetry, curve, hwm=64)
        self.counter: dict = {"rejected": 0}  # link.drain's count of undecodable messages
        self.rejections: dict[str, int] = {}  # by reason code, decodable but refused
        self.last_rejection = ""
        self.slow_report: dict = {}  # the slow process's newest counters (``slow_report``)
        self.loop: FastLoop | None = None
        self.attempt: Attempt | None = None
        self.stop_reason: str | None = None
        self.events_sent = 0
        self.telemetry_every = max(1, int(round(rc.rate_hz / rc.telemetry_hz)))
        self.seq = 0
        self._query: Future | None = None  # a grasp forecast for a client, on the gate's worker
        self._t_grasp_query = -math.inf
        self.on_joints = None  # called with (t, joints) every tick (a camera's joints at capture)
        self.recorder = None  # attempt_recording.AttemptRecorder: each tick's joints and command
        self._trim = memory_trimmer()
        self._t_trimmed = -math.inf
        self.trim_ms_max = 0.0

    # the control step's state, read by queries, telemetry and tests
    estimator = property(lambda self: self.control.estimator)
    watchdog = property(lambda self: self.control.watchdog)
    command = property(lambda self: self.control.command)
    joints = property(lambda self: self.control.joints)
    bus_health = property(lambda self: self.control.health)

    @property
    def policy(self):
        return self.control.policy

    @policy.setter
    def policy(self, policy) -> None:
        self.control.policy = policy

    # --- an attempt -------------------------------------------------------------------------
    def start_attempt(self, seed: int, joints: np.ndarray) -> None:
        t = self.clock()
        self.control.start(t, joints)
        self.attempt = Attempt(seed, t)
        if self.recorder is not None:
            self.recorder.begin(seed, t)
        self.events_sent = 0
        self.publish("event", {}, {"event": "attempt_start", "seed": seed})

    def tick(self, k: int, t: float) -> None:
        self.estimator.poll()
        self.receive(t)
        self.answer_queries(t)
        step = self.control(k, t)
        if step.mode_changed_from is not None:
            self.publish(
                "event", {}, {"event": "watchdog", "mode": step.mode, "was": step.mode_changed_from}
            )
        if self.control.fault is not None and self.stop_reason is None:
            self.stop(self.control.fault)
        if self.on_joints is not None:
            self.on_joints(t, step.joints)
        if self.recorder is not None:
            self.recorder.tick(t, step.joints, step.command)
        self.flush_events()
        if k % self.telemetry_every == 0:
            self.publish_telemetry(t, step.joints, step.mode)
        elif t - self._t_trimmed >= TRIM_EVERY_S and self._trim is not None:
            t0 = time.perf_counter()
            self._trim(0)
            self._t_trimmed = t
            self.trim_ms_max = max(self.trim_ms_max, (time.perf_counter() - t0) * 1e3)

    def read_joints(self) -> np.ndarray:
        """The arm's joints through the control step (a failed read: the last good ones)."""
        joints = self.control.read_joints()
        if self.control.fault is not None and self.stop_reason is None:
            self.stop(self.control.fault)
        return joints

    def stop(self, reason: str) -> None:
        """Stops the loop (the caller's ``finally`` makes the arm safe) and says why."""
        self.stop_reason = reason
        self.publish("event", {}, {"event": "fault", "reason": reason})
        if self.loop is not None:
            self.loop.stop(reason)

    # --- the slow process -------------------------------------------------------------------
    def reject(self, reason: str, message: str) -> None:
        self.rejections[reason] = self.rejections.get(reason, 0) + 1
        self.last_rejection = f"{reason}: {message}"[:300]

    def receive(self, t: float) -> None:
        """Reads the observation socket within this tick's budget; every message is checked
        (messages.py) before anything acts on it; of several observations (or chunks) that
        arrived together only the newest is applied (keep-newest)."""
        if self.obs_sock is None:
            return
        lim = self.job.runtime.limits
        messages = link.drain(
            self.obs_sock, self.counter, lim.messages_per_tick, max_bytes=lim.bytes_per_tick
        )
        newest_obs = newest_chunk = None
        for msg in messages:
            try:
                if msg.kind == "slow_report":
                    self.slow_report = {**check_report(msg), "t": msg.header.t_capture}
                    continue
                checked = check_observation(
                    msg, self.obs_dims, len(self.arm.joint_names), t, self.limits
                )
            except Rejected as e:
                self.reject(e.reason, str(e))
                continue
            if checked.chunk is not None and (
                newest_chunk is None or checked.t_capture >= newest_chunk[0]
            ):
                newest_chunk = (checked.t_capture, checked.chunk)
            if checked.obs is not None and (
                newest_obs is None or checked.t_capture >= newest_obs[0]
            ):
                newest_obs = (checked.t_capture, checked.obs)
        if newest_chunk is not None:
            self.control.chunk(newest_chunk[1], t)
        if newest_obs is not None:
            self.apply_observation(newest_obs[1], newest_obs[0], t)

    def observe(self, msg: link.Message, t: float) -> None:
        """One message from the slow process, checked and applied (tests; ``receive`` reads the
        socket)."""
        try:
            checked = check_observation(
                msg, self.obs_dims, len(self.arm.joint_names), t, self.limits
            )
        except Rejected as e:
            self.reject(e.reason, str(e))
            return
        if checked.chunk is not None:
            self.control.chunk(checked.chunk, t)
        if checked.obs is not None:
            self.apply_observation(checked.obs, checked.t_capture, t)

    def apply_observation(self, obs: dict, t_capture: float, t: float) -> None:
        result = self.control.observe(obs, t_capture, t)
        # the raw observation beside the latent's estimate: displays score perception with it
        self.publish("observation", obs, {"result": result, "t_received": t}, t_capture)
        if not result.startswith("dropped"):
            if self.attempt is not None and self.attempt.t_first_obs is None:
                self.attempt.t_first_obs = t

    # --- queries ----------------------------------------------------------------------------
    def answer_queries(self, t: float) -> None:
        """Answers up to ``queries_per_tick`` queries. A grasp forecast (~15 ms) runs on the
        gate's worker and is answered at a later tick (a REP socket takes no new request until
        then); clients asking for more than one per ``grasp_query_interval_s`` get "busy"."""
        import zmq

        if self.query_sock is None:
            return
        if self._query is not None:
            if not self._query.done():
                return
            future, self._query = self._query, None
            try:
                reply = future.result()
            except Exception as e:  # a failed forecast is the client's error, not the loop's
                self.reject("query", f"grasp forecast failed: {e}")
                reply = link.encode("error", meta={"error": f"grasp forecast failed: {e}"})
            self.query_sock.send_multipart(reply)
        for _ in range(self.job.runtime.limits.queries_per_tick):
            try:
                frames = self.query_sock.recv_multipart(flags=zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                msg = link.decode(frames)
                if msg.kind == "grasp_query":
                    self._query = self.start_grasp_query(msg, t)
                    return  # answered when the forecast is done
                reply = self.query(msg)
            except link.MessageError as e:
                self.counter["rejected"] += 1
                self.counter["last_error"] = str(e)
                reply = link.encode("error", meta={"error": str(e)})
            except Rejected as e:
                self.reject(e.reason, str(e))
                reply = link.encode("error", meta={"error": str(e)})
            self.query_sock.send_multipart(reply)

    def query(self, msg: link.Message) -> list[bytes]:
        if msg.kind == "clock":
            return link.encode("clock", t_capture=self.clock(), meta={"t": self.clock()})
        if msg.kind == "status":
            return link.encode("status", t_capture=self.clock(), meta=self.status())
        raise Rejected("kind", f"unknown query kind {msg.kind!r} (status, clock, grasp_query)")

    def start_grasp_query(self, msg: link.Message, t: float) -> Future:
        """P(success) of a commit plan from the current belief: the message's ``plan`` array
        ``[H, 6]`` (degrees, gripper 0..100), or the controller's own plan for its current aim.
        Checked here; forecast on the gate's worker from a copy of the belief."""
        gate = getattr(self.policy, "gate", None)
        if gate is None:
            raise Rejected(
                "query",
                "this runtime has no grasp predictor (its model file has no "
                "success head, or the gate is off)",
            )
        plan = msg.arrays.get("plan")
        if plan is not None:
            plan = check_plan(plan, gate.predictor.horizon, len(self.arm.joint_names))
        else:
            aim = getattr(self.policy.controller, "aim", None)
            if aim is None:
                raise Rejected("query", "no plan given and the controller has no aim yet")
            xy, yaw = aim
            plan = commit_plan(
                xy,
                yaw,
                self.policy.controller.roll_hint,
                gate.config,
                gate.rate_hz,
                gate.predictor.horizon,
            )
        interval = self.job.runtime.limits.grasp_query_interval_s
        if 0 <= t - self._t_grasp_query < interval:
            raise Rejected("busy", f"busy: one grasp forecast per {interval:g} s")
        self._t_grasp_query = t
        belief = type(self.estimator.state)(*(x.clone() for x in self.estimator.state))
        phase, threshold = self.policy.phase, gate.threshold

        def forecast() -> list[bytes]:
            f = gate.predictor.forecast(belief, plan)
            meta = {
                "p_success": f.p_success,
                "spread": f.spread,
                "samples": f.samples,
                "horizon": f.horizon,
                "ms": f.ms,
                "phase": phase,
                "threshold": threshold,
            }
            return link.encode("grasp_forecast", t_capture=self.clock(), meta=meta)

        return gate.submit(forecast)

    def status(self) -> dict:
        # the last ~minute at 50 Hz: answered inside a tick, and twice a second for the live line
        stats = (self.loop.stats if self.loop else LoopStats()).summary(recent=STATUS_TICKS)
        return {
            "loop": stats,
            "estimator": self.estimator.stats.summary(),
            "phase": self.policy.phase,
            "rejected": self.rejected_total(),
            "rejections": self.rejection_counts(),
            "last_rejection": self.last_rejection or self.counter.get("last_error", ""),
            "watchdog": self.watchdog.mode(self.clock()) if self.watchdog else None,
            "bus": self.bus_summary(),
            "stop_reason": self.stop_reason,
            "memory_trim_ms_max": self.trim_ms_max,
            "slow_process": self.slow_report,
        }

    def rejection_counts(self) -> dict[str, int]:
        return {"malformed": self.counter.get("rejected", 0), **self.rejections}

    def rejected_total(self) -> int:
        return sum(self.rejection_counts().values())

    def bus_summary(self) -> dict:
        """The bus's own counters (retries, timeouts, corrupt replies, per servo) and the
        runtime's (cycles that failed after those retries, held ticks)."""
        bus = getattr(self.arm, "bus", None)
        out = {"health": self.bus_health.summary()}
        if bus is not None:
            st = bus.stats
            out.update(
                {
                    k: getattr(st, k)
                    for k in ("cycles", "retries", "timeouts", "corrupt", "failures")
                    if hasattr(st, k)
                }
            )
            per_servo = getattr(st, "per_servo", None)
            if per_servo:
                out["per_servo"] = {str(i): dict(v) for i, v in per_servo.items()}
        return out

    # --- telemetry --------------------------------------------------------------------------
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
            float(np.percentile(loop.jitter_s.last(500), 99) * 1e6)
            if loop and len(loop.jitter_s)
            else 0.0
        )
        arrays = {
            "joints": np.asarray(joints, np.float32),
            "command": np.asarray(self.command, np.float32),
        }
        if "object" in decoded:
            arrays["object_estimate"] = decoded["object"].astype(np.float32)
        self.publish(
            "telemetry",
            arrays,
            {
                "phase": self.policy.phase,
                "watchdog": mode,
                "tick": self.estimator.tick,
                "overruns": loop.overruns if loop else 0,
                "jitter_us_p99": jitter,
                "estimator": self.estimator.stats.summary(),
                "rejected": self.rejected_total(),
                "bus": self.bus_summary(),
            },
            t,
        )

    # --- running ----------------------------------------------------------------------------
    def run_attempt(self, seed: int, max_s: float, stopping=None) -> str:
        """One grasp attempt on a simulated arm; returns the controller's final phase.
        ``stopping()`` (a signal arrived) is checked once the world has reset, so a stop asked
        for between attempts does not start another."""
        joints = self.arm.reset(seed)
        self.loop = loop = FastLoop(self.job.runtime.rate_hz, self._tick_until_done, self.clock)
        if stopping is not None and stopping():
            return "interrupted"
        self.start_attempt(seed, joints)
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
                # a chunk-following policy's chunks: received, taken over, refused by reason
                **chunk_summary(self.policy),
            },
        )
        return final

    def _tick_until_done(self, k: int, t: float) -> None:
        self.tick(k, t)
        if self.policy.finished and self.loop is not None:
            self.loop.stop("finished")

    def hold_on_stop(self) -> None:
        """Safe stop: command where the arm is (if the arm still listens)."""
        if self.command is not None:
            try:
                self.arm.write_targets(self.command)
            except BusError:
                pass

    def close(self) -> None:
        gate = getattr(self.policy, "gate", None)
        if gate is not None and hasattr(gate, "close"):
            gate.close()  # a forecast in flight finishes first
        for sock in (self.obs_sock, self.query_sock, self.telemetry_sock):
            if sock is not None:
                sock.close(0)
        self.ctx.close()


def first_joints(arm, attempts: int) -> np.ndarray:
    """The arm's joints at start, through up to ``attempts`` failed bus cycles."""
    for i in range(attempts):
        try:
            return np.asarray(arm.read_joints(), float)
        except BusError:
            if i == attempts - 1:
                raise
            time.sleep(0.01)
    raise AssertionError("unreachable")


def serve(
    job: GraspJob,
    wm,
    arm,
    policy,
    duration_s: float | None = None,
    ready=None,
    recorder=None,
) -> dict:
    """Runs the service on ``arm`` until SIGINT/SIGTERM (or ``duration_s``, or a fault that
    safety says must stop the arm); the arm is made safe on the way out (torque off, or
    holding, as configured). Returns the run's figures, with ``stop_reason``. ``recorder``
    (attempt_recording.AttemptRecorder) records the attempt as a LeRobot episode, ended when
    the policy finishes or the run stops, labelled by ``gripper_holds`` (no truth here)."""
    from .attempt_recording import gripper_holds
    from .loop import StopOnSignals

    tune_allocator()
    runtime = Runtime(job, wm, arm, policy=policy)
    runtime.recorder = recorder

    def end_recording() -> None:
        if recorder is not None and recorder.recording:
            recorder.end(gripper_holds(runtime.joints, runtime.command), runtime.policy.events)

    def tick(k: int, t: float) -> None:
        runtime.tick(k, t)
        if runtime.policy.finished:
            end_recording()

    arm.connect()
    try:
        runtime.start_attempt(0, first_joints(arm, job.runtime.faults.max_consecutive_failures))
        runtime.loop = loop = FastLoop(job.runtime.rate_hz, tick, runtime.clock)
        if ready is not None:
            ready(runtime)
        with StopOnSignals(loop):
            loop.run(duration_s=duration_s)
        reason = loop.stop_reason or "finished"
        end_recording()
        runtime.publish("event", {}, {"event": "done", "reason": reason})
        return {
            "stop_reason": reason,
            "fault": runtime.stop_reason,
            "decisions": [
                {"t": e.t, **e.detail} for e in runtime.policy.events if e.kind == "decision"
            ],
            "loop": loop.stats.summary(),
            "estimator": runtime.estimator.stats.summary(),
            "phase": runtime.policy.phase,
            "rejected": runtime.rejected_total(),
            "rejections": runtime.rejection_counts(),
            "bus": runtime.bus_summary(),
            "slow_process": runtime.slow_report,
        }
    finally:
        try:
            arm.disconnect(torque_off=job.runtime.torque_off_on_exit)
        except BusError as e:  # the bus is gone: nothing more can reach the motors
            print(f"could not turn torque off: {e}", flush=True)
        finally:
            runtime.close()


def chunk_summary(policy) -> dict:
    """``{"chunks": ...}`` for a policy that follows chunks (``chunk_modes.ChunkPolicy``), else
    nothing."""
    summary = getattr(getattr(policy, "stats", None), "summary", None)
    return {"chunks": summary()} if callable(summary) else {}


def load_world_model(spec: str):
    """``shipped:NAME`` (robot_runtime/assets) or a path; a clear error when missing."""
    from world_model.model import WorldModel

    from .assets import resolve

    wm, _, _ = WorldModel.load(resolve(spec))
    return wm.eval()
