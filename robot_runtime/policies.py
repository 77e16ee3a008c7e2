"""One builder for the policies the fast loop runs, so `kiwi sim`, `kiwi run`, the lockstep
evaluations, `kiwi grasp-check` and the benchmarks all get the same policy from the same config.

- ``grasp``: the grasp state machine on the latent (``controllers.GraspPolicy``), gated by the
  success predictor when the model file has a success head and ``gate.enabled`` is set (with
  ``job.gate.retries`` back-offs, ``job.gate.threshold``, ``job.gate.samples`` rollouts);
- ``chunk``: a VLA's action chunks (``chunk_modes.ChunkPolicy``), executed as
  ``runtime.chunk_mode`` says (latest, blend, latent).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .chunk_modes import ChunkPolicy
from .config import GraspJob
from .control import Policy
from .controllers import GraspController, GraspPolicy

KINDS = ("grasp", "chunk")


@dataclass
class Built:
    policy: Policy
    gate: object | None = None  # gate.GraspGate, when the grasp is gated
    predictor: object | None = None  # world_model.grasp.GraspPredictor behind the gate
    note: str = ""  # what a person should know (e.g. "not gated: no success head")


def build_policy(
    job: GraspJob,
    kind: str = "grasp",
    checkpoint: str | None = None,
    *,
    gated: bool | None = None,
    background: bool = True,
    threshold: float | None = None,
    samples: int | None = None,
    max_retries: int | None = None,
    aim_offset_m: tuple[float, float] = (0.0, 0.0),
    on_decision: Callable | None = None,
    predictor=None,
) -> Built:
    """The configured policy. ``gated`` None: gated when the model file (``checkpoint``, by
    default ``job.runtime.checkpoint``) has a success head and ``job.gate.enabled``; True: a
    model without a head is an error; False: never. ``background``: forecasts on a worker
    thread (the realtime runtime); lockstep runs pass False so results do not depend on
    timing. ``on_decision(decision, belief)`` observes every gate decision. ``predictor``: a
    GraspPredictor already loaded (evaluations), instead of the checkpoint's."""
    if kind not in KINDS:
        raise ValueError(f"policy kind must be one of {KINDS}, got {kind!r}")
    if kind == "chunk":
        r = job.runtime
        chunks = ChunkPolicy(
            1.0 / r.rate_hz, r.chunk_mode, r.chunk, max_step_deg=job.safety.max_step_deg
        )
        return Built(chunks)
    controller = GraspController(
        job.controller,
        max_retries=job.gate.retries if max_retries is None else max_retries,
        aim=job.controller.aim,
        aim_offset_m=aim_offset_m,
    )
    want_gate = job.gate.enabled if gated is None else gated
    if not want_gate:
        return Built(GraspPolicy(controller, max_belief_age_s=job.gate.max_belief_age_s))
    from .gate import GraspGate

    if predictor is None:
        from world_model.checkpoint import load_tensors
        from world_model.grasp import load_grasp_predictor

        from .assets import resolve

        path = resolve(checkpoint or job.runtime.checkpoint)
        groups, _ = load_tensors(path)
        if "success_head" not in groups:
            if gated:
                raise ValueError(
                    f"{path.name} has no success head to gate with (`kiwi train grasp`)"
                )
            return Built(
                GraspPolicy(controller, max_belief_age_s=job.gate.max_belief_age_s),
                note=f"{path.name} has no success head: grasps are not gated (`kiwi train grasp`)",
            )
        _, predictor, _, _ = load_grasp_predictor(path, samples or job.gate.samples)
    gate = GraspGate(
        predictor,
        job.controller,
        job.runtime.rate_hz,
        job.gate.threshold if threshold is None else threshold,
        background=background,
    )
    if on_decision is not None:
        gate.on_decision.append(on_decision)
    policy = GraspPolicy(controller, gate, max_belief_age_s=job.gate.max_belief_age_s)
    return Built(policy, gate, predictor)
