"""Model files: opened once and checked by their descriptor; the newest match of a watch pattern.

A local model file is opened once: first without reading rights (``O_PATH``, so that opening a
device or a FIFO has no effect and cannot block), then its descriptor is checked — a regular file,
whose real path (``/proc/self/fd/N``) is under the policy's roots — and reopened through that
descriptor for reading. The sha256 pin and the loader read that same open file, so a symbolic
link switched after the check cannot make them read another one. A remote URI (``scheme://``) is
read once, through Beam's FileSystems, into an anonymous temporary file.

A watch pattern is a literal directory and a file name with ``*`` (any characters) and ``?``
(one character): no ``**``, no brackets or braces, at most ``MAX_WATCH_PATTERN_CHARS``
characters. Each check lists that one directory, looking at no more than ``MAX_WATCH_ENTRIES``
entries, and matches names without backtracking. A match outside the roots its model may be
loaded from (a link out) is skipped exactly as if it did not exist.

Linux only: descriptors are checked through ``/proc/self/fd``.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
import re
import shutil
import stat
import tempfile
from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO, Iterator, Optional

from inferbridge.policy import LoadPolicy, local_path, relative_path_hint

if TYPE_CHECKING:
    from inferbridge.spec import Model

MAX_WATCH_PATTERN_CHARS = 1024
# Entries of the watched directory looked at per check; the rest are not seen.
MAX_WATCH_ENTRIES = 10_000
_CHUNK = 1 << 20
_KINDS = {
    stat.S_IFDIR: "a directory",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFIFO: "a FIFO",
    stat.S_IFSOCK: "a socket",
}


class ModelFile:
    """One checked model file, open for reading; its loaders read ``file`` or ``data()``."""

    def __init__(self, file: BinaryIO, uri: str) -> None:
        self.file = file
        self._uri = uri

    def data(self) -> bytes:
        self.file.seek(0)
        return self.file.read()

    @contextlib.contextmanager
    def path(self) -> Iterator[str]:
        """A path that leads to this open file, for loaders that take only paths.

        It is a link to ``/proc/self/fd/N`` named like the configured file (some loaders go by
        the extension), in a private directory removed afterwards.
        """
        self.file.seek(0)
        name = self._uri.rstrip("/").rpartition("/")[2]
        with tempfile.TemporaryDirectory(prefix="inferbridge-model-") as directory:
            link = os.path.join(directory, name if name not in ("", ".", "..") else "model")
            os.symlink(f"/proc/self/fd/{self.file.fileno()}", link)
            yield link


@contextlib.contextmanager
def open_model(model: Model, uri: str, policy: LoadPolicy, where: str) -> Iterator[ModelFile]:
    """``model``'s file at ``uri``, checked against ``policy`` and its sha256 pin, open once."""
    policy.check(model, uri, where)
    path = local_path(uri)
    with _open_local(model, uri, path, policy, where) if path is not None else _copy_remote(uri) as file:
        if model.sha256:
            _verify_sha256(file, model.sha256, uri, where)
        file.seek(0)
        yield ModelFile(file, uri)


def check_regular_file(uri: str, where: str) -> None:
    """Raises ValueError unless ``uri`` is a regular file this process can open (a remote URI:
    that exists). Nothing is read."""
    from apache_beam.io.filesystems import FileSystems

    path = local_path(uri)
    if path is None:
        if not FileSystems.exists(uri):
            raise ValueError(_not_found(uri, where, "does not exist"))
        return
    handle = _open_path(uri, path, where)
    try:
        _require_regular(handle, uri, where)
    finally:
        os.close(handle)


def _not_found(uri: str, where: str, why: str) -> str:
    return (
        f"{where}.uri={uri!r} does not exist or is not readable from the process that builds the "
        f"pipeline ({why}); give a path or URI the workers can read{relative_path_hint(uri)}"
    )


def _open_path(uri: str, path: str, where: str) -> int:
    try:
        return os.open(path, os.O_PATH | os.O_CLOEXEC)
    except OSError as e:  # its strerror only: the message names the configured value
        raise ValueError(_not_found(uri, where, e.strerror or type(e).__name__)) from None


def _require_regular(handle: int, uri: str, where: str) -> None:
    mode = os.fstat(handle).st_mode
    if not stat.S_ISREG(mode):
        kind = _KINDS.get(stat.S_IFMT(mode), "not a regular file")
        raise ValueError(f"{where}.uri={uri!r} is {kind}; allowed: a regular file (the model file itself)")


def _open_local(model: Model, uri: str, path: str, policy: LoadPolicy, where: str) -> BinaryIO:
    handle = _open_path(uri, path, where)
    try:
        # The roots first: what kind of thing lies outside them is not told either.
        policy.check_opened(model, uri, os.readlink(f"/proc/self/fd/{handle}"), where)
        _require_regular(handle, uri, where)
        # Reopened through the checked descriptor, never by the path again. O_NONBLOCK: even
        # were it not a regular file, nothing would wait for a writer.
        flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
        return os.fdopen(os.open(f"/proc/self/fd/{handle}", flags), "rb")
    finally:
        os.close(handle)


