"""Finding a Python in which Blender imports as a module (``bpy`` from PyPI), for
the tests that run Blender in a child process.

bpy 4.5 needs numpy < 2 while motionode runs on numpy 2, so that Python is usually
another environment, named by ``MOTIONODE_BPY_PYTHON`` (default: this Python).
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys

PYTHON_ENV = "MOTIONODE_BPY_PYTHON"


@functools.cache
def find_blender(with_zmq: bool = False) -> tuple[str | None, str]:
    """(Python that imports bpy, and pyzmq if asked; Blender version), or
    (None, why there is none: the message a skipped test shows)."""
    python = os.environ.get(PYTHON_ENV) or sys.executable
    code = "import bpy{}; print(bpy.app.version_string)".format(
        ", zmq" if with_zmq else ""
    )
    try:
        run = subprocess.run(
            [python, "-c", code],
            check=False,
            capture_output=True,
            text=True,
            timeout=300,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"cannot run {python} to import bpy: {exc}"
    if run.returncode == 0:
        return python, run.stdout.strip().splitlines()[-1]
    last = (run.stderr.strip().splitlines() or ["no error output"])[-1]
    if with_zmq and "zmq" in last:
        return None, (
            f"pyzmq does not import in {python}: {last}. The add-on needs it; "
            f"install it with '{python} -m pip install pyzmq'"
        )
    return None, (
        f"bpy (Blender as a Python module) does not import in {python}: {last}. "
        f"Install it with 'pip install bpy==4.5.*' (Python 3.11 only; it needs "
        f"numpy<2, so a separate environment is best)"
        f"{', add pyzmq,' if with_zmq else ''} and point {PYTHON_ENV} at that "
        f"environment's python"
    )
