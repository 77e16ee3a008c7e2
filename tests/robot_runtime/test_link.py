"""The wire format (encode/decode, every kind of malformed message) and real ZeroMQ sockets on
loopback: counted rejections, keep-newest, and the CURVE refusal of unknown clients."""

import json
import time

import numpy as np
import pytest
import zmq

from robot_runtime import link
from robot_runtime.link import MessageError, decode, encode


def header(**changes) -> dict:
    h = {"v": 1, "kind": "obs", "seq": 3, "t_capture": 1.5, "fields": [], "meta": {}}
    h.update(changes)
    return h


def frames_of(h: dict, *data: bytes) -> list[bytes]:
    return [json.dumps(h).encode(), *data]


def field(name="a", dtype="float32", shape=(2,)) -> dict:
    return {"name": name, "dtype": dtype, "shape": list(shape)}


# --- encode / decode ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "dtype, shape",
    [
        ("uint8", (64, 64, 3)),
        ("float32", (16,)),
        ("float64", (2, 3, 4, 5)),
        ("int8", (0,)),
        ("int16", (3, 1)),
        ("int32", ()),
        ("int64", (5,)),
        ("uint16", (2, 2)),
        ("bool", (7,)),
    ],
)
def test_round_trip_keeps_dtype_shape_values_and_header(dtype, shape):
    rng = np.random.default_rng(0)
    value = (rng.normal(size=shape) * 100).astype(dtype)
    frames = encode("obs", {"x": value}, seq=7, t_capture=12.25, meta={"source": "cam"})
    msg = decode(frames)
    assert msg.kind == "obs" and msg.header.seq == 7 and msg.header.t_capture == 12.25
    assert msg.header.meta == {"source": "cam"}
    out = msg.arrays["x"]
    assert out.dtype == np.dtype(dtype) and out.shape == shape
    np.testing.assert_array_equal(out, value)


def test_round_trip_of_several_fields_and_a_non_contiguous_array():
    image = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    transposed = image.transpose(2, 0, 1)  # not C-contiguous: encode makes it so
    state = np.array([1.0, -2.0, 3.5], np.float32)
    msg = decode(encode("obs", {"image": transposed, "state": state}))
    assert list(msg.arrays) == ["image", "state"]
    np.testing.assert_array_equal(msg.arrays["image"], transposed)
    np.testing.assert_array_equal(msg.arrays["state"], state)


def test_a_message_without_arrays_round_trips():
    msg = decode(encode("status", seq=1, t_capture=2.0))
    assert msg.kind == "status" and msg.arrays == {}


def test_encode_refuses_a_dtype_the_wire_does_not_carry():
    with pytest.raises(MessageError, match="complex64"):
        encode("obs", {"z": np.zeros(2, np.complex64)})
    with pytest.raises(MessageError, match="cannot be sent"):
        encode("obs", {"o": np.array([object()], dtype=object)})


@pytest.mark.parametrize(
    "frames, expected",
    [
        ([], "empty message"),
        (frames_of(header(v=2)), "schema version 2 is not supported"),
        (frames_of({k: v for k, v in header().items() if k != "v"}), "schema version None"),
        (frames_of({k: v for k, v in header().items() if k != "kind"}), "kind: Field required"),
        (
            frames_of({k: v for k, v in header().items() if k != "t_capture"}),
            "t_capture: Field required",
        ),
        (frames_of(header(extra=1)), "header field extra"),
        (frames_of(header(seq=-1)), "header field seq"),
        (
            frames_of(header(fields=[field(dtype="complex64")]), bytes(16)),
            "dtype 'complex64' is not allowed",
        ),
        (frames_of(header(fields=[field(dtype=">f4")]), bytes(8)), "dtype '>f4' is not allowed"),
        (
            frames_of(header(fields=[field(shape=(2, 3))]), bytes(20)),
            r"20 bytes for shape \(2, 3\) float32 \(24 expected\)",
        ),
        (frames_of(header(fields=[field(shape=(-2,))]), b""), "negative dimension"),
        (frames_of(header(fields=[field(shape=(1, 1, 1, 1, 1))]), bytes(4)), "at most 4"),
        (
            frames_of(header(fields=[field("a"), field("b")]), bytes(8)),
            "header lists 2 fields but 1 data frames follow",
        ),
        (frames_of(header(), bytes(8)), "header lists 0 fields but 1 data frames follow"),
        (
            frames_of(header(fields=[field("a"), field("a")]), bytes(8), bytes(8)),
            "field 'a' appears twice",
        ),
        ([b"\xff\xfe\x00garbage"], "not UTF-8 JSON"),
        ([b"this is not json"], "not UTF-8 JSON"),
        ([b"[1, 2, 3]"], "not a JSON object"),
        ([json.dumps(header()).encode().replace(b"1.5", b"NaN")], "t_capture is not a finite"),
        ([json.dumps(header()).encode().replace(b"1.5", b"Infinity")], "not a finite number"),
        (frames_of(header(t_capture="soon")), "header field t_capture"),
    ],
)
def test_malformed_messages_are_rejected_saying_what_is_wrong(frames, expected):
    with pytest.raises(MessageError, match=expected):
        decode(frames)


