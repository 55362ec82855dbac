"""CURVE: only clients holding an allowed key can talk to a server that uses it.

Servers here bind 127.0.0.1 only; CURVE acts the same on every address, and the
rule that another address needs it is checked without binding one.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import zmq
from test_bridge import FakeModel

from bridge.client import AuthenticationError, Client
from bridge.security import ClientKeys, ServerKeys, generate_keys, read_public_key
from bridge.server import Server

pytestmark = pytest.mark.timeout(30)


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> Path:
    """server, alice (allowed) and mallory (not allowed) key pairs; alice's public
    key alone in allowed/."""
    root = tmp_path_factory.mktemp("keys")
    for name in ("server", "alice", "mallory"):
        generate_keys(root, name)
    allowed = root / "allowed"
    allowed.mkdir()
    (allowed / "alice.key").write_bytes((root / "alice.key").read_bytes())
    return root


@pytest.fixture
def secure_server(keys):
    server_keys = ServerKeys.load(keys / "server.key_secret", keys / "allowed")
    with Server(FakeModel(), keys=server_keys) as server:
        yield server


def client_as(server: Server, keys: Path, name: str | None, **kw) -> Client:
    curve = (
        None
        if name is None
        else ClientKeys.load(keys / "server.key", keys / f"{name}.key_secret")
    )
    return Client(server.control_endpoint, keys=curve, **kw)


def test_allowed_client_streams_over_curve(secure_server, keys):
    with client_as(secure_server, keys, "alice") as client:
        assert client.hello()["protocol"] == 1
        with client.open_stream("prior", fps=60.0) as stream:
            frames = [stream.recv(timeout=2.0) for _ in range(5)]
    assert [f.seq for f in frames] == list(range(5))
    assert frames[-1].channels.shape == (9,)


@pytest.mark.parametrize("who", ["mallory", None])
def test_client_without_an_allowed_key_gets_nothing(secure_server, keys, who, caplog):
    caplog.set_level(logging.WARNING)
    client = client_as(secure_server, keys, who, timeout=0.5, retries=1)
    with client, pytest.raises(AuthenticationError, match="handshake failed"):
        client.request("open", source="prior", fps=60.0)
    if who == "mallory":
        assert "not allowed" in caplog.text
    # and nothing was opened on its behalf
    assert secure_server._streams == {}


def test_stream_socket_refuses_a_plain_subscriber(secure_server, keys):
    """Knowing the stream endpoint and topic is not enough to read frames."""
    alice = client_as(secure_server, keys, "alice")
    with alice, alice.open_stream("prior", fps=60.0) as stream:
        context = zmq.Context()
        try:
            spy = context.socket(zmq.SUB)
            spy.linger = 0
            spy.setsockopt(zmq.SUBSCRIBE, b"")
            spy.connect(secure_server.stream_endpoint)
            for _ in range(30):  # half a second of frames that alice does get
                stream.recv(timeout=2.0)
            assert spy.poll(0) == 0
            spy.close()
        finally:
            context.term()


def test_wrong_server_key_is_refused(secure_server, keys):
    curve = ClientKeys.load(keys / "mallory.key", keys / "alice.key_secret")
    client = Client(secure_server.control_endpoint, keys=curve, timeout=0.5, retries=0)
    with client, pytest.raises(AuthenticationError):
        client.hello()


def test_key_files_are_checked(keys, tmp_path):
    public = read_public_key(keys / "alice.key")
    assert len(public) == 40
    assert read_public_key(public.decode()) == public
    with pytest.raises(ValueError, match="secret-key"):
        ServerKeys.load(keys / "server.key", keys / "allowed")
    with pytest.raises(ValueError, match="no \\*.key files"):
        ServerKeys.load(keys / "server.key_secret", tmp_path)
    with pytest.raises(ValueError, match="certificate file"):
        ClientKeys.load(keys / "server.key", tmp_path / "missing.key_secret")
    with pytest.raises(ValueError, match="Z85"):
        read_public_key("~" * 40)
    with pytest.raises(FileExistsError):
        generate_keys(keys, "alice")
    assert (keys / "alice.key_secret").stat().st_mode & 0o077 == 0


def test_server_with_keys_may_bind_other_addresses_without_opt_out(keys):
    """Checked without binding: the constructor validates endpoints."""
    server_keys = ServerKeys.load(keys / "server.key_secret", keys / "allowed")
    Server(FakeModel(), control="tcp://0.0.0.0:0", keys=server_keys)
    with pytest.raises(ValueError, match="CURVE keys"):
        Server(FakeModel(), control="tcp://0.0.0.0:0")
