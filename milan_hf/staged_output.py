"""Outputs that an interrupted run never leaves half-written, and never written over a user's.

A directory is built in a staging directory beside its target (same filesystem, so the final
move is a rename) and swapped in whole. A previous version is moved aside first and deleted
only once the new one is in place, so at every moment the target is either the old complete
output or the new complete one. Files are written the same way (:func:`staged_file`).

Before anything is replaced, :func:`require_own_output` checks that milan_hf wrote everything
there (recognised by its own metadata file and the names it writes): a directory that also
holds a user's notes or folders is refused, naming them, and nothing is touched.
:func:`check_output_location` refuses output paths that are files, the working directory, or
directories that hold the run's own inputs.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from fnmatch import fnmatchcase
from pathlib import Path
from typing import IO

# Names of staging leftovers beside a target: ".<name>.partial-*" while building, and
# ".<name>.old-*" for the previous version between the two renames of a swap.
_PARTIAL = ".partial-"
_OLD = ".old-"


def replace_directory(source: Path, target: Path) -> None:
    """Move the complete ``source`` directory to ``target``, replacing what was there."""
    source, target = Path(source), Path(target)
    if target.exists():
        old = target.parent / f".{target.name}{_OLD}{uuid.uuid4().hex[:8]}"
        os.replace(target, old)
        os.replace(source, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(source, target)


@contextmanager
def staged_directory(target: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty staging directory beside ``target``; when the block finishes without an
    error it replaces ``target``, otherwise it is removed."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}{_PARTIAL}", dir=target.parent))
    try:
        yield staging
        replace_directory(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


@contextmanager
def staged_file(
    path: str | os.PathLike, mode: str = "w", *, newline: str | None = None
) -> Iterator[IO]:
    """Yield a file opened beside ``path``; when the block finishes without an error it is
    renamed over ``path``, otherwise it is removed (a crash never leaves half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    encoding = None if "b" in mode else "utf-8"
    try:
        with open(temporary, mode, newline=newline, encoding=encoding) as handle:
            yield handle
        os.replace(temporary, path)
    finally:
        if temporary.exists():
            temporary.unlink()


def write_text_atomically(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to a temporary file beside ``path``, then rename it over ``path``."""
    with staged_file(path) as handle:
        handle.write(text)
    return Path(path)


def is_staging_leftover(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a staging directory or set-aside old version of this module."""
    name = Path(path).name
    return name.startswith(".") and (_PARTIAL in name or _OLD in name)


def remove_stale_staging(parent: str | os.PathLike, name: str | None = None) -> None:
    """Delete what interrupted writes left in ``parent``: the staging directories and old
    versions of target ``name``, or of every target when ``name`` is None."""
    parent = Path(parent)
    if not parent.is_dir():
        return
    prefix = "." if name is None else f".{name}"
    for entry in parent.iterdir():
        if entry.name.startswith(prefix) and is_staging_leftover(entry):
            shutil.rmtree(entry, ignore_errors=True)


def foreign_entries(directory: str | os.PathLike, owned: Iterable[str]) -> list[str]:
    """Entries of ``directory`` that milan_hf did not write, as paths relative to it.

    ``owned`` lists the relative paths (``fnmatch`` patterns) milan_hf writes there: a matched
    path is owned whole; a folder that is not matched but holds owned paths (``thumbs`` for
    ``thumbs/<build>``) is looked into, and everything else in it is foreign. Staging leftovers
    of this module are always owned.
    """
    directory = Path(directory)
    patterns = [Path(entry).as_posix() for entry in owned]
    found: list[str] = []

    def visit(folder: Path, relative: str) -> None:
        for entry in sorted(folder.iterdir()):
            name = f"{relative}/{entry.name}" if relative else entry.name
            if is_staging_leftover(entry) or any(fnmatchcase(name, p) for p in patterns):
                continue
            holds_owned = any(p.startswith(f"{name}/") for p in patterns)
            if holds_owned and entry.is_dir() and not entry.is_symlink():
                visit(entry, name)
            else:
                found.append(name + ("/" if entry.is_dir() else ""))

    if directory.is_dir():
        visit(directory, "")
    return found


def require_own_output(
    directory: str | os.PathLike,
    *,
    metadata_file: str,
    owned: Iterable[str],
    what: str = "output",
) -> None:
    """Refuse to replace ``directory`` unless milan_hf wrote everything in it.

    An empty or missing directory passes. Otherwise its ``metadata_file`` must be there (the
    sign that milan_hf wrote it) and every entry must be one of ``owned`` (see
    :func:`foreign_entries`); the error names what is not, and nothing has been touched.
    """
    directory = Path(directory)
    if not directory.is_dir() or not any(directory.iterdir()):
        return
    if not (directory / metadata_file).is_file():
        raise FileExistsError(
            f"{directory} holds no {metadata_file}, so milan_hf did not write it, and is not "
            f"empty; refusing to replace it, nothing was touched: choose a new or empty {what} "
            "directory"
        )
    foreign = foreign_entries(directory, [metadata_file, *owned])
    if foreign:
        shown = ", ".join(foreign[:5]) + (
            f" and {len(foreign) - 5} more" if len(foreign) > 5 else ""
        )
        raise FileExistsError(
            f"{directory} holds files milan_hf did not write ({shown}); refusing to replace "
            f"it, nothing was touched: move them away or choose another {what} directory"
        )


def check_output_location(
    output: str | os.PathLike,
    inputs: Iterable[str | os.PathLike | None] = (),
    *,
    flag: str = "output",
) -> Path:
    """Refuse an output path that would overwrite or mix with what is not an output: an
    existing file, the working directory (or a folder holding it), or a path that holds or
    lies inside one of the local ``inputs`` (probe images, model, checkpoint...)."""
    output = Path(output).expanduser()
    resolved = output.resolve()
    hint = f"give a new or empty directory for the results, e.g. {flag} results"
    if output.exists() and not output.is_dir():
        raise ValueError(f"{flag} {str(output)!r} is an existing file, not a directory; {hint}")
    cwd = Path.cwd().resolve()
    if resolved == cwd or resolved in cwd.parents:
        raise ValueError(f"{flag} {str(output)!r} is the working directory or holds it; {hint}")
    for given in inputs:
        if given is None or not isinstance(given, (str, os.PathLike)):
            continue
        location = Path(given).expanduser()
        if not location.exists():
            continue  # a hub id or model name, not a local path
        location = location.resolve()
        if resolved == location or resolved in location.parents or location in resolved.parents:
            raise ValueError(
                f"{flag} {str(output)!r} overlaps the input {str(given)!r}; outputs and "
                f"inputs must not share a directory: {hint}"
            )
    return output
