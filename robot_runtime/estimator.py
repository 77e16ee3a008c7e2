"""LatentEstimator: the fast loop's belief, advanced by the prior every tick and corrected by late
observations through the posterior, with the actions taken since the capture replayed.

Every tick k keeps (t_k, s_k, a_k) in a ring buffer. ``correct(obs, t_capture)`` finds the tick j
nearest the capture time, replaces s_j by the posterior q(z | h_j, x) (computed from s_{j-1} and
a_{j-1}), replays a_j .. a_{now-1} through the prior and swaps the result in. Stale, out-of-order,
future and too-old observations are dropped and counted. A replay longer than the tick's budget
runs on a worker thread while the loop goes on; when it is done, the few ticks that passed
meanwhile are replayed and the result swapped in at the next tick (``poll``).

Sampling noise is drawn from a generator reseeded with the tick index, so a replayed tick draws
the same noise it drew the first time: the corrected state equals a from-scratch recomputation
in which the observation had arrived on time (a test checks exactly that).

Modes: ``compensated`` (the above), ``stale`` (the observation is applied at the current tick as
if it were fresh: what a loop without replay does).
"""

from __future__ import annotations

import math
import queue
import threading
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from world_model.model import WorldModel
from world_model.rssm import State

COMPENSATED, STALE = "compensated", "stale"


@dataclass
class Tick:
    index: int
    t: float
    state: State  # belief at this tick, batch of one
    action: torch.Tensor | None = None  # taken at this tick (model units), set by predict
    observed: bool = False  # a posterior was applied at this tick


@dataclass
class EstimatorStats:
    applied: int = 0
    dropped: dict[str, int] = field(
        default_factory=lambda: {"too_old": 0, "out_of_order": 0, "future": 0, "superseded": 0}
    )
    background: int = 0
    last_replay_ticks: int = 0
    last_age_s: float = float("nan")  # capture-to-applied delay of the last correction
    step_s: float = 3e-4  # running estimate of one prior step's cost

    def summary(self) -> dict:
        return {
            "applied": self.applied,
            **{f"dropped_{k}": v for k, v in self.dropped.items()},
            "background": self.background,
            "last_replay_ticks": self.last_replay_ticks,
            "last_age_ms": self.last_age_s * 1e3,
            "step_us": self.step_s * 1e6,
        }


@dataclass
class _Job:
    """A correction's inputs, copied in the loop's thread so a worker never reads the ring."""

    base: int  # the corrected tick
    obs: dict[str, np.ndarray]
    prev_state: State | None  # belief at base-1 (None: base is the episode's first tick)
    prev_action: torch.Tensor | None
    actions: list[torch.Tensor]  # taken at ticks base .. base+len-1
    t_capture: float = 0.0
    states: list[State] | None = None  # corrected beliefs for ticks base .. base+len(actions)
    done: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None


class _Worker:
    """One daemon thread running submitted calls in order (a daemon: a robot's service must
    be able to exit with a replay in flight; the loop waits for it in ``reset``)."""

    def __init__(self):
        self._calls: queue.SimpleQueue = queue.SimpleQueue()
        threading.Thread(target=self._serve, daemon=True, name="estimator-replay").start()

    def submit(self, fn, *args) -> None:
        self._calls.put((fn, args))

    def _serve(self) -> None:
        while True:
            fn, args = self._calls.get()
            fn(*args)


