"""The lab's plots for a model that sees cameras: image strips of reality against the model's
reconstructions or dreams, with the joint traces beneath (matplotlib, headless; numpy in)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .evaluate import _pyplot, draw_dream_traces, draw_horizon


def _strip_rows(
    fig, grid, rows: list[tuple[str, np.ndarray]], steps: list[int], marked: set[int]
) -> None:
    """One image per (row, column): ``rows`` are (label, ``[K, H, W, 3]`` floats in [0, 1] or
    uint8); columns are titled with their ``steps``; columns in ``marked`` get a red frame."""
    for r, (label, frames) in enumerate(rows):
        for c, step in enumerate(steps):
            ax = fig.add_subplot(grid[r, c])
            image = frames[c]
            ax.imshow(image if image.dtype == np.uint8 else np.clip(image, 0, 1))
            ax.set_xticks([])
            ax.set_yticks([])
            if c in marked:
                for spine in ax.spines.values():
                    spine.set_color("tab:red")
                    spine.set_linewidth(2.5)
            if r == 0:
                ax.set_title(f"t={step}", fontsize=8)
            if c == 0:
                ax.set_ylabel(label, fontsize=7, rotation=0, ha="right", va="center")


def plot_pixel_reconstruction(
    real: dict[str, np.ndarray],
    recon: dict[str, np.ndarray],
    steps: list[int],
    state_true: np.ndarray,
    state_recon: np.ndarray,
    names: list[str],
    path: Path,
    title: str,
) -> None:
    """``real``/``recon``: camera -> ``[K, H, W, 3]`` at ``steps``; states ``[T, D]``."""
    plt = _pyplot()
    cams = list(real)
    dims = state_true.shape[-1]
    cols = len(steps)
    fig = plt.figure(figsize=(max(9, 1.15 * cols), 1.0 * 2 * len(cams) + 1.0 * dims + 1.2))
    outer = fig.add_gridspec(2, 1, height_ratios=[1.0 * 2 * len(cams), 1.0 * dims], hspace=0.12)
    top = outer[0].subgridspec(2 * len(cams), cols, wspace=0.05, hspace=0.08)
    rows = []
    for cam in cams:
        short = cam.rsplit(".", 1)[-1]
        rows += [(f"{short}\nreal", real[cam]), (f"{short}\nposterior", recon[cam])]
    _strip_rows(fig, top, rows, steps, set())
    bottom = outer[1].subgridspec(dims, 1, hspace=0.15)
    for d in range(dims):
        ax = fig.add_subplot(bottom[d])
        ax.plot(state_true[:, d], color="black", lw=1.4, label="recorded")
        ax.plot(state_recon[:, d], color="tab:orange", lw=1.1, ls="--", label="posterior")
        for s in steps:
            ax.axvline(s, color="0.8", lw=0.6, zorder=0)
        ax.set_ylabel(names[d], fontsize=7)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if d == 0:
            ax.legend(loc="upper right", fontsize=7)
        if d < dims - 1:
            ax.set_xticklabels([])
    ax.set_xlabel("frame")
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def plot_pixel_imagination(
    real: dict[str, np.ndarray],
    dream: dict[str, np.ndarray],
    steps: list[int],
    state_true: np.ndarray,
    state_dream: np.ndarray,
    context: int,
    names: list[str],
    path: Path,
    title: str,
    diverge_at: int | None,
) -> None:
    """``real``/``dream``: camera -> ``[K, H, W, 3]`` at window ``steps``; ``state_true``
    ``[context + H, D]``; ``state_dream`` ``[samples, H, D]`` (imagined after the context).
    ``diverge_at``: the first imagined step (0-based) whose state nMSE passes the threshold."""
    plt = _pyplot()
    cams = list(real)
    dims = state_true.shape[-1]
    cols = len(steps)
    diverged = (
        set()
        if diverge_at is None
        else {c for c, s in enumerate(steps) if s >= context + diverge_at}
    )
    fig = plt.figure(figsize=(max(9, 1.15 * cols), 1.0 * 2 * len(cams) + 1.0 * dims + 1.4))
    outer = fig.add_gridspec(2, 1, height_ratios=[1.0 * 2 * len(cams), 1.0 * dims], hspace=0.12)
    top = outer[0].subgridspec(2 * len(cams), cols, wspace=0.05, hspace=0.08)
    rows = []
    for cam in cams:
        short = cam.rsplit(".", 1)[-1]
        rows += [(f"{short}\nreality", real[cam]), (f"{short}\ndream", dream[cam])]
    _strip_rows(fig, top, rows, steps, diverged)
    bottom = outer[1].subgridspec(dims, 1, hspace=0.15)
    for d in range(dims):
        ax = fig.add_subplot(bottom[d])
        draw_dream_traces(
            ax,
            context,
            state_dream[:, :, d],
            state_true[:, d],
            ("dreamed samples", "dream mean", "reality"),
        )
        if diverge_at is not None:
            ax.axvline(context + diverge_at, color="tab:red", ls=":", lw=1.2, label="diverges")
        ax.set_ylabel(names[d], fontsize=7)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if d == 0:
            ax.legend(loc="upper left", fontsize=6, ncol=5)
        if d < dims - 1:
            ax.set_xticklabels([])
    ax.set_xlabel("step of the window (the prior runs from the end of the shaded context)")
    where = (
        f"diverges at imagined step {diverge_at + 1}" if diverge_at is not None else "stays close"
    )
    fig.suptitle(
        f"{title}\n({where}; first column: the last observed frame and the posterior there; "
        "red frames: after the joints diverge)",
        fontsize=10,
    )
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def plot_pixel_horizon(
    state: tuple[np.ndarray, np.ndarray],
    images: dict[str, tuple[np.ndarray, np.ndarray]],
    marks: tuple[int, ...],
    state_label: str,
    path: Path,
    title: str,
) -> None:
    """Left: state nMSE against horizon beside persistence; right: each camera's pixel MSE."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.4))
    draw_horizon(left, state[0], state[1], marks, f"{state_label}: normalised MSE")
    colors = ["tab:red", "tab:blue", "tab:green", "tab:purple"]
    for i, (cam, (model, persist)) in enumerate(images.items()):
        draw_horizon(
            right,
            model,
            persist,
            marks,
            "pixel MSE (pixels in [0, 1])",
            colors[i % len(colors)],
            cam.rsplit(".", 1)[-1],
            table=False,
        )
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
