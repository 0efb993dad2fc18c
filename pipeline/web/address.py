"""Where the web view listens and with which token: the address parsed, the token resolved, and the refusal to
serve beyond this machine without a strong one."""

from __future__ import annotations

import ipaddress
import os
import re

from ...errors import InputError
from ..config import Config

TOKEN_ENV = "FACESTREAM_WEB_TOKEN"


class WebError(InputError, ValueError):
    """A web-view set-up problem with a clear message (bad address, a public address without a token...)."""


def parse_address(text: str, default_port: int = 8080) -> tuple[str, int]:
    """HOST:PORT, [IPv6]:PORT, HOST or :PORT -> (host, port); WebError when it is not one."""
    text = text.strip()
    match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\](?::(\d+))?|([^:\[\]]*)(?::(\d+))?", text)
    if not match or not text:
        raise WebError(f"web address {text!r}: expected HOST:PORT, e.g. 127.0.0.1:8080")
    host = match.group(1) or match.group(3) or "127.0.0.1"
    port = int(match.group(2) or match.group(4) or default_port)
    if not 0 <= port <= 65535:
        raise WebError(f"web address {text!r}: port {port} is out of range")
    return host, port


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def resolve_token(config: Config, given: str | None = None) -> str:
    """The token: `given` (--token), else $FACESTREAM_WEB_TOKEN, else web.token; "" for none."""
    return (given or os.environ.get(TOKEN_ENV) or str(config.web.token or "")).strip()


MIN_TOKEN_BITS = 56


def token_bits(token: str) -> float:
    """A rough strength figure: the token's length times the entropy of its characters' frequencies (bits).
    It cannot tell a random token from a clever guessable one, but it refuses "aaaaaaaaaaaaaaaa",
    "abababababababab" and other short runs that a length check alone accepts."""
    import math
    from collections import Counter

    counts = Counter(token)
    return -sum(n * math.log2(n / len(token)) for n in counts.values()) if token else 0.0


def check_binding(host: str, token: str) -> None:
    """Refuse to serve faces beyond this machine without a token."""
    if not is_loopback(host) and not token:
        raise WebError(
            f"refusing to serve the web view on {host} without a token: anyone who can reach it would see the "
            f"cameras and could change the gallery. Set {TOKEN_ENV} (or web.token, or --token), or serve on "
            "127.0.0.1 and reach it through an SSH tunnel"
        )
    if token and (len(token) < 16 or token_bits(token) < MIN_TOKEN_BITS):
        raise WebError(
            f"the web token is too short or too regular (about {token_bits(token):.0f} bits; at least "
            f"{MIN_TOKEN_BITS} needed): use at least 16 random characters, e.g. `openssl rand -hex 16`"
        )