class LatentEstimator:
    def __init__(
        self,
        wm: WorldModel,
        period_s: float,
        buffer_ticks: int = 256,
        mode: str = COMPENSATED,
        seed: int = 0,
        budget_s: float | None = None,
    ):
        if mode not in (COMPENSATED, STALE):
            raise ValueError(f"mode must be {COMPENSATED} or {STALE}, got {mode!r}")
        self.wm, self.period_s, self.mode = wm.eval(), period_s, mode
        self.capacity = buffer_ticks
        self.seed = seed
        self.budget_s = 0.5 * period_s if budget_s is None else budget_s
        self.stats = EstimatorStats()
        self._gen = torch.Generator()
        self._job: _Job | None = None
        self._pending: tuple[dict, float] | None = None
        self.ring: list[Tick] = []
        # Long replays run on one thread of their own, made once: a thread per replay would
        # give the allocator a new arena now and then, and resident memory would creep.
        self._worker: _Worker | None = None
        self._worker_gen = torch.Generator()  # drawn from only on the worker (reseeded per tick)
        self.t_episode = -math.inf
        self.last_observed_index = -1

    # --- bookkeeping ------------------------------------------------------------------------
    def reset(self, t: float) -> None:
        """Starts a new episode at time ``t`` from the model's initial state, with counters of
        its own: nothing of the episode before (beliefs, a queued observation, statistics)
        carries over."""
        self._wait_job()
        with torch.no_grad():
            self.ring = [Tick(0, t, self.wm.initial(1))]
        self.t_episode = t
        self.last_observed_index = -1
        self._pending = None
        self.stats = EstimatorStats(step_s=self.stats.step_s)  # the step's cost carries over

    def _action_at(self, index: int) -> torch.Tensor:
        """The action taken at a tick inside the ring (one that has been predicted past)."""
        tick = self._at(index)
        assert tick is not None and tick.action is not None, f"no action at tick {index}"
        return tick.action

    @property
    def state(self) -> State:
        return self.ring[-1].state

    @property
    def tick(self) -> int:
        return self.ring[-1].index

    def state_at(self, t: float) -> State | None:
        """The belief at the tick nearest ``t`` (as corrected so far), or None when that tick
        has left the ring or is still ahead."""
        now = self.ring[-1]
        tick = self._at(now.index - int(round((now.t - t) / self.period_s)))
        return None if tick is None else tick.state

    def _at(self, index: int) -> Tick | None:
        pos = index - self.ring[0].index
        return self.ring[pos] if 0 <= pos < len(self.ring) else None

    def _generator(self, index: int, gen: torch.Generator | None = None) -> torch.Generator:
        """The noise of tick ``index``: the same whenever that tick is (re)computed."""
        return (gen or self._gen).manual_seed(self.seed * 1_000_003 + index)

    # --- the two operations -----------------------------------------------------------------
    @torch.no_grad()
    def predict(self, action: torch.Tensor, t_next: float) -> State:
        """Records ``action`` (model units, ``[1, A]``) as taken at the current tick and advances
        the belief to the next tick, at time ``t_next``, with the prior."""
        current = self.ring[-1]
        current.action = action
        start = time.perf_counter()
        nxt = self.wm.img_step(current.state, action, self._generator(current.index + 1))
        self.stats.step_s = 0.95 * self.stats.step_s + 0.05 * (time.perf_counter() - start)
        self.ring.append(Tick(current.index + 1, t_next, nxt))
        if len(self.ring) > self.capacity:
            del self.ring[: len(self.ring) - self.capacity]
        return nxt

    def correct(self, obs: dict[str, np.ndarray], t_capture: float) -> str:
        """Applies (or schedules, or drops) an observation. Returns what happened: ``applied``,
        ``scheduled``, ``queued``, or ``dropped_<reason>``."""
        now = self.ring[-1]
        if t_capture > now.t + 0.5 * self.period_s:
            return self._drop("future")
        if t_capture < self.t_episode - 0.5 * self.period_s:
            return self._drop("too_old")  # captured before this episode began
        if self.mode == STALE:
            return self._apply_now(obs, t_capture)
        index = now.index - int(round((now.t - t_capture) / self.period_s))
        if index <= self.last_observed_index:
            return self._drop("out_of_order")
        first = self.ring[0]
        if index < first.index + (0 if first.index == 0 else 1):
            return self._drop("too_old")  # need the tick before it, unless it is the very first
        if self._job is not None and not self._job.done.is_set():
            if self._pending is not None:
                self.stats.dropped["superseded"] += 1
            self._pending = (obs, t_capture)  # keep-newest while a replay runs
            return "queued"
        prev = self._at(index - 1)
        job = _Job(
            index,
            obs,
            prev.state if prev else None,
            prev.action if prev else None,
            [self._action_at(i) for i in range(index, now.index)],
            t_capture,
        )
        self.last_observed_index = index
        if len(job.actions) * self.stats.step_s <= self.budget_s:
            self._run_job(job, self._gen)
            self._swap(job)
            return "applied"
        self._job = job
        self.stats.background += 1
        if self._worker is None:
            self._worker = _Worker()
        self._worker.submit(self._run_job, job, self._worker_gen)
        return "scheduled"

    def poll(self) -> bool:
        """Swaps in a finished background correction (catching up the ticks that passed) and
        starts a queued one. Call once per tick, before acting. Returns True on a swap."""
        job = self._job
        if job is None or not job.done.is_set():
            return False
        self._job = None
        if job.error is not None:
            raise job.error
        self._swap(job)
        if self._pending is not None:
            obs, t_capture = self._pending
            self._pending = None
            self.correct(obs, t_capture)
        return True

    # --- internals --------------------------------------------------------------------------
    def _drop(self, reason: str) -> str:
        self.stats.dropped[reason] += 1
        return f"dropped_{reason}"

    def _obs_tensors(self, obs: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        out = {}
        for k in self.wm.obs_keys:
            a = np.asarray(obs[k])
            t = torch.tensor(a)[None]  # a copy: message buffers are read-only
            out[k] = t if a.dtype == np.uint8 else t.float()
        return out

    @torch.no_grad()
    def _posterior(
        self,
        index: int,
        obs: dict[str, np.ndarray],
        prev_state: State | None,
        prev_action: torch.Tensor | None,
        gen: torch.Generator,
    ) -> State:
        obs_t = self._obs_tensors(obs)
        gen = self._generator(index, gen)
        if prev_state is None:  # the episode's first tick: from the initial state
            first = torch.ones(1, dtype=torch.bool)
            post, _ = self.wm.obs_step(
                self.wm.initial(1), torch.zeros(1, self.wm.spec.action_dim), obs_t, first, gen
            )
        else:
            assert prev_action is not None, "a tick with a state has the action taken there"
            post, _ = self.wm.obs_step(prev_state, prev_action, obs_t, None, gen)
        return post

    @torch.no_grad()
    def _run_job(self, job: _Job, gen: torch.Generator) -> None:
        """Posterior at ``job.base``, then the prior through the job's actions."""
        try:
            state = self._posterior(job.base, job.obs, job.prev_state, job.prev_action, gen)
            states = [state]
            for k, action in enumerate(job.actions):
                state = self.wm.img_step(state, action, self._generator(job.base + k + 1, gen))
                states.append(state)
            job.states = states
        except BaseException as e:  # surfaced by poll() in the loop's thread
            job.error = e
        finally:
            job.done.set()

    @torch.no_grad()
    def _swap(self, job: _Job) -> None:
        """Catches up from the job's last tick to now, then replaces the ring's beliefs."""
        states = job.states
        assert states is not None, "swapping a job that has not run"
        last = job.base + len(states) - 1
        state = states[-1]
        now = self.ring[-1].index
        for index in range(last, now):
            state = self.wm.img_step(state, self._action_at(index), self._generator(index + 1))
            states.append(state)
        for offset, s in enumerate(states):
            tick = self._at(job.base + offset)
            if tick is not None:
                tick.state = s
        observed = self._at(job.base)
        if observed is not None:
            observed.observed = True
        self.stats.applied += 1
        self.stats.last_replay_ticks = now - job.base
        self.stats.last_age_s = self.ring[-1].t - job.t_capture

    def _apply_now(self, obs: dict[str, np.ndarray], t_capture: float) -> str:
        now = self.ring[-1]
        prev = self._at(now.index - 1)
        now.state = self._posterior(
            now.index, obs, prev.state if prev else None, prev.action if prev else None, self._gen
        )
        now.observed = True
        self.last_observed_index = now.index
        self.stats.applied += 1
        self.stats.last_replay_ticks = 0
        self.stats.last_age_s = now.t - t_capture
        return "applied"

    def _wait_job(self) -> None:
        if self._job is not None:
            self._job.done.wait(timeout=5.0)
            self._job = None

    @torch.no_grad()
    def decode(self) -> dict[str, np.ndarray]:
        """The belief decoded into observation units (batch dimension removed)."""
        return {k: v[0].numpy() for k, v in self.wm.decode(self.state).items()}
