"""`kiwi train world-model --nproc 2`: two real processes under torchrun (gloo), rank 0 alone
writing, and a resumed run continuing the same checkpoint; --device errors are one line."""

import json

import pytest
import torch

from robot_runtime.cli import main
from world_model.model import WorldModel

QUICK = ["--config", "pendulum", "--quick", "--no-progress", "--device", "cpu"]


@pytest.mark.slow
def test_two_processes_train_log_once_and_resume(tmp_path, capfd):
    out = tmp_path / "wm"
    base = ["train", "world-model", *QUICK, "--out", str(out), "--nproc", "2"]
    assert main([*base, "--steps", "4", "--set", "train.log_every=2"]) == 0
    text = capfd.readouterr().out
    assert "2 process(es): effective batch 2 x 8 = 16 sequences" in text
    assert text.count("wrote ") == 1  # rank 0 alone reports (and writes)
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [2, 4]
    _, meta, _ = WorldModel.load(out / "checkpoint.safetensors")
    assert meta["step"] == 4 and meta["processes"] == 2
    assert not list(out.glob(".*tmp"))

    assert main([*base, "--steps", "6", "--set", "train.log_every=2", "--resume"]) == 0
    assert "resuming from" in capfd.readouterr().out
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [2, 4, 6]
    assert WorldModel.load(out / "checkpoint.safetensors")[1]["step"] == 6


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_asking_for_a_missing_gpu_is_a_one_line_error(tmp_path, capsys):
    args = ["train", "world-model", *QUICK, "--out", str(tmp_path / "wm")]
    args[args.index("cpu")] = "cuda"
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "--device cuda: torch sees no CUDA GPU" in err and "Traceback" not in err
