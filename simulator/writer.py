"""Write a simulation to disk: the events as JSON Lines and the truth next to them.

The only module of the simulator that touches files. Both files are written to a temporary name
and renamed into place, so a reader never sees half a file. Gzip output uses a fixed header
time, so the same seed gives the same bytes.
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Final

from simulator.model import Simulation
from simulator.truth import truth_path_for

CHUNK_LINES: Final = 20_000


@dataclass(frozen=True, slots=True)
class WriteSummary:
    events_path: Path
    truth_path: Path
    n_lines: int
    n_bytes: int


def events_path_for(out: str | Path, gzip_out: bool) -> Path:
    """The events file: `out` itself, with `.gz` appended when compressing and missing."""
    p = Path(out)
    if gzip_out and not p.name.endswith(".gz"):
        p = p.with_name(p.name + ".gz")
    return p


def _open(path: Path, gzip_out: bool) -> tuple[IO[bytes], IO[bytes]]:
    raw = path.open("wb")
    if not gzip_out:
        return raw, raw
    return gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=3), raw


def _write_lines(path: Path, lines: Iterable[bytes], gzip_out: bool) -> int:
    tmp = path.with_name(path.name + ".tmp")
    out, raw = _open(tmp, gzip_out)
    try:
        chunk: list[bytes] = []
        for line in lines:
            chunk.append(line)
            if len(chunk) >= CHUNK_LINES:
                out.write(b"\n".join(chunk) + b"\n")
                chunk.clear()
        if chunk:
            out.write(b"\n".join(chunk) + b"\n")
    finally:
        out.close()
        raw.close()
    os.replace(tmp, path)
    return path.stat().st_size


def write_simulation(sim: Simulation, out: str | Path, gzip_out: bool = False) -> WriteSummary:
    """Write `sim.lines` to the events file and `sim.truth` to its `.truth.jsonl` sibling."""
    events_path = events_path_for(out, gzip_out)
    events_path.parent.mkdir(parents=True, exist_ok=True)
    n_bytes = _write_lines(events_path, sim.lines, gzip_out)
    truth_path = truth_path_for(events_path)
    _write_lines(truth_path, (line.rstrip(b"\n") for line in sim.truth.to_jsonl()), gzip_out)
    return WriteSummary(events_path, truth_path, len(sim.lines), n_bytes)
