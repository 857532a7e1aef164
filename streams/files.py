"""Reading JSON Lines history files (plain or gzip) in chunks, with byte progress for the CLI."""

from __future__ import annotations

import gzip
import io
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from processors.errors import ConfigError

GZIP_MAGIC = b"\x1f\x8b"


@dataclass(frozen=True, slots=True)
class Chunk:
    path: str
    lines: list[bytes]
    line_nos: list[int]  # 1-based line number of each line in its file
    bytes_done: int  # bytes of the (compressed) files read so far, over all files


def total_bytes(paths: Sequence[Path]) -> int:
    return sum(p.stat().st_size for p in paths)


def check_files(paths: Sequence[str | Path]) -> list[Path]:
    """Fail early, naming the file, when an input cannot be read."""
    out = []
    for raw in paths:
        path = Path(raw)
        if not path.is_file():
            raise ConfigError(f"input file {str(path)!r} does not exist or is not a file")
        out.append(path)
    if not out:
        raise ConfigError("no input files given")
    return out


def read_chunks(paths: Sequence[Path], chunk_lines: int = 20_000) -> Iterator[Chunk]:
    """Yield chunks of raw lines (newline stripped, blank lines skipped but counted)."""
    done_before = 0
    for path in paths:
        with path.open("rb") as raw:
            is_gzip = raw.read(2) == GZIP_MAGIC
            raw.seek(0)
            stream: io.BufferedIOBase = gzip.GzipFile(fileobj=raw) if is_gzip else raw  # type: ignore[assignment]
            lines: list[bytes] = []
            line_nos: list[int] = []
            for line_no, line in enumerate(stream, start=1):
                line = line.rstrip(b"\r\n")
                if not line.strip():
                    continue
                lines.append(line)
                line_nos.append(line_no)
                if len(lines) >= chunk_lines:
                    yield Chunk(str(path), lines, line_nos, done_before + raw.tell())
                    lines, line_nos = [], []
            if lines:
                yield Chunk(str(path), lines, line_nos, done_before + raw.tell())
        done_before += path.stat().st_size
