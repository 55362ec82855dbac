"""pyzmq, the one package the add-on needs beyond Blender's own Python.

Blender does not bundle pyzmq. :func:`zmq_problem` says whether it imports;
:func:`install_command` and :func:`run_install` put it into Blender's own Python
with pip, so the add-on can offer a one-click install.
"""

from __future__ import annotations

import importlib
import logging
import os
import subprocess
import sys
import sysconfig

logger = logging.getLogger(__name__)

__all__ = ["install_command", "install_target", "run_install", "zmq_problem"]

REQUIREMENT = "pyzmq"
INSTALL_TIMEOUT_S = 600  # pip may have to build or download a wheel


_checked: list[str | None] = []  # the answer of the last check, once made


def zmq_problem(recheck: bool = False) -> str | None:
    """None if ``import zmq`` works, else a one-line reason to show the user.

    The answer is kept (panels ask at every redraw) until ``recheck``.
    """
    if _checked and not recheck:
        return _checked[0]
    problem = None
    try:
        importlib.import_module("zmq")
    except (ImportError, OSError) as exc:  # OSError: libzmq fails to load
        problem = (
            f"pyzmq does not import in Blender's Python ({sys.executable}): "
            f"{type(exc).__name__}: {exc}"
        )
    _checked[:] = [problem]
    return problem


def install_target() -> str | None:
    """A folder for ``pip --target``, or None to install into site-packages.

    Blender installed for all users often has a read-only site-packages; pip would
    then fall back to the user site folder, which Blender's Python may not search.
    The user scripts "modules" folder is on Blender's ``sys.path`` and writable.
    """
    site = sysconfig.get_paths()["purelib"]
    if os.access(site, os.W_OK):
        return None
    import bpy  # only inside Blender

    return bpy.utils.user_resource("SCRIPTS", path="modules", create=True)


def install_command(
    requirement: str = REQUIREMENT, target: str | None = None
) -> list[str]:
    """The pip command line installing ``requirement`` into this Python."""
    cmd = [sys.executable, "-m", "pip", "install", "--disable-pip-version-check"]
    if target:
        cmd += ["--target", target]
    return [*cmd, requirement]


def run_install(
    requirement: str = REQUIREMENT, target: str | None = None
) -> tuple[bool, str]:
    """Install ``requirement`` with pip (blocking); returns (ok, message).

    Runs ``ensurepip`` first when pip itself is missing. The message gives pip's
    last lines on failure, since its reasons (no network, no wheel for this Python)
    are what the user needs to see. Uses no ``bpy``, so it may run on a thread;
    ``target`` comes from :func:`install_target`, on the main thread.
    """
    try:
        importlib.import_module("pip")
    except ImportError:
        ok, text = _run([sys.executable, "-m", "ensurepip", "--upgrade"])
        if not ok:
            return False, f"pip is missing and ensurepip failed: {text}"
    ok, text = _run(install_command(requirement, target))
    if not ok:
        return False, f"pip could not install {requirement}: {text}"
    importlib.invalidate_caches()
    if target and target not in sys.path:
        sys.path.append(target)
    problem = zmq_problem(recheck=True)
    if problem is not None:
        return False, f"pip installed {requirement}, but {problem}"
    import zmq

    return True, f"installed pyzmq {zmq.__version__} (libzmq {zmq.zmq_version()})"


def _run(cmd: list[str]) -> tuple[bool, str]:
    """Run ``cmd``; (succeeded, its last output lines or why it did not run)."""
    logger.info("running %s", " ".join(cmd))
    try:
        run = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            timeout=INSTALL_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, str(exc)
    lines = (run.stderr.strip() or run.stdout.strip() or "no output").splitlines()
    tail = " | ".join(line.strip() for line in lines[-3:])
    if run.returncode != 0:
        logger.error("%s failed (%d): %s", cmd[2:5], run.returncode, tail)
        return False, f"exit status {run.returncode}: {tail}"
    return True, tail
