"""motionode live: drive a Blender character from a motionode server.

The add-on connects to a motionode bridge server over ZeroMQ, builds an armature
from the server's skeleton (or maps the skeleton onto an existing armature), and
poses it at every frame with the model's pose at exactly that frame's time. It can
key the poses into an action. It speaks the bridge protocol itself (``wire``) and
needs only pyzmq besides Blender, which it offers to install.

Modules: ``wire`` (protocol messages), ``link`` (network thread), ``rig``
(skeleton arithmetic), ``armature`` (Blender armatures and actions), ``session``
(scene time, pose cache, handlers), ``props``, ``ops`` and ``ui``. ``wire`` and
``rig`` import neither ``bpy`` nor ``zmq``.
"""

bl_info = {
    "name": "motionode live",
    "author": "motionode contributors",
    "version": (0, 1, 0),
    "blender": (4, 2, 0),
    "location": "3D Viewport > Sidebar > motionode",
    "description": "Drive a character from a motionode server, live, and record it",
    "category": "Animation",
}

_MODULES = ("props", "ops", "ui", "session")


def _modules():
    import importlib

    return [importlib.import_module(f"{__name__}.{name}") for name in _MODULES]


def register() -> None:
    for module in _modules():
        module.register()


def unregister() -> None:
    for module in reversed(_modules()):
        module.unregister()
