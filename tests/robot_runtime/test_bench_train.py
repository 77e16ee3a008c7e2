"""`kiwi bench train` runs the real update at the reference size and writes its figures (the
figures depend on the machine and are not checked; that they exist and are consistent is)."""

import json

from robot_runtime.bench.train import OurUpdate
from robot_runtime.cli import main


def test_bench_train_quick_writes_update_figures(tmp_path, capsys):
    out = tmp_path / "train.json"
    args = ["bench", "train", "--quick", "--cpu-only", "--threads", "1"]
    assert main([*args, "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    figures = r["results"]["cpu"]["reference"]["1"]
    assert r["update_ms"] == figures["update_ms"] > 0
    assert r["update_ms_compiled"] is None  # not asked for (--compile): said, not made up
    assert "--compile" in r["compile_note"]
    assert figures["update_ms_stepwise"] > 0
    assert r["updates_per_s"] == 1e3 / r["update_ms"]
    assert r["batch"] == [16, 64] and r["against_dreamerv3_torch"] is None
    assert "update ms" in capsys.readouterr().out


def test_the_timed_update_trains_the_model():
    """What is timed is a real update: the weights move."""
    import torch

    update = OurUpdate("reference", torch.device("cpu"))
    before = [p.detach().clone() for p in update.wm.parameters()]
    update.run()
    assert update.trainer.step == 2  # the first, untimed call and this one
    assert any(not torch.equal(a, b) for a, b in zip(before, update.wm.parameters()))


def test_against_a_folder_that_is_no_checkout_is_a_one_line_error(tmp_path, capsys):
    (tmp_path / "networks.py").write_text("")
    assert main(["bench", "train", "--quick", "--against", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "not a dreamerv3-torch checkout (no models.py, tools.py)" in err
    assert "Traceback" not in err
