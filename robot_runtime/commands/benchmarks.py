"""kiwi bench: speed figures printed as tables and written as JSON."""

from __future__ import annotations

from . import Formatter, add_set_arg, command


def cmd_bench_world_model(args) -> int:
    from ..bench.world_model import run

    return run(args)


def cmd_bench_train(args) -> int:
    from ..bench.train import run

    return run(args)


def cmd_bench_sim(args) -> int:
    from ..bench.sim import run

    return run(args)


def cmd_bench_bus(args) -> int:
    from ..bench.bus import run

    return run(args)


def cmd_bench_link(args) -> int:
    from ..bench.link import run

    return run(args)


def cmd_bench_loop(args) -> int:
    from ..bench.loop import run

    return run(args)


def cmd_bench_soak(args) -> int:
    from ..bench.endurance import run_soak

    return run_soak(args)


def cmd_bench_faults(args) -> int:
    from ..bench.endurance import run_faults

    return run_faults(args)


def register(sub) -> None:
    bench = sub.add_parser(
        "bench", help="speed benchmarks (tables + JSON)", formatter_class=Formatter
    )
    bench_sub = bench.add_subparsers(dest="what", metavar="WHAT", required=True)
    p = command(
        bench_sub,
        "world-model",
        cmd_bench_world_model,
        "prior step latency, batched rollouts, training step, GEMM throughput",
        "Times the RSSM at the reference size (deter 256, hidden 256, 32x32 categorical "
        "stoch, 6-dim action, 16-dim vector observation): the batch-1 prior step (beside "
        "a textbook implementation of the same step), K x H rollouts, one training update "
        "at 16 x 64, and float32 GEMM throughput measured in the same run. Then the pixel "
        "model of configs/so101_pixels.yaml at batch 1 on one thread (posterior update with "
        "one 64x64 image, prior step) and a LeRobot dataset's read throughput with video "
        "decode (--data, or a small one written for the purpose).",
        "kiwi bench world-model --json bench-world-model.json\n"
        "kiwi bench world-model --data data/grasp-lerobot",
    )
    p.add_argument("--data", help="LeRobot dataset whose read throughput is measured")
    p.add_argument(
        "--json",
        nargs="?",
        const="bench-world-model.json",
        metavar="FILE",
        help="also write the figures as JSON",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=2,
        help="torch threads of the headline figures (1 thread is always measured too)",
    )
    p.add_argument("--quick", action="store_true", help="fewer repetitions")
    p = command(
        bench_sub,
        "train",
        cmd_bench_train,
        "the world model's full training update: eager, stepwise, compiled; CPU and CUDA",
        "Times one full world-model update (posterior over the sequence, KL balancing, "
        "reconstruction, reward and continue heads, backward, clipping, Adam) at batch 16 x 64 "
        "for the reference config (deter 256, hidden 256, 32x32 stoch, action 6, vector obs "
        "16) and a pixel config (one 64x64 image), at 1 and --threads threads: the update as "
        "trained (fused sequence), the plain step loop it replaced, and the update through "
        "torch.compile (its compile time too); on CUDA as well when torch sees a GPU. "
        "--against PATH also times NM512/dreamerv3-torch (a checkout at PATH) at the same "
        "sizes, interleaved with ours: update, batch-1 prior step, K=256 x H=16 rollout, and "
        "a GEMM rate measured in the same run.",
        "kiwi bench train --json bench-train.json\n"
        "git clone https://github.com/NM512/dreamerv3-torch /tmp/d3 && "
        "git -C /tmp/d3 checkout 6ef8646d\n"
        "kiwi bench train --against /tmp/d3 --json bench-train.json\n"
        "kiwi bench train --compile --json bench-train.json   # on a GPU box",
    )
    p.add_argument("--json", nargs="?", const="bench-train.json", metavar="FILE", help="write JSON")
    p.add_argument("--threads", type=int, default=2, help="threads (1 is measured too)")
    p.add_argument("--repeats", type=int, default=5, help="timed updates per figure")
    p.add_argument("--against", metavar="PATH", help="a checkout of NM512/dreamerv3-torch")
    p.add_argument(
        "--compile",
        action="store_true",
        help="also time the update through torch.compile (compiling takes minutes on a CPU: "
        "over 40 on a loaded 2-core machine)",
    )
    p.add_argument("--cpu-only", action="store_true", help="skip CUDA even where present")
    p.add_argument("--quick", action="store_true", help="reference only, 2 repetitions")
    p = command(
        bench_sub,
        "sim",
        cmd_bench_sim,
        "control steps per second of the simulated arm",
        "Control steps per second of kiwi/Grasp-v0 on one core (a recorded scripted grasp "
        "replayed open loop): without rendering and with one 64x64 camera.",
        "kiwi bench sim --json bench-sim.json",
    )
    p.add_argument(
        "--json",
        nargs="?",
        const="bench-sim.json",
        metavar="FILE",
        help="also write the figures as JSON",
    )
    p.add_argument("--quick", action="store_true", help="fewer episodes")
    p = command(
        bench_sub,
        "bus",
        cmd_bench_bus,
        "servo bus cycle time and CPU, kiwi vs vendor SDKs",
        "A 6-servo sync-read + sync-write cycle against the emulator (own process, wire "
        "time at 1 Mbaud): median and p99 cycle time and this process's CPU time per "
        "cycle, for kiwi's driver and the vendors' SDKs on the same emulator, beside the "
        "wire-time limit.",
        "kiwi bench bus --json bench-bus.json",
    )
    p.add_argument(
        "--json",
        nargs="?",
        const="bench-bus.json",
        metavar="FILE",
        help="also write the figures as JSON",
    )
    p.add_argument("--quick", action="store_true", help="fewer cycles")
    p = command(
        bench_sub,
        "link",
        cmd_bench_link,
        "one observation hop over loopback ZeroMQ, send to decoded",
        "Latency of one observation hop: a sender process PUSHes 64x64x3 uint8 images "
        "plus a 16-dim float32 state at a modest rate (per-message latency, not queueing) "
        "to a PULL socket on tcp://127.0.0.1; each message carries its send time "
        "(time.monotonic) and the receiver takes the time again after decode(). Targets: "
        "p50 <= 200 µs, p99 <= 1 ms.",
        "kiwi bench link --json bench-link.json",
    )
    p.add_argument(
        "--json",
        nargs="?",
        const="bench-link.json",
        metavar="FILE",
        help="also write the figures as JSON",
    )
    p.add_argument("--count", type=int, default=5000, help="timed messages")
    p.add_argument("--rate-hz", type=float, default=1000.0, help="messages per second")
    p.add_argument("--quick", action="store_true", help="500 messages")
    p = command(
        bench_sub,
        "loop",
        cmd_bench_loop,
        "fast-loop tick jitter at 100 and 200 Hz under observation traffic",
        "FastLoop tick jitter and overruns at 100 Hz and at 200 Hz on the monotonic clock "
        "while a slow process posts 64x64x3 image observations at 5 Hz; each tick drains "
        "and decodes the socket, folds the newest image into features, steps a small "
        "controller, the watchdog and the safety clamp. Targets: p99 jitter <= 1 ms, no "
        "overruns.",
        "kiwi bench loop --json bench-loop.json\n"
        "kiwi bench loop --seconds 300 --json bench-loop-5min.json",
    )
    p.add_argument(
        "--json",
        nargs="?",
        const="bench-loop.json",
        metavar="FILE",
        help="also write the figures as JSON",
    )
    p.add_argument("--seconds", type=float, default=30.0, help="duration at each rate")
    p = command(
        bench_sub,
        "soak",
        cmd_bench_soak,
        "resident memory of `kiwi run` over a long run on the emulator",
        "Runs `kiwi run` on an emulated arm with a stand-in slow process posting "
        "observations and chunks at 5 Hz, samples the runtime's resident memory and status "
        "every --sample-s seconds, and reports the growth after the first minute (target: "
        "under 2 MiB in all), with a plot.",
        "kiwi bench soak --minutes 30 --json bench-soak.json --plot soak.png\n"
        "kiwi bench soak --minutes 3 --protocol dynamixel",
    )
    p.add_argument("--minutes", type=float, default=30.0)
    p.add_argument("--sample-s", type=float, default=30.0, help="seconds between samples")
    p.add_argument("--protocol", choices=["feetech", "dynamixel"], default="feetech")
    p.add_argument("--plot", metavar="PNG", help="plot resident memory against time")
    p.add_argument("--json", nargs="?", const="bench-soak.json", metavar="FILE", help="write JSON")
    p = command(
        bench_sub,
        "faults",
        cmd_bench_faults,
        "`kiwi run` on a flaky emulated bus: held cycles, retries, overruns",
        "Runs `kiwi run` on emulated Feetech and Dynamixel arms whose servos drop and "
        "corrupt replies and sometimes stall, with a stand-in slow process posting at 5 Hz, "
        "and reports whether the run stopped, the cycles held (failed after retries), the "
        "retries, timeouts, corrupt replies and loop overruns.",
        "kiwi bench faults --minutes 5 --json bench-faults.json\n"
        "kiwi bench faults --minutes 1 --drop 0.01 --corrupt 0.01 --stall 0.01",
    )
    p.add_argument("--minutes", type=float, default=5.0, help="per protocol")
    p.add_argument("--protocols", default="feetech,dynamixel")
    p.add_argument("--drop", type=float, default=0.05, help="share of replies dropped")
    p.add_argument("--corrupt", type=float, default=0.05, help="share of replies corrupted")
    p.add_argument("--stall", type=float, default=0.01, help="share of cycles stalled")
    p.add_argument("--stall-ms", type=float, default=50.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sample-s", type=float, default=30.0, help="seconds between samples")
    add_set_arg(p, "a config override for `kiwi run`, e.g. runtime.faults.bus_timeout_ms=8")
    p.add_argument(
        "--json", nargs="?", const="bench-faults.json", metavar="FILE", help="write JSON"
    )
