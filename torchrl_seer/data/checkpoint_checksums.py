"""Checksums that make storage checkpoints refuse corrupted data.

Two layers, used by the checkpointers of :mod:`torchrl_seer.data`:

* :func:`seal_state` / :func:`verify_state` put a CRC32 of every tensor of a state dict
  (raw keys, index tables, compressed payloads, ...) plus one CRC32 of the whole state
  (tensors and plain values alike) under the ``"checksums"`` entry, and check them back:
  a state dict saved with ``torch.save`` by the user is verified when it is loaded.
* :func:`write_checksum_manifest` / :func:`verify_checksum_manifest` write a
  ``CHECKSUMS.sha256`` file listing the SHA-256 of every file a checkpointer wrote in a
  directory, and verify every listed byte before anything is loaded. Any changed byte of a
  listed file or of the manifest itself raises :class:`CheckpointCorruptedError`.
"""

from __future__ import annotations

import hashlib
import re
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "CHECKSUM_MANIFEST",
    "CheckpointCorruptedError",
    "seal_state",
    "verify_checksum_manifest",
    "verify_state",
    "write_checksum_manifest",
]

CHECKSUM_MANIFEST = "CHECKSUMS.sha256"
_MANIFEST_HEADER = "# torchrl_seer checkpoint checksums, format 1"
_MANIFEST_LINE = re.compile(r"([0-9a-f]{64})  ([^\s/][^\n]*)")


class CheckpointCorruptedError(ValueError):
    """A checkpoint's bytes do not match the checksums written with it."""


def _tensor_crc(tensor: torch.Tensor) -> int:
    data = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8)
    return zlib.crc32(data.numpy().tobytes())


def _walk(value: Any, path: str, tensors: dict[str, int], digest: Any) -> None:
    """Feeds ``value`` into ``digest`` and records the CRC32 of each tensor under its path."""
    if isinstance(value, torch.Tensor):
        crc = _tensor_crc(value)
        tensors[path] = crc
        digest.update(f"{path}:tensor:{value.dtype}:{tuple(value.shape)}:{crc};".encode())
    elif isinstance(value, Mapping):
        digest.update(f"{path}:dict:{len(value)};".encode())
        for key in sorted(value, key=repr):
            _walk(value[key], f"{path}/{key}", tensors, digest)
    elif isinstance(value, (list, tuple)):
        digest.update(f"{path}:{type(value).__name__}:{len(value)};".encode())
        for position, item in enumerate(value):
            _walk(item, f"{path}/{position}", tensors, digest)
    else:
        digest.update(f"{path}:{type(value).__name__}:{value!r};".encode())


def _checksums(state: Mapping[str, Any]) -> dict[str, Any]:
    tensors: dict[str, int] = {}
    digest = hashlib.sha256()
    for key in sorted(state):
        if key != "checksums":
            _walk(state[key], key, tensors, digest)
    return {"tensors": tensors, "state": digest.hexdigest()}


def seal_state(state: dict[str, Any]) -> dict[str, Any]:
    """Adds the ``"checksums"`` entry to a state dict (in place) and returns it.

    Args:
        state: a state dict of tensors and plain Python values.

    Returns:
        ``state``, with a CRC32 per tensor and a SHA-256 of the whole state.

    Examples:
        >>> import torch
        >>> state = seal_state({"len": 3, "rows": torch.arange(3)})
        >>> verify_state(state, what="example")  # intact: no error
        >>> state["rows"][0] = 7
        >>> try:
        ...     verify_state(state, what="example")
        ... except CheckpointCorruptedError as error:
        ...     print(str(error).split(" (")[0])
        example: corrupted tensor 'rows'
    """
    state["checksums"] = _checksums(state)
    return state


