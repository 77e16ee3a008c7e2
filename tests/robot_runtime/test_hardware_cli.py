"""The bus tools against the servo emulator: emulate-bus (own process), scan, read, calibrate."""

import io
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from drivers.arm import KOCH
from drivers.tables import MODELS
from drivers.virtual_bus import Faults, VirtualBus
from robot_runtime.cli import main


class Terminal(io.StringIO):
    """Stdin as if typed at a terminal."""

    def isatty(self):
        return True


def start_emulator(*args: str) -> subprocess.Popen:
    """``kiwi emulate-bus ARGS`` in its own process; its first stdout line is the port."""
    return subprocess.Popen(
        [sys.executable, "-m", "robot_runtime.cli", "emulate-bus", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def read_json(port: str, protocol: str, ids: str, register: str, capsys) -> dict:
    code = main(
        ["read", "--port", port, "--protocol", protocol, "--ids", ids]
        + ["--register", register, "--json"]
    )
    assert code == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "sigint"])
def test_emulate_bus_serves_a_port_that_kiwi_read_reads_and_removes_its_link(
    stop, tmp_path, capsys
):
    link = tmp_path / "bus"
    proc = start_emulator("--protocol", "feetech", "--ids", "1,2,3", "--link", str(link))
    try:
        assert proc.stdout.readline().strip() == str(link)
        values = read_json(str(link), "feetech", "1,2,3", "Model_Number", capsys)
        assert values == {"1": 777, "2": 777, "3": 777}
        proc.send_signal(stop)
        assert proc.wait(timeout=5) == 0, proc.stderr.read()
    finally:
        proc.kill()
        proc.wait()
    # the link itself, not its target: a dangling link is what was left behind before
    assert not os.path.lexists(link), "the link is removed when the emulator stops"


def test_emulate_bus_replaces_a_stale_link_but_not_a_file(tmp_path, capsys):
    stale = tmp_path / "bus"
    stale.symlink_to("/dev/pts/no-such-pty")  # left by an emulator that was killed
    proc = start_emulator("--protocol", "dynamixel", "--ids", "1", "--link", str(stale))
    try:
        assert proc.stdout.readline().strip() == str(stale)
        target = os.readlink(stale)
        assert target.startswith("/dev/pts/") and os.path.exists(stale)
        assert read_json(str(stale), "dynamixel", "1", "Model_Number", capsys) == {"1": 1200}
        proc.terminate()
        proc.wait(timeout=5)
    finally:
        proc.kill()
        proc.wait()
    assert not os.path.lexists(stale)

    regular = tmp_path / "notes.txt"
    regular.write_text("mine")
    code = main(["emulate-bus", "--protocol", "feetech", "--link", str(regular)])
    assert code == 2 and "exists and is not a symlink" in capsys.readouterr().err
    assert regular.read_text() == "mine"


def test_emulate_bus_koch_preset_and_models_mix_servo_models(tmp_path, capsys):
    koch = ["1060", "1060", "1200", "1200", "1200", "1200"]
    for preset in (
        ["--robot", "koch"],
        [
            "--models",
            "1:xl430-w250,2:xl430-w250,3:xl330-m288,4:xl330-m288,5:xl330-m288,6:xl330-m288",
        ],
    ):
        link = tmp_path / "koch"
        proc = start_emulator(*preset, "--link", str(link))
        try:
            assert proc.stdout.readline().strip() == str(link)
            values = read_json(str(link), "dynamixel", "1,2,3,4,5,6", "Model_Number", capsys)
            assert [str(values[str(i)]) for i in range(1, 7)] == koch
        finally:
            proc.terminate()
            proc.wait(timeout=5)


