"""`kiwi bench train`: the world model's full training update, per thread count and device,
eager and compiled, for the reference vector config and a pixel config.

A full update is what `kiwi train world-model` runs per step: the posterior over the sequence,
the KL balancing, reconstruction, reward and continue losses, backward, gradient clipping and
Adam, at batch 16 x 64. Reference: deter 256, hidden 256, 32 x 32 stoch, 6-dim action, 16-dim
vector observation (MLP encoder/decoder/heads 2 x 256). Pixel: the same with one 64x64x3
image instead of the vector (CNN depth 32).

With ``--against PATH`` (a checkout of NM512/dreamerv3-torch), their update, batch-1 prior
step and K=256 x H=16 rollout are timed at the same sizes in the same run, interleaved with
ours repetition by repetition, so a machine whose load changes moves both sides alike; the
ratios are the figures to read.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from world_model.config import ModelConfig, ModelSpec, TrainConfig
from world_model.model import WorldModel
from world_model.train import WorldModelTrainer

from ..textui import format_table
from .common import machine, write_json
from .world_model import REFERENCE, SPEC, gemm_gflops, step_flops

PIXEL = ModelConfig(
    deter=256,
    hidden=256,
    stoch=32,
    classes=32,
    units=256,
    layers=2,
    cnn_keys=("image",),
    cnn_depth=32,
)
PIXEL_SPEC = ModelSpec(vector_dims={}, image_keys=("image",), action_dim=6)
CONFIGS = {"reference": (REFERENCE, SPEC), "pixel": (PIXEL, PIXEL_SPEC)}
BATCH, LENGTH = 16, 64


def make_batch(spec: ModelSpec, device: torch.device, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    b, t = BATCH, LENGTH
    batch = {
        "action": torch.rand(b, t, spec.action_dim, generator=gen) * 2 - 1,
        "reward": torch.randn(b, t, generator=gen),
        "is_first": torch.zeros(b, t, dtype=torch.bool),
        "is_terminal": torch.zeros(b, t, dtype=torch.bool),
    }
    for key, dim in spec.vector_dims.items():
        batch[key] = torch.randn(b, t, dim, generator=gen)
    for key in spec.image_keys:
        batch[key] = torch.randint(0, 256, (b, t, 64, 64, 3), generator=gen, dtype=torch.uint8)
    return {k: v.to(device) for k, v in batch.items()}


def timed(fn: Callable[[], object], sync: Callable[[], None]) -> float:
    t = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t


def synchronizer(device: torch.device) -> Callable[[], None]:
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


class OurUpdate:
    """Our trainer on one config; ``stepwise`` runs the plain step loop instead of the fused
    sequence (the update as it was before; same losses)."""

    def __init__(
        self,
        name: str,
        device: torch.device,
        compiled: bool = False,
        stepwise: bool = False,
        dtype: torch.dtype | None = None,
    ):
        cfg, spec = CONFIGS[name]
        torch.manual_seed(0)
        self.wm = WorldModel(cfg, spec)
        self.wm.rssm.fused_observe = not stepwise
        self.trainer = WorldModelTrainer(
            self.wm, TrainConfig(), device=device, autocast_dtype=dtype, compile=compiled
        )
        self.batch = make_batch(spec, device)
        self.gen = torch.Generator(device).manual_seed(0)
        self.sync = synchronizer(device)
        self.first_s = timed(self.run, self.sync)  # compiles, when compiled

    def run(self) -> None:
        self.trainer.update_tensors(self.batch, self.gen)


def median_ms(samples_s: list[float]) -> float:
    return float(np.median(samples_s) * 1e3)


def interleaved(fns: dict[str, Callable[[], None]], repeats: int, sync) -> dict[str, float]:
    """Median ms of each function, timed in turn within every repetition (after one warm-up)."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for key, fn in fns.items():
            times[key].append(timed(fn, sync))
    return {k: median_ms(v) for k, v in times.items()}


def measure_config(
    name: str, device: torch.device, threads: list[int], repeats: int, compile_too: bool, log
) -> dict:
    """{threads: {update_ms, update_ms_stepwise, update_ms_compiled, ...}} for one config."""
    out: dict = {}
    eager, stepwise = OurUpdate(name, device), OurUpdate(name, device, stepwise=True)
    compiled = None
    if compile_too:
        log(f"{name}: compiling the update (torch.compile; the first call compiles)")
        try:
            compiled = OurUpdate(name, device, compiled=True)
        except Exception as e:  # inductor needs a C++ compiler; report, do not die
            log(f"{name}: torch.compile failed: {' '.join(str(e).split())[:200]}")
            out["compile_error"] = " ".join(str(e).split())[:500]
    for n in threads:
        torch.set_num_threads(n)
        fns = {"update_ms": eager.run, "update_ms_stepwise": stepwise.run}
        if compiled is not None:
            fns["update_ms_compiled"] = compiled.run
        figures: dict = interleaved(fns, repeats, eager.sync)
        figures["updates_per_s"] = 1e3 / figures["update_ms"]
        if compiled is not None:
            figures["updates_per_s_compiled"] = 1e3 / figures["update_ms_compiled"]
            figures["compile_s"] = compiled.first_s
        out[str(n) if device.type == "cpu" else device.type] = figures
        log(f"{name}, {n} thread(s): " + ", ".join(f"{k} {v:.1f}" for k, v in figures.items()))
        if device.type != "cpu":
            break
    return out