def test_oversized_message_is_rejected_before_parsing():
    frames = encode("obs", {"image": np.zeros((64, 64, 3), np.uint8)})
    with pytest.raises(MessageError, match=r"message of \d+ bytes exceeds the 1000-byte limit"):
        decode(frames, max_bytes=1000)
    assert decode(frames, max_bytes=sum(len(f) for f in frames)).arrays["image"].shape == (
        64,
        64,
        3,
    )


def test_non_finite_capture_time_is_refused_by_encode_and_by_decode():
    with pytest.raises(MessageError, match="t_capture must be a finite number"):
        encode("obs", t_capture=float("nan"))
    for raw in (b"NaN", b"Infinity", b"-Infinity", b"1e999"):
        frames = [b'{"v":1,"kind":"obs","seq":0,"t_capture":' + raw + b',"fields":[]}']
        with pytest.raises(MessageError, match="t_capture"):
            decode(frames)


def test_encode_sends_plain_json_meta():
    """NaN and infinities become null (strict JSON parsers refuse them); numpy values become
    numbers and lists."""
    meta = {"a": float("nan"), "b": np.float32(1.5), "c": np.arange(3), "d": (float("inf"), 2)}
    header = json.loads(encode("status", meta=meta)[0])
    assert header["meta"] == {"a": None, "b": 1.5, "c": [0, 1, 2], "d": [None, 2]}


def test_hostile_headers_raise_message_error_not_other_exceptions():
    """Regressions: each of these escaped decode() (and so drain()) as another exception."""
    overflow = frames_of(header(fields=[field(dtype="uint8", shape=(2**32, 2**32))]), b"")
    with pytest.raises(MessageError, match="bytes for shape"):  # was ValueError (reshape)
        decode(overflow)
    huge = frames_of(header(fields=[field(dtype="uint8", shape=(2**70,))]), b"")
    with pytest.raises(MessageError, match="bytes for shape"):  # was OverflowError
        decode(huge)
    with pytest.raises(MessageError, match="nested too deeply"):  # was RecursionError
        decode([b"[" * 100_000 + b"]" * 100_000])


# --- endpoints --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "address, loopback",
    [
        ("tcp://127.0.0.1:5601", True),
        ("tcp://localhost:5601", True),
        ("tcp://[::1]:5601", True),
        ("ipc:///tmp/kiwi.sock", True),
        ("inproc://obs", True),
        ("tcp://0.0.0.0:5601", False),
        ("tcp://*:5601", False),
        ("tcp://192.168.1.20:5601", False),
        ("udp://127.0.0.1:5601", False),
    ],
)
def test_is_loopback(address, loopback):
    assert link.is_loopback(address) is loopback


@pytest.fixture
def ctx():
    c = link.Context()
    sockets = []
    yield c, sockets
    for s in sockets:
        s.close()
    c.close()


def bound_pull(c, sockets, address="tcp://127.0.0.1:*", curve=None):
    sock = c.bind(zmq.PULL, address, curve)
    sockets.append(sock)
    endpoint = sock.getsockopt(zmq.LAST_ENDPOINT).decode()
    return sock, endpoint.replace("0.0.0.0", "127.0.0.1")


def pusher(c, sockets, address, **curve):
    sock = c.connect(zmq.PUSH, address, hwm=64, **curve)
    sockets.append(sock)
    return sock


def drain_until(sock, n: int, counter: dict, timeout_s: float = 5.0) -> list:
    """link.drain repeatedly until ``n`` messages, good or rejected, have been taken."""
    got: list = []
    deadline = time.monotonic() + timeout_s
    while len(got) + counter.get("rejected", 0) < n and time.monotonic() < deadline:
        if sock.poll(100):
            got += link.drain(sock, counter)
    return got


def test_receiver_counts_rejections_and_keeps_receiving(ctx):
    c, sockets = ctx
    pull, address = bound_pull(c, sockets)
    push = pusher(c, sockets, address)
    image = np.full((8, 8, 3), 9, np.uint8)
    bad = [
        [b"garbage"],
        frames_of(header(v=99)),
        frames_of(header(fields=[field(shape=(3,))]), bytes(8)),
    ]
    sent = []
    for i in range(3):
        push.send_multipart(encode("obs", {"image": image}, seq=i, t_capture=float(i)))
        sent.append(i)
        push.send_multipart(bad[i])
    push.send_multipart(encode("obs", {"image": image}, seq=3, t_capture=3.0))
    counter: dict = {}
    got = drain_until(pull, 7, counter)
    assert counter["rejected"] == 3
    assert "bytes for shape" in counter["last_error"]  # the last bad one
    assert [m.header.seq for m in got] == [0, 1, 2, 3]
    assert all((m.arrays["image"] == 9).all() for m in got)


