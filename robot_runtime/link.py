"""ZeroMQ messages and endpoints: a JSON header frame plus raw array frames, never pickle.

Frame 0 is a UTF-8 JSON header validated by pydantic: the schema version ``v``, ``kind``, ``seq``,
``t_capture`` (seconds, on the runtime's monotonic clock), ``fields`` (name, dtype, shape of each
following frame) and free-form ``meta``. Frames 1..n are the arrays' bytes. Anything else — a
wrong version, an unknown dtype, sizes that disagree, oversized frames, garbage — is a
MessageError naming what was wrong; receivers count it and go on.

Binding anything but loopback (127.0.0.1, ::1, localhost, ipc://, inproc://) requires CURVE keys
(``kiwi keys`` makes them); a CURVE server refuses clients whose keys it does not know.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .jsonout import to_jsonable

VERSION = 1
DTYPES = {"float32", "float64", "int8", "int16", "int32", "int64", "uint8", "uint16", "bool"}
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1", "[::1]"}


class MessageError(ValueError):
    pass


class FieldSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    name: str = Field(min_length=1, max_length=64)
    dtype: str
    shape: tuple[int, ...] = Field(max_length=4)


class Header(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    v: int
    kind: str = Field(min_length=1, max_length=32)
    seq: int = Field(ge=0)
    t_capture: float
    fields: tuple[FieldSpec, ...] = Field(default=(), max_length=32)
    meta: dict[str, Any] = Field(default_factory=dict)


@dataclass(frozen=True)
class Message:
    header: Header
    arrays: dict[str, np.ndarray]

    @property
    def kind(self) -> str:
        return self.header.kind


def encode(
    kind: str,
    arrays: dict[str, np.ndarray] | None = None,
    *,
    seq: int = 0,
    t_capture: float = 0.0,
    meta: dict | None = None,
) -> list[bytes]:
    arrays = arrays or {}
    fields, frames = [], []
    for name, value in arrays.items():
        a = np.asarray(value, order="C")  # C-contiguous; unlike ascontiguousarray, keeps 0-d
        if a.dtype.name not in DTYPES:
            raise MessageError(
                f"field {name!r}: dtype {a.dtype} cannot be sent (allowed: {sorted(DTYPES)})"
            )
        fields.append({"name": name, "dtype": a.dtype.name, "shape": list(a.shape)})
        frames.append(a.tobytes())
    header = {
        "v": VERSION,
        "kind": kind,
        "seq": seq,
        "t_capture": t_capture,
        "fields": fields,
        "meta": to_jsonable(meta or {}),
    }
    if not math.isfinite(t_capture):
        raise MessageError("t_capture must be a finite number")
    return [json.dumps(header, separators=(",", ":"), allow_nan=False).encode(), *frames]


def decode(frames: list, max_bytes: int = MAX_MESSAGE_BYTES) -> Message:
    """Validates and unpacks a multipart message; raises MessageError saying what is wrong."""
    if not frames:
        raise MessageError("empty message")
    total = sum(len(f) for f in frames)
    if total > max_bytes:
        raise MessageError(f"message of {total} bytes exceeds the {max_bytes}-byte limit")
    try:
        raw = json.loads(bytes(frames[0]).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise MessageError(f"header is not UTF-8 JSON: {e}") from None
    except RecursionError:  # deeply nested JSON must not escape as a non-MessageError
        raise MessageError("header JSON is nested too deeply") from None
    if not isinstance(raw, dict):
        raise MessageError("header is not a JSON object")
    if raw.get("v") != VERSION:
        raise MessageError(
            f"schema version {raw.get('v')!r} is not supported (this runtime speaks v{VERSION})"
        )
    try:
        header = Header.model_validate(raw)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise MessageError(f"header field {where}: {first['msg']}") from None
    if not math.isfinite(header.t_capture):
        raise MessageError("t_capture is not a finite number")
    if len(frames) - 1 != len(header.fields):
        raise MessageError(
            f"header lists {len(header.fields)} fields but {len(frames) - 1} data frames follow"
        )
    arrays = {}
    for spec, frame in zip(header.fields, frames[1:]):
        if spec.dtype not in DTYPES:
            raise MessageError(f"field {spec.name!r}: dtype {spec.dtype!r} is not allowed")
        if any(d < 0 for d in spec.shape):
            raise MessageError(f"field {spec.name!r}: negative dimension in {spec.shape}")
        dtype = np.dtype(spec.dtype)
        expected = math.prod(spec.shape) * dtype.itemsize  # Python ints: no int64 overflow
        if len(frame) != expected:
            raise MessageError(
                f"field {spec.name!r}: {len(frame)} bytes for shape {spec.shape} "
                f"{spec.dtype} ({expected} expected)"
            )
        if spec.name in arrays:
            raise MessageError(f"field {spec.name!r} appears twice")
        arrays[spec.name] = np.frombuffer(frame, dtype=dtype).reshape(spec.shape)
    return Message(header, arrays)


# --- endpoints ------------------------------------------------------------------------------


def is_loopback(address: str) -> bool:
    if address.startswith(("ipc://", "inproc://")):
        return True
    if not address.startswith("tcp://"):
        return False
    host = address[len("tcp://") :].rsplit(":", 1)[0]
    return host in LOOPBACK_HOSTS


@dataclass(frozen=True)
class CurveKeys:
    """A server's key pair and the folder of client public keys it accepts (both required:
    a server key alone would accept any client key, a folder alone would encrypt nothing)."""

    secret_file: Path  # the server's .key_secret file (holds both keys)
    clients_dir: Path  # *.key files of the clients it accepts

    def check(self) -> None:
        """A clear error now, at startup, rather than an open door or a locked one later."""
        if not self.secret_file.is_file():
            raise MessageError(f"CURVE secret key file {self.secret_file} does not exist")
        load_keypair(self.secret_file)
        if not self.clients_dir.is_dir():
            raise MessageError(
                f"CURVE client folder {self.clients_dir} does not exist (a misspelt "
                "curve_clients would lock every client out)"
            )
        if not any(self.clients_dir.glob("*.key")):
            raise MessageError(
                f"CURVE client folder {self.clients_dir} holds no client .key files: no "
                "client could connect (copy each client's public .key there)"
            )


def curve_keys(secret: str | None, clients: str | None) -> CurveKeys | None:
    """The configured CURVE keys (None when neither is set); one set without the other is an
    error."""
    if not secret and not clients:
        return None
    if not secret or not clients:
        given = "curve_secret" if secret else "curve_clients"
        raise MessageError(
            "CURVE needs both curve_secret (the server's .key_secret) and curve_clients (the "
            f"folder of accepted client .key files); got only {given}"
        )
    keys = CurveKeys(Path(secret), Path(clients))
    keys.check()
    return keys


def load_keypair(path: Path) -> tuple[bytes, bytes]:
    import zmq.auth

    try:
        public, secret = zmq.auth.load_certificate(str(path))
    except (OSError, ValueError) as e:
        raise MessageError(f"cannot read CURVE key file {path}: {e}") from None
    if secret is None:
        raise MessageError(f"{path} holds no secret key (use the .key_secret file)")
    return public, secret


class Context:
    """One ZeroMQ context and its authenticator, for a process's sockets."""

    def __init__(self):
        import zmq

        self.zmq = zmq
        # A context of its own: an authenticator (CURVE client list) belongs to one context, so
        # two endpoints in one process (tests, a tool beside a runtime) must not share one.
        self.ctx = zmq.Context()
        self._auth = None

    def bind(self, socket_type: int, address: str, curve: CurveKeys | None = None, hwm: int = 4):
        """A socket bound to ``address``; anything but loopback requires CURVE keys."""
        zmq = self.zmq
        if not is_loopback(address) and curve is None:
            raise MessageError(
                f"refusing to bind {address}: not loopback, and no CURVE keys "
                "configured (make them with `kiwi keys`)"
            )
        sock = self.ctx.socket(socket_type)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, hwm)
        sock.setsockopt(zmq.RCVHWM, hwm)
        sock.setsockopt(zmq.MAXMSGSIZE, 4 * MAX_MESSAGE_BYTES)  # decode() counts smaller excess
        if curve is not None:
            curve.check()
            self._start_auth(curve.clients_dir)
            public, secret = load_keypair(curve.secret_file)
            sock.curve_secretkey, sock.curve_publickey, sock.curve_server = secret, public, True
        sock.bind(address)
        return sock

    def connect(
        self,
        socket_type: int,
        address: str,
        server_public_key: Path | None = None,
        client_secret: Path | None = None,
        hwm: int = 4,
    ):
        zmq = self.zmq
        sock = self.ctx.socket(socket_type)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, hwm)
        sock.setsockopt(zmq.RCVHWM, hwm)
        if server_public_key is not None:
            import zmq.auth

            server_public, _ = zmq.auth.load_certificate(str(server_public_key))
            if client_secret is None:
                raise MessageError("a CURVE client needs its own key pair (client_secret)")
            public, secret = load_keypair(client_secret)
            sock.curve_serverkey, sock.curve_publickey, sock.curve_secretkey = (
                server_public,
                public,
                secret,
            )
        sock.connect(address)
        return sock

    def _start_auth(self, clients_dir: Path) -> None:
        if self._auth is None:
            from zmq.auth.thread import ThreadAuthenticator

            self._auth = ThreadAuthenticator(self.ctx)
            self._auth.start()
        self._auth.configure_curve(domain="*", location=str(clients_dir))

    def close(self) -> None:
        """Stops the authenticator and closes every socket of this context."""
        if self._auth is not None:
            self._auth.stop()
            self._auth = None
        self.ctx.destroy(linger=0)


