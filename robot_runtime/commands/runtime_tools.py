"""Tools for the runtime's link: `kiwi keys` makes the CURVE key pairs a non-loopback bind needs."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from . import command

ALLOWED_DIR = "allowed_clients"  # the server's folder of accepted client public keys


def _make_pair(folder: Path, name: str, force: bool) -> tuple[Path, Path]:
    from ..link import make_keys

    secret = folder / f"{name}.key_secret"
    if secret.exists() and not force:
        raise ValueError(
            f"{secret} exists; replacing it locks out everything that uses it (--force replaces it)"
        )
    public, secret = make_keys(folder, name)
    os.chmod(secret, 0o600)  # the secret key: readable by its owner only
    return public, secret


def cmd_keys(args) -> int:
    if args.name == "server":
        raise ValueError("--name server would overwrite the server's key pair; pick another name")
    out = Path(args.out)
    allowed = out / ALLOWED_DIR
    made: list[tuple[Path, str]] = []
    server_public = out / "server.key"
    if args.role in ("server", "both"):
        public, secret = _make_pair(out, "server", args.force)
        made += [
            (secret, "server key pair: stays on the runtime's machine, never copied"),
            (public, "server public key: copy to every client"),
        ]
    if args.role in ("client", "both"):
        public, secret = _make_pair(out, args.name, args.force)
        allowed.mkdir(parents=True, exist_ok=True)
        shutil.copy2(public, allowed / public.name)
        made += [
            (secret, "client key pair: copy to the client's machine (the slow process)"),
            (public, "client public key"),
            (allowed / public.name, "the same, in the server's folder of accepted clients"),
        ]
    width = max(len(str(p)) for p, _ in made)
    print("wrote:")
    for path, role in made:
        print(f"  {str(path).ljust(width)}  {role}")
    client_secret = out / f"{args.name}.key_secret"
    print(
        "\nuse:\n"
        "  server (the runtime; binds a non-loopback address, e.g. tcp://0.0.0.0:5601):\n"
        f"    --set link.curve_secret={out / 'server.key_secret'} "
        f"--set link.curve_clients={allowed}\n"
        f"    in Python: link.CurveKeys(Path('{out / 'server.key_secret'}'), Path('{allowed}'))\n"
        "  client (connects to the server's address):\n"
        f"    link.Context().connect(zmq.PUSH, 'tcp://HOST:5601', "
        f"server_public_key=Path('{server_public}'), client_secret=Path('{client_secret}'))\n"
        "  the server accepts only the clients whose .key files are in "
        f"{allowed}/; add another with `kiwi keys --out {out} --role client --name NAME`"
    )
    return 0


def register(sub) -> None:
    p = command(
        sub,
        "keys",
        cmd_keys,
        "make CURVE key pairs for a non-loopback link",
        "Makes the CURVE key pairs ZeroMQ needs before the runtime may bind anything but "
        "loopback: the server's pair (server.key, server.key_secret) and a client's pair "
        "(NAME.key, NAME.key_secret), and puts the client's public key in "
        f"{ALLOWED_DIR}/, the folder of clients the server accepts. Prints which file goes "
        "where. Existing secret keys are never replaced without --force.",
        "kiwi keys --out keys\nkiwi keys --out keys --role client --name laptop",
    )
    p.add_argument("--out", required=True, help="folder to write the keys into")
    p.add_argument("--name", default="client", help="the client key pair's name")
    p.add_argument(
        "--role",
        choices=["both", "server", "client"],
        default="both",
        help="which key pairs to make",
    )
    p.add_argument("--force", action="store_true", help="replace existing key pairs")
