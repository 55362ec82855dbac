"""CURVE security for the bridge: ZeroMQ's own encryption and key-based client
authentication.

Keys live in ZeroMQ's certificate files (the text format of ``zmq.auth`` and
czmq): ``NAME.key`` holds a public key and may be shared; ``NAME.key_secret``
holds the public and the secret key and stays with its owner. The server has one
key pair and a list of allowed client public keys; each client has its own pair
and the server's public key. A client whose key is not on the list completes no
handshake, so it can neither send a request nor receive a frame.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

logger = logging.getLogger(__name__)

__all__ = [
    "ClientKeys",
    "ServerKeys",
    "generate_keys",
    "read_public_key",
]

Z85_KEY_CHARS = 40  # a 32-byte key in Z85 text
Z85_ALPHABET = frozenset(
    "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
    ".-:+=^!/*?&<>()[]{}@%$#"
)
ZAP_DOMAIN = "motionode"


def generate_keys(directory: str | os.PathLike, name: str) -> tuple[Path, Path]:
    """Write a new key pair as ``NAME.key`` and ``NAME.key_secret`` in
    ``directory`` (made if missing); return both paths.

    Raises:
        FileExistsError: either file exists already; keys are never overwritten.
    """
    directory = Path(directory)
    public, secret = directory / f"{name}.key", directory / f"{name}.key_secret"
    for path in (public, secret):
        if path.exists():
            raise FileExistsError(f"{path}: exists already; keys are not overwritten")
    directory.mkdir(parents=True, exist_ok=True)
    made = zmq.auth.create_certificates(str(directory), name)
    os.chmod(made[1], 0o600)
    return Path(made[0]), Path(made[1])


def _load(path: str | os.PathLike, need_secret: bool) -> tuple[bytes, bytes | None]:
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: expected a ZeroMQ certificate file, found none")
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (ValueError, OSError) as exc:
        raise ValueError(f"{path}: not a ZeroMQ certificate file ({exc})") from None
    if public is None or len(public) != Z85_KEY_CHARS:
        raise ValueError(f"{path}: expected a 40-character public-key, got none")
    if need_secret and (secret is None or len(secret) != Z85_KEY_CHARS):
        raise ValueError(
            f"{path}: holds no secret-key; give the NAME.key_secret file, not NAME.key"
        )
    return public, secret


def read_public_key(value: str | bytes | os.PathLike) -> bytes:
    """A public key given as its 40 Z85 characters or as a certificate file.

    Raises:
        ValueError: neither a Z85 key nor a readable certificate file.
    """
    text = os.fsdecode(value) if not isinstance(value, bytes) else value.decode()
    if len(text) == Z85_KEY_CHARS and not Path(text).exists():
        if not set(text) <= Z85_ALPHABET:
            raise ValueError(f"{text!r}: not a Z85 public key")
        return text.encode("ascii")
    return _load(text, need_secret=False)[0]


@dataclass(frozen=True)
class ServerKeys:
    """The server's key pair and the client public keys it accepts."""

    public: bytes
    secret: bytes
    allowed: frozenset[bytes]

    @classmethod
    def load(
        cls,
        secret_file: str | os.PathLike,
        allowed: str | os.PathLike | Iterable[str | bytes | os.PathLike],
    ) -> ServerKeys:
        """Read the server's ``.key_secret`` file and the allowed client keys: a
        folder of client ``.key`` files, or a list of keys and files.

        Raises:
            ValueError: a missing or malformed file, or no allowed key at all.
        """
        public, secret = _load(secret_file, need_secret=True)
        if isinstance(allowed, (str, os.PathLike)) and Path(allowed).is_dir():
            files = sorted(Path(allowed).glob("*.key"))
            keys = frozenset(read_public_key(f) for f in files)
            where = f"{allowed}: no *.key files"
        else:
            items = [allowed] if isinstance(allowed, (str, os.PathLike)) else allowed
            keys = frozenset(read_public_key(item) for item in items)
            where = "allowed: empty"
        if not keys:
            raise ValueError(f"{where}; list at least one client public key")
        return cls(public, secret, keys)

    def secure(self, socket: zmq.Socket) -> None:
        """Make ``socket`` a CURVE server; call before it binds."""
        socket.curve_secretkey = self.secret
        socket.curve_publickey = self.public
        socket.curve_server = True
        socket.zap_domain = ZAP_DOMAIN.encode()

    def start_authenticator(self, context: zmq.Context) -> ThreadAuthenticator:
        """Start the thread that admits exactly the allowed keys on ``context``."""
        auth = ThreadAuthenticator(context, log=logger.getChild("zap"))
        auth.start()
        auth.configure_curve_callback(ZAP_DOMAIN, credentials_provider=self)
        return auth

    def callback(self, domain: str, key: bytes) -> bool:
        """The authenticator's question: may the holder of ``key`` connect?"""
        if key in self.allowed:
            return True
        logger.warning("refused a client whose CURVE key %s is not allowed", key)
        return False


@dataclass(frozen=True)
class ClientKeys:
    """A client's key pair and the public key of the server it trusts."""

    server: bytes
    public: bytes
    secret: bytes

    @classmethod
    def load(
        cls, server_key: str | bytes | os.PathLike, secret_file: str | os.PathLike
    ) -> ClientKeys:
        """The server's public key (Z85 text or ``.key`` file) and the client's
        own ``.key_secret`` file.

        Raises:
            ValueError: a missing or malformed key or file.
        """
        public, secret = _load(secret_file, need_secret=True)
        return cls(read_public_key(server_key), public, secret)

    def secure(self, socket: zmq.Socket) -> None:
        """Make ``socket`` a CURVE client; call before it connects."""
        socket.curve_serverkey = self.server
        socket.curve_publickey = self.public
        socket.curve_secretkey = self.secret