def test_emulate_bus_faults_reach_a_client(tmp_path):
    from drivers.arm import KOCH
    from drivers.bus import BusSettings, MotorBus

    link = tmp_path / "koch"
    proc = start_emulator(
        "--robot", "koch", "--link", str(link), "--drop", "0.2", "--corrupt", "0.2",
        "--stall", "0.05", "--stall-ms", "30", "--seed", "4",
    )  # fmt: skip
    try:
        assert proc.stdout.readline().strip() == str(link)
        reg = MODELS["xl330-m288"].register("Present_Position")
        ids = [m.id for m in KOCH.motors]
        with MotorBus(str(link), "dynamixel", BusSettings(timeout_s=0.02, retries=8)) as bus:
            for _ in range(40):
                assert bus.sync_read(reg, ids) == dict.fromkeys(ids, 2048)
            stats = bus.stats
        assert stats.timeouts > 0 and stats.corrupt > 0 and stats.failures == 0
    finally:
        proc.terminate()
        proc.wait(timeout=5)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--protocol", "feetech", "--drop", "1.5"], "--drop is a probability"),
        (["--models", "1:xl999"], "unknown servo model 'xl999'"),
        (["--models", "one:xl330-m288"], "--models expects ID:MODEL"),
        (["--robot", "koch", "--protocol", "feetech"], "those servos speak dynamixel"),
        (["--models", "1:sts3215,2:xl330-m288"], "one bus speaks one protocol"),
        (["--ids", "1,2"], "needs --protocol"),
    ],
)
def test_emulate_bus_refuses_bad_flags(args, message, capsys):
    assert main(["emulate-bus", *args]) == 2
    assert message in capsys.readouterr().err


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
            def isatty(self):
                return True

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
        monkeypatch.setattr(sys, "stdin", Terminal("\n"))
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


def test_scan_with_ids_exits_1_naming_the_missing_ones(capsys):
    with VirtualBus("feetech", {1: "sts3215", 2: "sts3215", 3: "sts3215"}) as bus:
        args = ["scan", "--port", bus.port, "--protocol", "feetech", "--baud", "1000000"]
        assert main([*args, "--ids", "1,2,3"]) == 0
        assert "missing" not in capsys.readouterr().out
        assert main([*args, "--ids", "1,2,3,4,6"]) == 1
    out = capsys.readouterr().out
    assert "missing: servo(s) [4, 6] did not answer" in out
    assert "sts3215" in out, "what was found is still listed"


def test_scan_with_ids_of_an_empty_bus_exits_1_with_a_hint(capsys):
    with VirtualBus("dynamixel", {}) as bus:
        code = main(
            ["scan", "--port", bus.port, "--protocol", "dynamixel", "--baud", "1000000"]
            + ["--ids", "1,2"]
        )
    assert code == 1
    out = capsys.readouterr().out
    assert "no servos answered" in out and "power" in out and "expected ids [1, 2]" in out


def test_scan_with_ids_pings_those_a_lost_broadcast_reply_hid(capsys):
    ids = dict.fromkeys(range(1, 7), "xl330-m288")
    with VirtualBus("dynamixel", ids, faults=Faults(drop=0.2, seed=0)) as bus:  # loses 3, 4
        code = main(
            ["scan", "--port", bus.port, "--protocol", "dynamixel", "--baud", "1000000"]
            + ["--ids", "1,2,3,4,5,6"]
        )
    assert code == 0, capsys.readouterr().out
    assert capsys.readouterr().out.count("xl330-m288") == 6


def test_calibrate_refuses_an_offset_the_servo_cannot_hold_before_writing_it(
    tmp_path, monkeypatch, capsys
):
    with VirtualBus("feetech", {i: "sts3215" for i in range(1, 7)}) as bus:
        bus.servo(4).actual = 4095.0  # at the end of its turn: offset 4095 - 2047 = 2048
        code = main(
            ["calibrate", "--robot", "so100", "--port", bus.port, "--out", str(tmp_path / "c.json")]
            + ["--yes", "--still-s", "0.1"]
        )
        assert [bus.servo(i).get("Homing_Offset") for i in range(1, 7)] == [0] * 6
    err = capsys.readouterr().err
    assert code == 2
    assert "motor wrist_flex: homing_offset 2048 is outside -2047..2047" in err
    assert not (tmp_path / "c.json").exists()


def test_calibrate_refuses_a_range_the_servo_cannot_hold(tmp_path, monkeypatch, capsys):
    """Koch: a joint that turned past one revolution reads over 4095 (Dynamixel positions do
    not wrap), which no Max_Position_Limit can hold: nothing is saved."""
    out = tmp_path / "koch.json"
    with VirtualBus("dynamixel", {m.id: m.model for m in KOCH.motors}) as bus:
        monkeypatch.setattr("builtins.input", lambda prompt="": "")

        class FakePerson(io.StringIO):
            def isatty(self):
                return True

            def readline(self):
                for i in range(1, 7):
                    bus.servo(i).actual = 1500.0
                time.sleep(0.15)
                for i in range(1, 7):
                    bus.servo(i).actual = 2600.0
                bus.servo(2).actual = 2048.0 + 2500  # present 4547
                time.sleep(0.15)
                return "\n"

        monkeypatch.setattr(sys, "stdin", FakePerson())
        code = main(["calibrate", "--robot", "koch", "--port", bus.port, "--out", str(out)])
    assert code == 2
    assert "motor shoulder_lift: range_max 4547 is outside 0..4095" in capsys.readouterr().err
    assert not out.exists()


