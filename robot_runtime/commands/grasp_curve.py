"""`kiwi eval grasp-curve`: does dreaming grasp attempts help the success head? (the learning
curve of robot_runtime/dream_grasps.py)."""

from __future__ import annotations

from pathlib import Path

from . import add_set_arg, command


def grasp_counts(text: str) -> list[int]:
    """``--sizes 100,300,1000`` -> sorted distinct counts, each at least 10."""
    import argparse

    try:
        sizes = sorted({int(s) for s in text.split(",") if s.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: comma-separated counts, e.g. 100,300,1000"
        ) from None
    if not sizes or sizes[0] < 10:
        raise argparse.ArgumentTypeError(f"{text!r}: each size needs at least 10 grasps")
    return sizes


def count(least: int):
    """An argparse type: an integer of at least ``least``."""
    import argparse

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"{value}: at least {least}")
        return value

    return parse


def cmd_eval_grasp_curve(args) -> int:
    import torch

    from world_model.errors import OutputError

    from ..assets import resolve
    from ..dream_grasps import learning_curve, plot_curve
    from ..jsonout import write_json
    from ..textui import format_table

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    there = [name for name in ("curve.json", "curve.png") if (out / name).exists()]
    if there and not args.overwrite:
        raise OutputError(
            f"{out} already holds {', '.join(there)}; use --overwrite or another --out"
        )
    sizes = args.sizes
    print(
        f"kiwi eval grasp-curve: success heads on {args.init} from {sizes} real grasps of "
        f"{args.data}, and {sizes[0]} plus dreams; scored on {args.test}"
    )
    report = learning_curve(
        resolve(args.init),
        Path(args.data),
        Path(args.test),
        out,
        sizes,
        args.repeats,
        args.plans,
        args.test_samples,
        args.lead,
        args.timing,
        args.overrides,
        not args.no_progress,
    )
    rows = [("real", "dreamed", "subsets", "AUROC", "Brier", "ECE")]
    for s in report["summary"]:
        dreamed = next(
            (r["dreamed"] for r in report["rows"] if r["real"] == s["real"] and r["dreamed"]), 0
        )
        rows.append(
            (
                s["real"],
                dreamed if s["dreamed"] else 0,
                s["repeats"],
                f"{s['auroc']:.3f}+-{s['auroc_sd']:.3f}",
                f"{s['brier']:.3f}+-{s['brier_sd']:.3f}",
                f"{s['ece']:.3f}+-{s['ece_sd']:.3f}",
            )
        )
    print(format_table(rows))
    print(report["verdict"])
    write_json(out / "curve.json", report, indent=1)
    plot_curve(report, out / "curve.png")
    print(f"wrote {out / 'curve.json'}, {out / 'curve.png'}")
    return 0


def register(ev_sub) -> None:
    p = command(
        ev_sub,
        "grasp-curve",
        cmd_eval_grasp_curve,
        "does dreaming grasp attempts help the success head? a learning curve",
        "Fits the grasp success head (as `kiwi train grasp --data`) on 100, 300 and 1,000 real "
        "labelled grasps of --data (up to --repeats disjoint subsets each), and on the smallest "
        "size plus dreamed attempts: from each real start, the world model's prior rolled "
        "through --plans varied commit plans (aim moved on the arm joints, the close moved "
        "earlier or later), labelled by the model's own forecast of the end (the decoded "
        "gripper stays open on a held cube, closes on a miss or a slip; the threshold is set "
        "on the real grasps' dreams). Each head is calibrated on its real grasps only and "
        "scored on every grasp of --test, a dataset none of them saw. Writes curve.json "
        "(every fit, the mean and spread per condition, how often the labeller agrees with "
        "reality) and curve.png (AUROC and ECE against the number of real grasps).",
        "kiwi eval grasp-curve --init runs/pixels/checkpoint.safetensors "
        "--data data/grasp-lerobot --test data/grasp-lerobot-fresh --out runs/grasp-curve\n"
        "kiwi eval grasp-curve --init runs/pixels/checkpoint.safetensors --data data/a "
        "--test data/b --sizes 50,200 --repeats 2 --plans 3",
    )
    p.add_argument("--init", required=True, help="world model from `kiwi train world-model`")
    p.add_argument("--data", required=True, help="LeRobot dataset with next.success: training")
    p.add_argument("--test", required=True, help="another labelled LeRobot dataset: scoring")
    p.add_argument("--out", default="runs/grasp-curve", help="output folder")
    p.add_argument(
        "--sizes",
        type=grasp_counts,
        default="100,300,1000",
        help="real grasps per fit, comma separated",
    )
    p.add_argument("--repeats", type=count(1), default=3, help="disjoint subsets per size, at most")
    p.add_argument("--plans", type=count(1), default=5, help="dreamed commit plans per real start")
    p.add_argument("--test-samples", type=count(1), default=32, help="K rollouts per test forecast")
    p.add_argument(
        "--lead", type=count(1), default=10, help="dreams start this many frames before the close"
    )
    p.add_argument(
        "--timing",
        type=count(0),
        default=8,
        help="the dreamed close moves by up to +-this many frames",
    )
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    add_set_arg(p, "override a setting of the world model's job, e.g. --set gate.horizon=5")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier curve in OUT")
    p.add_argument("--no-progress", action="store_true")