def _copy_remote(uri: str) -> BinaryIO:
    from apache_beam.io.filesystem import CompressionTypes
    from apache_beam.io.filesystems import FileSystems

    copy = tempfile.TemporaryFile()
    try:
        # The bytes stored (no transparent decompression of *.gz and the like): what a pin names.
        with FileSystems.open(uri, compression_type=CompressionTypes.UNCOMPRESSED) as source:
            shutil.copyfileobj(source, copy, _CHUNK)
    except BaseException:
        copy.close()
        raise
    return copy  # type: ignore[return-value]


def _verify_sha256(file: BinaryIO, expected: str, uri: str, where: str) -> None:
    digest = hashlib.sha256()
    while chunk := file.read(_CHUNK):
        digest.update(chunk)
    actual = digest.hexdigest()
    if actual != expected.lower():
        raise ValueError(
            f"{where}.sha256 does not match {uri!r}: expected {expected.lower()}, actual {actual}; "
            "the file changed, or the pin is wrong"
        )


# --- Watch patterns -----------------------------------------------------------------------------


@dataclass(frozen=True)
class WatchPattern:
    """A parsed watch pattern: its directory as configured, and the pieces of its file name
    between ``*``, each a regular expression of literals and ``?`` (no repetition) and the
    number of characters it matches."""

    pattern: str
    directory: str
    pieces: tuple[tuple[re.Pattern[str], int], ...]

    def matches(self, name: str) -> bool:
        """Whether ``name`` matches: the first piece at the start, the last at the end, each
        other at its leftmost place after the previous one. No backtracking, so the time is
        bounded by the name's length times the pattern's."""
        (first, first_length), *rest = self.pieces
        if not rest:
            return first.fullmatch(name) is not None
        *middle, (last, last_length) = rest
        if first.match(name) is None:
            return False
        position = first_length
        for piece, _ in middle:
            found = piece.search(name, position)
            if found is None:
                return False
            position = found.end()
        end = len(name) - last_length
        return end >= position and last.fullmatch(name, end) is not None


def parse_watch_pattern(pattern: str, where: str) -> WatchPattern:
    """The pattern's directory and name matcher; ValueError naming what is not allowed."""
    field = f"{where}.watch_pattern"
    allowed = (
        "allowed: a directory without wildcards, then a file name in which '*' matches any "
        "characters and '?' one, e.g. '/models/digits/model-*.pkl'"
    )
    if not isinstance(pattern, str) or not pattern:
        raise ValueError(f"{field} must be a non-empty string, got {pattern!r}")
    if len(pattern) > MAX_WATCH_PATTERN_CHARS:
        raise ValueError(
            f"{field}={pattern[:60]!r}... has {len(pattern)} characters; allowed: at most "
            f"{MAX_WATCH_PATTERN_CHARS}"
        )
    directory, slash, name = pattern.rpartition("/")
    if not slash or not name or name in (".", ".."):
        raise ValueError(f"{field}={pattern!r} names no directory and file; {allowed}")
    if "**" in pattern:
        raise ValueError(f"{field}={pattern!r} contains '**': nothing is matched recursively; {allowed}")
    special = sorted({c for c in pattern if c in "[]{}\\"} | {c for c in directory if c in "*?"})
    if special:
        raise ValueError(f"{field}={pattern!r} contains {', '.join(map(repr, special))}; {allowed}")
    if not directory or directory.endswith("://"):  # "/x-*" or "file:///x-*": the root directory
        directory += "/"
    pieces = tuple(
        (re.compile(".".join(map(re.escape, literal.split("?"))), re.DOTALL), len(literal))
        for literal in name.split("*")
    )
    return WatchPattern(pattern, directory, pieces)


def newest_match(watch: WatchPattern, model: Model, policy: LoadPolicy) -> Optional[str]:
    """The newest regular file matching ``watch`` where ``model`` may be loaded from, or None.

    Nothing outside those roots is looked at: a pattern whose directory leads outside them
    matches nothing, and a match that leads outside them is skipped as if it did not exist.
    """
    if not policy.allows(model, watch.directory):
        return None
    newest: Optional[tuple[float, str]] = None
    for path, modified in _candidates(watch, model, policy):
        if newest is None or (modified, path) > newest:
            newest = (modified, path)
    return None if newest is None else newest[1]


def _candidates(watch: WatchPattern, model: Model, policy: LoadPolicy) -> Iterator[tuple[str, float]]:
    """(path, modification time) of each match allowed by the policy, from one listing."""
    from apache_beam.io.filesystems import FileSystems

    directory = local_path(watch.directory)
    base = watch.directory.rstrip("/") + "/"
    if directory is None:
        listing = FileSystems.match([base + "*"], limits=[MAX_WATCH_ENTRIES])[0].metadata_list
        for metadata in listing:
            if watch.matches(metadata.path.rpartition("/")[2]) and policy.allows(model, metadata.path):
                yield metadata.path, metadata.last_updated_in_seconds
        return
    with os.scandir(directory) as entries:
        names = [e.name for e in itertools.islice(entries, MAX_WATCH_ENTRIES) if watch.matches(e.name)]
    for name in names:
        path = base + name
        if not policy.allows(model, path):  # resolved before anything about the target is read
            continue
        try:
            status = os.stat(directory.rstrip("/") + "/" + name)
        except OSError:
            continue
        if stat.S_ISREG(status.st_mode):
            yield path, status.st_mtime
