"""The arrows between packages point one way (docs/architecture.md), and the real-arm path loads
no simulator. Every import in every module is read from its syntax tree, including the ones
inside functions (the lazy imports of the CLI)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OURS = ("robot_runtime", "world_model", "drivers", "sim")
# package -> the packages of ours it may import (itself always)
ALLOWED = {
    "world_model": set(),
    "sim": set(),
    "drivers": {"sim"},  # only drivers/sim_arm.py, checked below
    "robot_runtime": {"world_model", "drivers", "sim"},
}


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_packages_import_only_what_the_map_allows(package):
    wrong = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for name in imports_of(path):
            top = name.split(".")[0]
            if top in OURS and top != package and top not in ALLOWED[package]:
                wrong.append(f"{path.relative_to(ROOT)} imports {name}")
            if package == "drivers" and top == "sim" and path.name != "sim_arm.py":
                wrong.append(f"{path.relative_to(ROOT)} imports {name} (only sim_arm may)")
    assert not wrong, "\n".join(wrong)


def test_the_world_model_imports_no_zmq_serial_or_simulator():
    heavy = {"zmq", "serial", "mujoco", "gymnasium"}
    wrong = [
        f"{p.relative_to(ROOT)} imports {n}"
        for p in sorted((ROOT / "world_model").rglob("*.py"))
        for n in imports_of(p)
        if n.split(".")[0] in heavy
    ]
    assert not wrong, "\n".join(wrong)


def test_the_sim_package_itself_loads_no_simulator():
    """``sim.kinematics`` and ``sim.perception`` are the arm's geometry for the real arm too."""
    code = (
        "import sys, sim, sim.kinematics, sim.perception; "
        "print([m for m in sys.modules if m.split('.')[0] in ('mujoco', 'gymnasium')])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout + out.stderr


@pytest.mark.slow
def test_kiwi_run_on_the_emulated_bus_loads_no_mujoco_and_no_gymnasium(tmp_path):
    """Issue 11: `kiwi run` on a real arm must not import a simulator (PYTHONPROFILEIMPORTTIME
    lists every module the process imported)."""
    from drivers.arm import SO100
    from drivers.virtual_bus import VirtualBus
    from robot_runtime.bench.endurance import emulated_calibration
    from robot_runtime.dryrun import free_ports

    cal = emulated_calibration(SO100)
    (tmp_path / "cal.json").write_text(json.dumps(cal))
    obs, query, tele = free_ports(3)
    with VirtualBus.for_arm(SO100) as bus:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "robot_runtime.cli",
                "run",
                "--robot",
                "so101",
                "--port",
                bus.port,
                "--calibration",
                str(tmp_path / "cal.json"),
                "--duration",
                "1",
                "--out",
                str(tmp_path / "run"),
                "--set",
                f"link.obs=tcp://127.0.0.1:{obs}",
                "--set",
                f"link.query=tcp://127.0.0.1:{query}",
                "--set",
                f"link.telemetry=tcp://127.0.0.1:{tele}",
            ],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=120,
            env={**__import__("os").environ, "PYTHONPROFILEIMPORTTIME": "1"},
        )
    assert done.returncode == 0, done.stdout + done.stderr[-2000:]
    modules = [
        line.split("|")[-1].strip()
        for line in done.stderr.splitlines()
        if line.startswith("import time:")
    ]
    assert "robot_runtime.service" in modules  # the log is there
    loaded = sorted({m for m in modules if m.split(".")[0] in ("mujoco", "gymnasium")})
    assert not loaded, f"kiwi run imported {loaded}"