def test_newest_picks_the_latest_capture(ctx):
    c, sockets = ctx
    pull, address = bound_pull(c, sockets)
    push = pusher(c, sockets, address)
    for seq, t in enumerate([1.0, 3.0, 2.0, 3.0]):
        push.send_multipart(encode("obs", seq=seq, t_capture=t))
    got = drain_until(pull, 4, {})
    assert len(got) == 4
    best = link.newest(got)
    assert best.header.t_capture == 3.0 and best.header.seq == 3  # tie: the higher seq
    assert link.newest([]) is None


def test_non_loopback_bind_without_curve_keys_is_refused(ctx):
    c, _ = ctx
    for address in ("tcp://0.0.0.0:5699", "tcp://*:5699", "tcp://10.1.2.3:5699"):
        with pytest.raises(MessageError, match="not loopback, and no CURVE keys"):
            c.bind(zmq.PULL, address)


@pytest.fixture
def keys(tmp_path):
    server_public, server_secret = link.make_keys(tmp_path / "server", "server")
    _, client_secret = link.make_keys(tmp_path / "client", "client")
    _, intruder_secret = link.make_keys(tmp_path / "intruder", "intruder")
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    (allowed / "client.key").write_bytes((tmp_path / "client" / "client.key").read_bytes())
    return {
        "server": link.CurveKeys(server_secret, allowed),
        "server_public": server_public,
        "client": client_secret,
        "intruder": intruder_secret,
    }


def test_curve_server_accepts_only_the_allowed_client(ctx, keys):
    c, sockets = ctx
    pull, address = bound_pull(c, sockets, "tcp://0.0.0.0:*", keys["server"])
    plain = pusher(c, sockets, address)
    intruder = pusher(
        c, sockets, address, server_public_key=keys["server_public"], client_secret=keys["intruder"]
    )
    plain.send_multipart(encode("obs", meta={"from": "plain"}))
    intruder.send_multipart(encode("obs", meta={"from": "intruder"}))
    assert pull.poll(300) == 0  # neither a client without CURVE nor an unknown key gets through

    allowed = pusher(
        c, sockets, address, server_public_key=keys["server_public"], client_secret=keys["client"]
    )
    allowed.send_multipart(encode("obs", meta={"from": "allowed"}))
    assert pull.poll(3000)
    got = link.drain(pull)
    assert [m.header.meta["from"] for m in got] == ["allowed"]
    assert pull.poll(100) == 0


def test_curve_client_needs_its_own_secret_key(ctx, keys):
    c, _ = ctx
    with pytest.raises(MessageError, match="needs its own key pair"):
        c.connect(zmq.PUSH, "tcp://127.0.0.1:5699", server_public_key=keys["server_public"])
    with pytest.raises(MessageError, match="holds no secret key"):
        link.load_keypair(keys["server_public"])


def test_curve_is_all_or_nothing(ctx, keys, tmp_path):
    """Issue 9, finding 6: a server key alone accepted any client key; a misspelt client folder
    locked everyone out while the runtime said "ready". Both are startup errors now."""
    c, _ = ctx
    secret, allowed = keys["server"].secret_file, keys["server"].clients_dir
    with pytest.raises(MessageError, match="got only curve_secret"):
        link.curve_keys(str(secret), None)
    with pytest.raises(MessageError, match="got only curve_clients"):
        link.curve_keys(None, str(allowed))
    assert link.curve_keys(None, None) is None
    with pytest.raises(MessageError, match="does not exist .a misspelt curve_clients"):
        link.curve_keys(str(secret), str(tmp_path / "alowed"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(MessageError, match="holds no client .key files"):
        c.bind(zmq.PULL, "tcp://0.0.0.0:*", link.CurveKeys(secret, empty))
    with pytest.raises(MessageError, match="cannot read CURVE key file|does not exist"):
        link.curve_keys(str(tmp_path / "nope.key_secret"), str(allowed))
    garbage = tmp_path / "garbage.key_secret"
    garbage.write_text("not a certificate")
    with pytest.raises(MessageError, match="no secret key|cannot read"):
        link.curve_keys(str(garbage), str(allowed))
    assert link.curve_keys(str(secret), str(allowed)).clients_dir == allowed


def test_a_config_with_half_the_curve_keys_is_refused_naming_the_key(tmp_path):
    from robot_runtime.config import ConfigError, GraspJob, load_config

    with pytest.raises(ConfigError, match="curve_secret is set but curve_clients is not"):
        load_config("sim_grasp", GraspJob, ["link.curve_secret=server.key_secret"])
