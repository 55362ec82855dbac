"""Checkpoints: safetensors weights plus JSON metadata in the same file.

Loading never executes code: safetensors holds only tensors, and the metadata is
JSON. Files are written to a temporary name and renamed, so a crash never leaves a
half-written checkpoint behind.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

logger = logging.getLogger(__name__)

__all__ = ["CheckpointError", "load_checkpoint", "read_metadata", "save_checkpoint"]

FORMAT = "motionode-checkpoint/1"


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded; the message names the file and the
    problem."""


def save_checkpoint(
    path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict
) -> None:
    """Write ``tensors`` and JSON-able ``metadata`` atomically to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"format": FORMAT, "metadata": json.dumps(metadata, sort_keys=True)}
    flat = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        save_file(flat, tmp, metadata=meta)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a model is meant to be shared
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    logger.info("checkpoint saved: %s", path)


def _header(path: Path) -> dict:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(
            f"{path}: not a readable safetensors file ({exc})"
        ) from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(
            f"{path}: expected format {FORMAT!r}, got {meta.get('format')!r}"
        )
    try:
        return json.loads(meta["metadata"])
    except (KeyError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: metadata is not valid JSON ({exc})") from None


def read_metadata(path: str | os.PathLike) -> dict:
    """The JSON metadata of a checkpoint, without loading its tensors."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    return _header(path)


def load_checkpoint(
    path: str | os.PathLike, device: str | torch.device = "cpu"
) -> tuple[dict, dict]:
    """Tensors and metadata of a checkpoint.

    Raises:
        CheckpointError: missing file, not safetensors, or wrong format.
    """
    meta = read_metadata(path)
    tensors = load_file(str(path), device=str(device))
    return tensors, meta
