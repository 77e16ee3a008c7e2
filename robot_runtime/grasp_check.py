"""`kiwi grasp-check`: the runtime's grasp in lockstep on a held-out cube placement, run to its
decision, and the forecast made there (optionally executed, to see what really happens)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .lockstep import GraspLockstep
from .policies import build_policy


@dataclass
class GraspCheck:
    p_success: float
    spread: float
    ms: float
    samples: int
    horizon: int
    p_no_rollout: float
    estimate_error_mm: float
    executed: dict | None = None  # the lockstep run's outcome, when the grasp was executed


def check_grasp(
    job,
    wm,
    predictor,
    head_now,
    calibration_now,
    condition,
    seed: int,
    offset_m: tuple[float, float] = (0.0, 0.0),
    execute: bool = False,
) -> GraspCheck | None:
    """The first decision's forecast (None when the arm never reached one). ``execute``: the
    grasp then commits whatever the forecast said, and the outcome is reported."""
    found: list[GraspCheck] = []
    cell: list[GraspLockstep] = []

    def record(decision, belief) -> None:
        run = cell[0]
        with torch.no_grad():
            logit = float(head_now(belief.feat())[0])
        guess = run.estimator.decode()["object"]
        truth = run.env.true_object()
        found.append(
            GraspCheck(
                decision.p_success,
                decision.spread,
                decision.ms,
                predictor.samples,
                predictor.horizon,
                float(calibration_now(logit)),
                float(np.linalg.norm(guess[:3] - truth[:3]) * 1e3),
            )
        )

    built = build_policy(
        job,
        "grasp",
        background=False,
        threshold=0.0 if execute else None,  # executing: commit whatever the forecast says
        max_retries=0,
        aim_offset_m=offset_m,
        on_decision=record,
        predictor=predictor,
    )
    run = GraspLockstep(job, wm, condition, seed, built.policy)
    cell.append(run)
    result = run.run(until=None if execute else (lambda: bool(found)))
    if not found:
        return None
    if execute:
        found[0].executed = result
    return found[0]
