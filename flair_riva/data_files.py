"""Reading the data files of flair-riva: the one error for malformed input and UTF-8 lines with line numbers.

Malformed input raises :class:`CorpusFormatError` (a ``ValueError``) whose message starts with
``<file>:<line>:`` (1-based line numbers); a missing file raises ``FileNotFoundError`` naming the path.
The IMGID reader (:mod:`flair_riva.imgid`) and the pair readers (:mod:`flair_riva.pairs`) build on this.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path


class CorpusFormatError(ValueError):
    """Malformed data file. ``str(err)`` is ``"<path>:<line>: <what is wrong>"`` (line is 1-based;
    it is omitted for problems of the whole file). The parts are ``err.path``, ``err.line``, ``err.reason``."""

    def __init__(self, path: str | Path, line: int | None, reason: str) -> None:
        self.path = Path(path)
        self.line = line
        self.reason = reason
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {reason}")

    def __reduce__(self):  # keep the structured fields when pickled (e.g. across DataLoader workers)
        return (type(self), (self.path, self.line, self.reason))




def _iter_decoded_lines(path: Path, lenient: bool = False) -> Iterator[tuple[int, str | CorpusFormatError]]:
    """Yield ``(line_number, line)`` with the line ending kept; bytes that are not UTF-8 raise
    :class:`CorpusFormatError` at their line (with ``lenient=True`` the error is yielded in place of the
    line, so a caller that skips bad records can go on). A UTF-8 byte-order mark at the start is dropped."""
    with open(path, "rb") as handle:
        for lineno, raw in enumerate(handle, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                error = CorpusFormatError(
                    path, lineno,
                    f"not valid UTF-8 (byte 0x{raw[err.start]:02x} at column {err.start + 1}); "
                    "the file must be UTF-8 encoded",
                )
                if not lenient:
                    raise error from None
                yield lineno, error
                continue
            if lineno == 1 and line.startswith("\ufeff"):
                line = line[1:]
            yield lineno, line


def _strip_newline(line: str) -> str:
    if line.endswith("\n"):
        line = line[:-1]
    if line.endswith("\r"):
        line = line[:-1]
    return line


def _require_file(path: str | Path, what: str) -> Path:
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"{what} {path} does not exist")
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} is not a file")
    return path