def verify_state(state: Mapping[str, Any], *, what: str) -> None:
    """Raises :class:`CheckpointCorruptedError` if ``state`` does not match its checksums.

    Args:
        state: a state dict sealed by :func:`seal_state`.

    Keyword Args:
        what: what the state is, for the error message.
    """
    stored = state.get("checksums")
    if not isinstance(stored, Mapping) or set(stored) != {"tensors", "state"}:
        raise CheckpointCorruptedError(f"{what} carries no valid checksums")
    actual = _checksums(state)
    expected_tensors = stored["tensors"]
    if not isinstance(expected_tensors, Mapping):
        raise CheckpointCorruptedError(f"{what}: corrupted checksum table")
    for path, crc in actual["tensors"].items():
        if expected_tensors.get(path) != crc:
            raise CheckpointCorruptedError(
                f"{what}: corrupted tensor {path!r} (CRC32 {crc} does not match the "
                f"stored {expected_tensors.get(path)})"
            )
    if set(expected_tensors) != set(actual["tensors"]) or stored["state"] != actual["state"]:
        raise CheckpointCorruptedError(
            f"{what}: corrupted checkpoint (its structure or plain values do not match the "
            "stored checksum)"
        )


def _sha256(file: Path) -> str:
    digest = hashlib.sha256()
    with open(file, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_checksum_manifest(directory: str | Path) -> None:
    """Writes ``CHECKSUMS.sha256``: the SHA-256 of every file under ``directory``.

    Args:
        directory: a checkpoint directory, after every file of it has been written.

    Examples:
        >>> import tempfile
        >>> from pathlib import Path
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     _ = (Path(folder) / "rows.bin").write_bytes(b"abc")
        ...     write_checksum_manifest(folder)
        ...     verify_checksum_manifest(folder)  # intact: no error
        ...     _ = (Path(folder) / "rows.bin").write_bytes(b"abd")
        ...     try:
        ...         verify_checksum_manifest(folder)
        ...     except CheckpointCorruptedError as error:
        ...         print("rows.bin" in str(error))
        True
    """
    directory = Path(directory)
    files = sorted(
        p.relative_to(directory).as_posix()
        for p in directory.rglob("*")
        if p.is_file() and p.name != CHECKSUM_MANIFEST
    )
    lines = [_MANIFEST_HEADER, *(f"{_sha256(directory / name)}  {name}" for name in files)]
    (directory / CHECKSUM_MANIFEST).write_text("\n".join(lines) + "\n")


def verify_checksum_manifest(directory: str | Path) -> None:
    """Checks every file listed in ``CHECKSUMS.sha256`` against its SHA-256.

    Args:
        directory: a checkpoint directory written with :func:`write_checksum_manifest`.

    Raises:
        CheckpointCorruptedError: the manifest is missing or malformed, a listed file is
            missing, or a file's bytes do not match.
    """
    directory = Path(directory)
    manifest = directory / CHECKSUM_MANIFEST
    if not manifest.exists():
        raise CheckpointCorruptedError(
            f"no {CHECKSUM_MANIFEST} in {directory}: this checkpoint carries no checksums "
            "(written by another storage or an older version), so it cannot be verified"
        )
    try:
        text = manifest.read_bytes().decode("ascii")
    except UnicodeDecodeError as error:
        raise CheckpointCorruptedError(f"corrupted checksum manifest {manifest}") from error
    lines = text.split("\n")
    if lines[0] != _MANIFEST_HEADER or lines[-1] != "" or len(lines) < 3:
        raise CheckpointCorruptedError(f"corrupted checksum manifest {manifest}")
    for line in lines[1:-1]:
        match = _MANIFEST_LINE.fullmatch(line)
        if match is None:
            raise CheckpointCorruptedError(f"corrupted checksum manifest {manifest}: {line!r}")
        expected, name = match.groups()
        file = directory / name
        if not file.is_file():
            raise CheckpointCorruptedError(f"checkpoint file {file} is missing")
        if _sha256(file) != expected:
            raise CheckpointCorruptedError(
                f"corrupted checkpoint file {file}: its SHA-256 does not match {manifest.name}"
            )
