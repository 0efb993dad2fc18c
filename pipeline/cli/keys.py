"""`facestream keys`: CURVE key pairs for `tcp://` links between machines."""

from __future__ import annotations

import argparse
import json
import logging

from ..config import Config

log = logging.getLogger("facestream")

EPILOG = """\
set-up for workers on another machine (tcp:// endpoints in config.yaml):
  on the server (runs `facestream run`):
    facestream keys create server --dir keys/          keys/server.key (public) + keys/server.key_secret (0600)
    security: {server_secret_key: keys/server.key_secret, allowed_clients_dir: keys/clients}
  on each worker machine:
    facestream keys create worker-1 --dir keys/
    copy keys/worker-1.key (public only) into the server's keys/clients/, and the server's
    keys/server.key (public only) to the worker, then
    facestream stage detect --config shared.yaml --server-key keys/server.key --client-key keys/worker-1.key_secret
  facestream keys show keys/server.key                 print a key file's public key (Z85)

A peer whose public key is not in allowed_clients_dir is refused and the refusal is logged.
Secret key files never leave their machine.
"""


def cmd_keys(args: argparse.Namespace, config: Config) -> int:
    from ..runtime.security import SecurityError, create_key_pair, load_key_file

    try:
        if args.action == "create":
            public, secret = create_key_pair(args.dir, args.name)
            key = load_key_file(public, secret=False)[0].decode("ascii")
            if args.json:
                print(json.dumps({"public_key_file": str(public), "secret_key_file": str(secret), "public_key": key}))
            else:
                print(
                    f"public key  {public}  (give this file to peers)\nsecret key  {secret}  (mode 0600, keep it here)"
                )
                print(f"public key: {key}")
            return 0
        public_key, secret_key = load_key_file(args.file, secret=False)
        if args.json:
            print(json.dumps({"file": args.file, "public_key": public_key.decode("ascii"), "secret": bool(secret_key)}))
        else:
            print(public_key.decode("ascii"))
        return 0
    except SecurityError as error:
        log.error("%s", error)
        return 2


def add_keys_commands(commands: argparse._SubParsersAction) -> None:
    """Add `keys` to the `facestream` sub-commands."""
    parser = commands.add_parser(
        "keys",
        help="create CURVE key pairs for encrypted, authenticated tcp:// links between machines",
        description="Create and show ZeroMQ CURVE key pairs. The machine running `facestream run` is the server; "
        "workers joining over tcp:// with `facestream stage` are clients whose public keys the server allows.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    create = actions.add_parser("create", help="a new key pair NAME.key + NAME.key_secret (0600); never overwrites")
    create.add_argument("name", metavar="NAME", help="e.g. server, worker-1")
    create.add_argument("--dir", default=".", metavar="DIR", help="where to write the files (default: .)")
    create.add_argument("--json", action="store_true", help='{"public_key_file","secret_key_file","public_key"}')
    create.set_defaults(handler=cmd_keys)
    show = actions.add_parser("show", help="print the public key of a key file")
    show.add_argument("file", metavar="FILE")
    show.add_argument("--json", action="store_true", help='{"file","public_key","secret"}')
    show.set_defaults(handler=cmd_keys)