SO101_MOTORS = [
    "shoulder_pan",
    "shoulder_lift",
    "elbow_flex",
    "wrist_flex",
    "wrist_roll",
    "gripper",
]


@pytest.mark.parametrize(
    ("robot", "emulated"),
    [
        ("so101", ["--protocol", "feetech", "--ids", "1,2,3,4,5,6"]),
        ("koch", ["--robot", "koch"]),
    ],
)
def test_calibrate_yes_completes_on_a_sweeping_emulator_and_the_arm_connects(
    robot, emulated, tmp_path
):
    """Issue 11 item 6: nobody at the keyboard (stdin is /dev/null), a scripted hand on the
    emulated arm; the file is LeRobot's layout and `ServoArm.connect` accepts it."""
    from drivers.arm import ARMS, ServoArm
    from drivers.virtual_hand import HandSweep

    link, out = tmp_path / "bus", tmp_path / "cal.json"
    proc = start_emulator(*emulated, "--link", str(link), "--sweep", "--sweep-s", "2.4")
    try:
        assert proc.stdout.readline().strip() == str(link)
        done = subprocess.run(
            [sys.executable, "-m", "robot_runtime.cli", "calibrate", "--robot", robot]
            + ["--port", str(link), "--out", str(out), "--yes"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert "Traceback" not in done.stderr and "so100" not in done.stdout + done.stderr
        assert f"Calibrating {robot} on" in done.stdout
        cal = json.loads(out.read_text())
        assert list(cal) == SO101_MOTORS
        config = ARMS[robot]
        hand = HandSweep(tuple(range(1, 7)))
        for m in config.motors:
            entry = cal[m.name]
            assert set(entry) == {"id", "drive_mode", "homing_offset", "range_min", "range_max"}
            assert entry["id"] == m.id and entry["drive_mode"] == 0
            if m.name in config.full_turn:
                assert (entry["range_min"], entry["range_max"]) == (0, 4095)
                continue
            # the hand's ends, read through the homing offset that makes its middle read 2047
            low, high = hand.extremes(m.id)
            assert entry["range_max"] - entry["range_min"] == pytest.approx(high - low, abs=40)
            assert entry["range_max"] - entry["range_min"] > 1500
            assert entry["range_min"] < 2047 < entry["range_max"]
        arm = ServoArm(config, str(link), out)
        arm.connect()
        try:
            assert arm.read_joints().shape == (6,)
        finally:
            arm.disconnect()
    finally:
        proc.terminate()
        proc.wait(timeout=5)


def test_calibrate_never_prompts_without_a_terminal(tmp_path, monkeypatch, capsys):
    def no_input(prompt=""):
        raise AssertionError("input() called without a terminal")

    monkeypatch.setattr("builtins.input", no_input)
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))  # not a terminal
    with VirtualBus("feetech", {i: "sts3215" for i in range(1, 7)}) as bus:
        code = main(
            ["calibrate", "--robot", "so101", "--port", bus.port, "--out", str(tmp_path / "c.json")]
        )
        assert bus.requests == 0, "the bus is not touched"
    err = capsys.readouterr().err
    assert code == 2 and "stdin is not a terminal: pass --yes" in err
    assert len(err.strip().splitlines()) == 1


def test_calibrate_yes_says_what_is_missing_when_nothing_moves(tmp_path, capsys):
    with VirtualBus("feetech", {i: "sts3215" for i in range(1, 7)}) as bus:
        code = main(
            ["calibrate", "--robot", "so101", "--port", bus.port, "--out", str(tmp_path / "c.json")]
            + ["--yes", "--still-s", "0.1", "--timeout-s", "0.5"]
        )
    captured = capsys.readouterr()
    assert code == 2
    assert "moved through fewer than 200 ticks" in captured.err
    assert "so100" not in captured.out + captured.err
    assert not (tmp_path / "c.json").exists()