def measure_against(path: str, names: list[str], threads: list[int], repeats: int, log) -> dict:
    """Ours beside dreamerv3-torch's at each thread count, interleaved, with a GEMM rate."""
    from .dreamerv3_torch import TheirWorldModel
    from .world_model import time_prior_step, time_rollout

    cpu = torch.device("cpu")
    out: dict = {}
    for name in names:
        ours = OurUpdate(name, cpu)
        theirs = TheirWorldModel(Path(path), pixel=name == "pixel")
        data = theirs.batch()
        step, rollout = theirs.prior_step_fn(), theirs.rollout_fn(256, 16)
        for n in threads:
            torch.set_num_threads(n)
            fig = interleaved(
                {"update_ms": ours.run, "theirs_update_ms": functools.partial(theirs.update, data)},
                repeats,
                ours.sync,
            )
            fig["update_speedup"] = fig["theirs_update_ms"] / fig["update_ms"]
            if name == "reference":
                wm = ours.wm.eval()
                for _ in range(3):
                    fig["gemm_gflops"] = max(fig.get("gemm_gflops", 0.0), gemm_gflops())
                    p50, _ = time_prior_step(wm, 2000)
                    fig["prior_step_us"] = min(fig.get("prior_step_us", np.inf), p50)
                    fig["theirs_prior_step_us"] = min(
                        fig.get("theirs_prior_step_us", np.inf), _step_us(step, 1000)
                    )
                    fig["rollout_k256_h16_ms"] = min(
                        fig.get("rollout_k256_h16_ms", np.inf), time_rollout(wm, 256, 16, 3)
                    )
                    fig["theirs_rollout_k256_h16_ms"] = min(
                        fig.get("theirs_rollout_k256_h16_ms", np.inf),
                        median_ms([timed(rollout, ours.sync) for _ in range(3)]),
                    )
                wm.train()
                flops = step_flops(REFERENCE, SPEC.action_dim) * 256 * 16
                fig["rollout_gflops"] = flops / (fig["rollout_k256_h16_ms"] / 1e3) / 1e9
                fig["rollout_share_of_gemm"] = fig["rollout_gflops"] / fig["gemm_gflops"]
                fig["prior_step_speedup"] = fig["theirs_prior_step_us"] / fig["prior_step_us"]
                fig["rollout_speedup"] = (
                    fig["theirs_rollout_k256_h16_ms"] / fig["rollout_k256_h16_ms"]
                )
            out.setdefault(name, {})[str(n)] = fig
            log(f"against dreamerv3-torch, {name}, {n} thread(s): " + _fmt(fig))
    return out


def _step_us(step: Callable[[], None], n: int) -> float:
    for _ in range(50):
        step()
    times = []
    for _ in range(n):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    return float(np.median(times) * 1e6)


def _fmt(fig: dict) -> str:
    return ", ".join(f"{k} {v:.3g}" for k, v in fig.items())


def run(args) -> int:
    from tqdm import tqdm

    if args.against:  # before minutes of timing, not after
        from .dreamerv3_torch import check_checkout

        check_checkout(Path(args.against))
    threads = sorted({1, args.threads})
    repeats = 2 if args.quick else args.repeats
    before = torch.get_num_threads()
    log = tqdm.write
    devices = [torch.device("cpu")]
    if torch.cuda.is_available() and not args.cpu_only:
        devices.append(torch.device("cuda"))
    names = ["reference"] if args.quick else list(CONFIGS)
    print(
        f"kiwi bench train: batch {BATCH} x {LENGTH}, configs {', '.join(names)}, threads "
        f"{threads}, devices {[str(d) for d in devices]}; torch {torch.__version__}"
    )
    results: dict = {}
    try:
        for device in devices:
            for name in names:
                results.setdefault(device.type, {})[name] = measure_config(
                    name, device, threads, repeats, args.compile, log
                )
        against = (
            measure_against(args.against, names, threads, repeats, log) if args.against else None
        )
    finally:
        torch.set_num_threads(before)
    cpu = results["cpu"]["reference"]
    main = cpu[str(args.threads)]
    rows: list[tuple[str, ...]] = [
        ("config", "device", "threads", "update ms", "updates/s", "stepwise ms", "compiled ms")
    ]
    for dev, by_name in results.items():
        for name, by_threads in by_name.items():
            for n, f in by_threads.items():
                if not isinstance(f, dict):
                    continue
                rows.append(
                    (
                        name,
                        dev,
                        n,
                        f"{f['update_ms']:.1f}",
                        f"{f['updates_per_s']:.2f}",
                        f"{f['update_ms_stepwise']:.1f}",
                        f"{f['update_ms_compiled']:.1f}" if "update_ms_compiled" in f else "-",
                    )
                )
    print(format_table(rows))
    if against:
        rows = [("figure", *[f"{n} thr" for n in against["reference"]])]  # a new table
        for key in (
            "update_ms",
            "theirs_update_ms",
            "update_speedup",
            "prior_step_us",
            "theirs_prior_step_us",
            "prior_step_speedup",
            "rollout_k256_h16_ms",
            "theirs_rollout_k256_h16_ms",
            "rollout_speedup",
            "gemm_gflops",
            "rollout_share_of_gemm",
        ):
            rows.append((key, *[f"{f[key]:.3g}" for f in against["reference"].values()]))
        for n, f in against.get("pixel", {}).items():
            rows.append((f"pixel update speedup ({n} thr)", f"{f['update_speedup']:.3g}"))
        print("beside dreamerv3-torch (interleaved in this run):")
        print(format_table(rows))
    write_json(
        args.json,
        {
            "update_ms": main["update_ms"],
            "update_ms_compiled": main.get("update_ms_compiled"),
            "compile_note": None
            if "update_ms_compiled" in main
            else (cpu.get("compile_error") or "not measured (run with --compile)"),
            "updates_per_s": main["updates_per_s"],
            "threads": args.threads,
            "batch": [BATCH, LENGTH],
            "results": results,
            "against_dreamerv3_torch": against,
            "machine": machine(),
            "torch": torch.__version__,
        },
    )
    return 0
