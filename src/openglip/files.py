"""Writing files so that a crash or a kill never leaves a half-written output behind, and checking output
paths before any work is done (so that a bad ``--out`` is found in a second, not after an hour of inference)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from safetensors import safe_open

from .errors import UsageError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Callable[[str], object]) -> None:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, then rename it over ``path``.

    The file gets the permissions a plain ``open(path, "w")`` would give it (``0o666`` minus the umask):
    ``mkstemp`` creates its files ``0o600``, which would make every output private to its writer.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_safetensors(path: str | os.PathLike) -> tuple[dict[str, str], dict]:
    """``(metadata, tensors)`` of a safetensors file (CPU torch tensors).

    Raises:
        UsageError: the file cannot be read as safetensors (the message names it).
    """

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not iterable)
    except Exception as err:
        raise UsageError(
            f"cannot read safetensors file {path}: {str(err).splitlines()[0] if str(err) else err!r}"
        ) from None
    return meta, tensors


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def _probe_dir(folder: Path, what: str) -> None:
    """Create ``folder`` if needed and check that a file can be created in it (the way atomic_write does)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise UsageError(f"{what} {folder}: a file is in the way (a directory is needed there)") from None
    except OSError as err:
        raise UsageError(f"{what} {folder}: cannot create the directory ({err.strerror})") from None
    if not folder.is_dir():
        raise UsageError(f"{what} {folder}: not a directory")
    try:
        fd, probe = tempfile.mkstemp(prefix=".openglip-probe.", suffix=".tmp", dir=folder)
    except OSError as err:
        raise UsageError(
            f"{what} {folder}: cannot write there ({err.strerror}); choose another path"
        ) from None
    os.close(fd)
    os.unlink(probe)


def check_output_file(path: str | os.PathLike, what: str = "--out") -> Path:
    """Check, before any work, that ``path`` can be written as a file (atomically, by replacing it).

    Creates missing parent folders. Raises :class:`UsageError` when ``path`` is a directory, its folder cannot
    be created or written, or an existing file at ``path`` cannot be replaced (read-only or immutable).
    """
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{what} {path} is a directory; give a file name, e.g. {path / 'results.json'}")
    _probe_dir(path.parent if str(path.parent) else Path("."), what)
    if path.exists():
        # a read-only or immutable (chattr +i) file: refuse rather than replace it (or fail at the end)
        try:
            with open(path, "r+b"):
                pass
        except OSError as err:
            raise UsageError(
                f"{what} {path}: cannot be replaced ({err.strerror}); choose another path"
            ) from None
    return path


def check_output_dir(path: str | os.PathLike, what: str = "--out") -> Path:
    """Check, before any work, that ``path`` is (or can be created as) a writable directory.

    Raises :class:`UsageError` when a file is in the way or the directory cannot be created or written.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UsageError(f"{what} {path} is a file; give a directory")
    _probe_dir(path, what)
    return path
