"""The ``kiwi`` command. Each subcommand imports what it needs (torch, mujoco) only when it runs,
so ``kiwi --help`` and the hardware tools start fast. Subcommands live in robot_runtime/commands/.
"""

from __future__ import annotations

import argparse
import os
import sys

from .commands import (
    Formatter,
    benchmarks,
    camera,
    dataset,
    evaluation,
    hardware,
    learning,
    robot,
    runtime_tools,
    simulation,
)

EXAMPLES = """\
examples:
  kiwi lab pendulum --out runs/lab            train the RSSM on Pendulum-v1, plot its dreams
  kiwi lab pendulum --quick --out runs/q      the same in under a minute (smoke test)
  kiwi train world-model --config configs/pendulum.yaml --out runs/wm
  kiwi train agent --config configs/pendulum.yaml --env-steps 20000 --out runs/agent
  kiwi collect --env grasp --episodes 200 --out data/grasp
  kiwi sim replay data/grasp/<episode>.npz --video grasp.gif
  kiwi emulate-bus --protocol feetech --ids 1,2,3,4,5,6
  kiwi scan --port /dev/ttyACM0
  kiwi bench world-model --json bench.json
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kiwi",
        formatter_class=Formatter,
        epilog=EXAMPLES,
        description="Kiwi runtime: a fast control loop on a learned world model's latent state.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in (learning, simulation, robot, evaluation, hardware, runtime_tools, benchmarks):
        module.register(sub)
    camera.register(sub)  # `kiwi camera`: a real camera or a video file for `kiwi slow`
    dataset.register(sub)  # `kiwi dataset`: LeRobotDataset v3.0 folders
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # what made a file, in its metadata
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    from drivers.errors import BusError
    from world_model.errors import KiwiError

    from .config import ConfigError

    try:
        return args.func(args) or 0
    except (ConfigError, KiwiError, BusError, ValueError, OSError) as e:
        if os.environ.get("KIWI_DEBUG"):
            raise
        print(f"kiwi: error: {e} (KIWI_DEBUG=1 shows the traceback)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("kiwi: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
