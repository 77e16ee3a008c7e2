"""The bus tools against the servo emulator: emulate-bus (own process), scan, read, calibrate."""

import io
import json
import subprocess
import sys
import time

import pytest

from drivers.virtual_bus import VirtualBus
from robot_runtime.cli import main


def test_emulate_bus_serves_a_port_that_kiwi_read_reads(tmp_path, capsys):
    link = tmp_path / "bus"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "robot_runtime.cli",
            "emulate-bus",
            "--protocol",
            "feetech",
            "--ids",
            "1,2,3",
            "--link",
            str(link),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline().strip() == str(link)
        assert (
            main(
                [
                    "read",
                    "--port",
                    str(link),
                    "--protocol",
                    "feetech",
                    "--ids",
                    "1,2,3",
                    "--register",
                    "Model_Number",
                    "--json",
                ]
            )
            == 0
        )
        assert json.loads(capsys.readouterr().out) == {"1": 777, "2": 777, "3": 777}
    finally:
        proc.terminate()
        proc.wait(timeout=5)
    assert not link.exists(), "the link is removed when the emulator stops"


@pytest.mark.parametrize(
    ("protocol", "model"), [("feetech", "sts3215"), ("dynamixel", "xl430-w250")]
)
def test_scan_finds_ids_and_models(protocol, model, capsys):
    with VirtualBus(protocol, {2: model, 5: model}) as bus:
        assert main(["scan", "--port", bus.port, "--protocol", protocol, "--baud", "1000000"]) == 0
    out = capsys.readouterr().out
    assert model in out and "  2  " in out and "  5  " in out


def test_scan_of_an_empty_bus_says_what_to_check(capsys):
    with VirtualBus("feetech", {}) as bus:
        assert main(["scan", "--port", bus.port, "--protocol", "feetech", "--baud", "1000000"]) == 1
    assert "power" in capsys.readouterr().out


def test_read_reports_a_missing_port_clearly(capsys):
    assert (
        main(["read", "--port", "/dev/does-not-exist", "--protocol", "feetech", "--ids", "1"]) == 2
    )
    assert "cannot open /dev/does-not-exist" in capsys.readouterr().err


def test_calibrate_writes_lerobot_json_from_the_moves_a_person_makes(tmp_path, monkeypatch):
    """A fake person (named so): answers the prompts and moves the emulated joints by hand."""
    out = tmp_path / "so100.json"
    with VirtualBus("feetech", {i: "sts3215" for i in range(1, 7)}) as bus:

        def set_actual(values):
            for i, v in zip(range(1, 7), values):
                bus.servo(i).actual = float(v)

        set_actual([2500, 2300, 1800, 2100, 2000, 2200])  # roughly mid-range
        monkeypatch.setattr("builtins.input", lambda prompt="": "")

        class FakePerson(io.StringIO):
            def readline(self):
                for values in (
                    [1500, 1300, 900, 1100, 1000, 1700],
                    [3500, 3300, 2800, 3100, 3000, 2600],
                ):
                    time.sleep(0.15)
                    set_actual(values)
                time.sleep(0.15)
                return "\n"

        monkeypatch.setattr(sys, "stdin", FakePerson())
        assert main(["calibrate", "--robot", "so100", "--port", bus.port, "--out", str(out)]) == 0
        assert bus.servo(1).get("Homing_Offset") == 2500 - 2047
    cal = json.loads(out.read_text())
    assert set(cal) == {
        "shoulder_pan",
        "shoulder_lift",
        "elbow_flex",
        "wrist_flex",
        "wrist_roll",
        "gripper",
    }
    pan = cal["shoulder_pan"]
    assert pan["id"] == 1 and pan["homing_offset"] == 453
    # present = actual - offset: the sweep 1500..3500 reads as 1047..3047
    assert pan["range_min"] == 1500 - 453 and pan["range_max"] == 3500 - 453
    assert (cal["wrist_roll"]["range_min"], cal["wrist_roll"]["range_max"]) == (0, 4095)


def test_calibrate_refuses_a_joint_that_never_moved(tmp_path, monkeypatch, capsys):
    with VirtualBus("feetech", {i: "sts3215" for i in range(1, 7)}) as bus:
        monkeypatch.setattr("builtins.input", lambda prompt="": "")
        monkeypatch.setattr(sys, "stdin", io.StringIO("\n"))
        code = main(
            ["calibrate", "--robot", "so100", "--port", bus.port, "--out", str(tmp_path / "c.json")]
        )
    assert code == 2 and "did not move" in capsys.readouterr().err
    assert not (tmp_path / "c.json").exists()


def test_scan_finds_servos_only_at_their_baud_rate(capsys):
    with VirtualBus("dynamixel", {1: "xl330-m288"}, baudrate=57_600) as bus:
        assert main(["scan", "--port", bus.port, "--protocol", "dynamixel", "--all-bauds"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if "xl330" in line]
    assert len(lines) == 1 and "57600" in lines[0]
