"""Smoke tests of `kiwi bench link`, `kiwi bench loop` (real sender processes, real sockets, tiny
budgets; the figures themselves depend on the machine and are not checked) and `kiwi keys`."""

import json
import stat

import numpy as np
import pytest
import zmq

from robot_runtime import link
from robot_runtime.cli import build_parser, main


def test_bench_link_quick_writes_the_hop_figures(tmp_path, capsys):
    out = tmp_path / "link.json"
    assert main(["bench", "link", "--quick", "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["count"] == 500 and r["rejected"] == 0
    assert 0 < r["hop_us_p50"] <= r["hop_us_p99"] <= r["hop_us_max"]
    assert r["message_bytes"] > 64 * 64 * 3 + 16 * 4  # the arrays plus the header
    assert r["targets"] == {"hop_us_p50": 200.0, "hop_us_p99": 1000.0}
    table = capsys.readouterr().out
    assert "hop_us_p99" in table and "<= 1000" in table


def test_bench_loop_short_run_writes_figures_per_rate(tmp_path, capsys):
    out = tmp_path / "loop.json"
    assert main(["bench", "loop", "--seconds", "0.4", "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    for rate, slots in (("100", 40), ("200", 80)):
        figures = r[rate]
        assert {"jitter_us_p50", "jitter_us_p99", "overruns", "ticks"} <= set(figures)
        # slots started before the duration; +1 where t0 + k * period - t0 rounds below it
        assert 0 < figures["ticks"] and slots <= figures["ticks"] + figures["skipped"] <= slots + 1
        assert figures["jitter_us_p50"] <= figures["jitter_us_p99"]
        assert figures["rejected"] == 0
    # the slow process posts at 5 Hz and its first message is waited for, so at least one
    # observation reaches the first rate's ticks
    assert r["100"]["observations"] >= 1
    assert "100 Hz" in capsys.readouterr().out


def test_bench_loop_refuses_a_non_positive_duration(capsys):
    assert main(["bench", "loop", "--seconds", "0"]) == 2
    assert "--seconds must be positive" in capsys.readouterr().err


@pytest.mark.parametrize("what", ["link", "loop"])
def test_bench_help_has_an_example(what, capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["bench", what, "--help"])
    assert f"kiwi bench {what} --json" in capsys.readouterr().out


def test_keys_makes_pairs_that_work_as_printed(tmp_path, capsys):
    out = tmp_path / "keys"
    assert main(["keys", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    for name in ("server.key", "server.key_secret", "client.key", "client.key_secret"):
        assert (out / name).is_file() and str(out / name) in printed
    assert (out / "allowed_clients" / "client.key").is_file()
    assert stat.S_IMODE((out / "server.key_secret").stat().st_mode) == 0o600

    # the files used where the output says they go: the client's message arrives
    ctx = link.Context()
    server = ctx.bind(
        zmq.PULL,
        "tcp://127.0.0.1:*",
        link.CurveKeys(out / "server.key_secret", out / "allowed_clients"),
    )
    client = ctx.connect(
        zmq.PUSH,
        server.getsockopt(zmq.LAST_ENDPOINT).decode(),
        server_public_key=out / "server.key",
        client_secret=out / "client.key_secret",
    )
    try:
        client.send_multipart(link.encode("obs", {"x": np.arange(3, dtype=np.int16)}))
        assert server.poll(3000)
        assert link.drain(server)[0].arrays["x"].tolist() == [0, 1, 2]
    finally:
        client.close()
        server.close()
        ctx.close()


def test_keys_never_replaces_a_secret_without_force(tmp_path, capsys):
    out = tmp_path / "keys"
    assert main(["keys", "--out", str(out)]) == 0
    before = (out / "server.key_secret").read_bytes()
    assert main(["keys", "--out", str(out)]) == 2
    assert "--force" in capsys.readouterr().err
    assert (out / "server.key_secret").read_bytes() == before
    assert main(["keys", "--out", str(out), "--force"]) == 0
    assert (out / "server.key_secret").read_bytes() != before


def test_keys_adds_another_client(tmp_path, capsys):
    out = tmp_path / "keys"
    assert main(["keys", "--out", str(out)]) == 0
    assert main(["keys", "--out", str(out), "--role", "client", "--name", "laptop"]) == 0
    assert sorted(p.name for p in (out / "allowed_clients").iterdir()) == [
        "client.key",
        "laptop.key",
    ]
    assert main(["keys", "--out", str(out), "--role", "client", "--name", "server"]) == 2


@pytest.mark.slow
def test_bench_faults_and_soak_short_runs_write_their_figures(tmp_path, capsys):
    """`kiwi run` on a flaky emulated bus for a few seconds, then on a clean one: the runs end
    by themselves (no stop), and the figures are written."""
    out = tmp_path / "faults.json"
    args = ["bench", "faults", "--minutes", "0.1", "--protocols", "dynamixel"]
    assert main([*args, "--sample-s", "2", "--json", str(out)]) == 0
    run = json.loads(out.read_text())["runs"][0]
    assert run["stopped"] is None and run["ticks"] > 100 and run["retries"] > 0
    out = tmp_path / "soak.json"
    assert main(["bench", "soak", "--minutes", "0.1", "--sample-s", "2", "--json", str(out)]) == 0
    soak = json.loads(out.read_text())
    assert soak["samples"] and soak["returncode"] == 0
