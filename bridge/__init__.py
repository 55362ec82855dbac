"""ZeroMQ bridge: serves a motion model's poses to engines and tools.

The wire protocol is specified in ``PROTOCOL.md`` beside this file.
"""

from bridge.client import (
    AuthenticationError,
    Client,
    ClientStream,
    Frame,
    JointPoses,
    StreamEnded,
)
from bridge.protocol import VERSION, ProtocolError
from bridge.security import ClientKeys, ServerKeys, generate_keys
from bridge.server import Server

__all__ = [
    "VERSION",
    "AuthenticationError",
    "Client",
    "ClientKeys",
    "ClientStream",
    "Frame",
    "JointPoses",
    "ProtocolError",
    "Server",
    "ServerKeys",
    "StreamEnded",
    "generate_keys",
]