def make_keys(folder: Path, name: str) -> tuple[Path, Path]:
    """Writes ``name.key`` (public) and ``name.key_secret`` into ``folder``."""
    import zmq.auth

    folder.mkdir(parents=True, exist_ok=True)
    public, secret = zmq.auth.create_certificates(str(folder), name)
    return Path(public), Path(secret)


def drain(
    sock,
    counter: dict[str, int] | None = None,
    max_messages: int = 64,
    max_bytes: int = 4 * MAX_MESSAGE_BYTES,
) -> list[Message]:
    """The messages waiting on ``sock`` right now (no blocking), decoded, at most
    ``max_messages`` of them and about ``max_bytes`` in all (the rest wait for the next call):
    a flood costs one call a bounded amount of work. Bad ones are counted."""
    import zmq

    out, received = [], 0
    for _ in range(max_messages):
        if received >= max_bytes:
            break
        try:
            frames = sock.recv_multipart(flags=zmq.NOBLOCK, copy=False)
        except zmq.Again:
            break
        received += sum(len(f.buffer) for f in frames)
        try:
            out.append(decode([f.buffer for f in frames]))
        except MessageError as e:
            if counter is not None:
                counter["rejected"] = counter.get("rejected", 0) + 1
                counter["last_error"] = str(e)  # type: ignore[assignment]
    return out


def newest(messages: list[Message]) -> Message | None:
    """Keep-newest: the message captured last (ties: the higher sequence number)."""
    if not messages:
        return None
    return max(messages, key=lambda m: (m.header.t_capture, m.header.seq))