def test_calibrate_checks_the_file_before_it_touches_the_bus(tmp_path, capsys):
    existing = tmp_path / "cal.json"
    existing.write_text("{}")
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    with VirtualBus("feetech", {i: "sts3215" for i in range(1, 7)}) as bus:
        base = ["calibrate", "--robot", "so101", "--port", bus.port, "--yes", "--out"]
        cases = [
            (str(existing), "exists; pass --overwrite"),
            (str(tmp_path), "is a directory"),
            (str(blocked / "cal.json"), "cannot write in"),
        ]
        for out, message in cases:
            assert main([*base, out]) == 2
            assert message in capsys.readouterr().err
        assert main([*base, str(tmp_path / "x.json"), "--full-turn", "wrist"]) == 2
        assert "so101 has no joint ['wrist']" in capsys.readouterr().err
        assert bus.requests == 0
    assert existing.read_text() == "{}"


def test_calibrate_on_a_bus_of_other_servos_says_so_in_one_line(tmp_path, capsys):
    with VirtualBus.for_arm(KOCH) as bus:
        code = main(
            ["calibrate", "--robot", "so101", "--port", bus.port, "--yes"]
            + ["--out", str(tmp_path / "c.json")]
        )
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "so101 on" in err and "none of its servos (ids 1, 2, 3, 4, 5, 6) answered" in err
    assert f"kiwi scan --port {bus.port}" in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--register", "Present_Positon"],
            "unknown register 'Present_Positon' for sts3215; did you mean Present_Position? "
            "valid: Acceleration,",
        ),
        (
            ["--ids", "7"],
            "no servo with id 7 answered on {port}; try `kiwi scan --port {port}` "
            "(asked in feetech at 1000000 baud)",
        ),
        (["--ids", "1,7,9"], "no servo with id 7, 9 answered on {port}"),
        (["--protocol", "dynamixel"], "no servo with id 1 answered on {port}; try"),
        (["--baud", "12345"], "--baud: baud rate 12345 is not one feetech servos use"),
        (["--model", "xl330"], "unknown servo model 'xl330'; did you mean xl330-m"),
        (["--model", "xl330-m288"], "--model xl330-m288 speaks dynamixel, not feetech"),
        (["--ids", "1,1"], "--ids names servo(s) [1] more than once"),
        (["--ids", "1,x"], "--ids expects numbers"),
    ],
)
def test_read_user_errors_are_one_line(args, message, capsys):
    with VirtualBus("feetech", {1: "sts3215", 2: "sts3215"}) as bus:
        base = {"--port": bus.port, "--protocol": "feetech", "--ids": "1"}
        base.update(zip(args[::2], args[1::2]))
        code = main(["read", *[x for kv in base.items() for x in kv]])
    err = capsys.readouterr().err
    assert code == 2, err
    assert message.format(port=bus.port) in err
    assert len(err.strip().splitlines()) == 1


def test_hardware_tools_say_in_one_line_that_a_port_is_not_a_serial_device(tmp_path, capsys):
    regular = tmp_path / "notes.txt"
    regular.write_text("")
    cases = [
        (str(regular), "not a serial device (a regular file)"),
        (str(tmp_path), "not a serial device (a directory)"),
        ("/dev/does-not-exist", "no such device"),
    ]
    for port, message in cases:
        for argv in (
            ["read", "--port", port, "--protocol", "feetech", "--ids", "1"],
            ["scan", "--port", port, "--protocol", "feetech"],
            ["calibrate", "--robot", "koch", "--port", port, "--yes"]
            + ["--out", str(tmp_path / "c.json")],
        ):
            assert main(argv) == 2, argv
            err = capsys.readouterr().err
            assert f"cannot open {port}: {message}" in err and len(err.splitlines()) == 1


def test_emulate_bus_refuses_a_bad_baud_sweep_or_link_directory(tmp_path, capsys):
    for args, message in [
        (["--baud", "12"], "--baud: baud rate 12 is not one feetech servos use"),
        (["--sweep", "--sweep-s", "0"], "--sweep-s must be > 0"),
        (["--link", str(tmp_path / "no" / "bus")], "is not a writable directory"),
    ]:
        assert main(["emulate-bus", "--protocol", "feetech", *args]) == 2
        assert message in capsys.readouterr().err
