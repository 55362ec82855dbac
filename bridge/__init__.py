"""ZeroMQ bridge: serves a motion model's poses to engines and tools.

The wire protocol is specified in ``PROTOCOL.md`` beside this file.
"""

from bridge.client import Client, ClientStream, Frame, StreamEnded
from bridge.protocol import VERSION, ProtocolError
from bridge.server import Server

__all__ = [
    "VERSION",
    "Client",
    "ClientStream",
    "Frame",
    "ProtocolError",
    "Server",
    "StreamEnded",
]
