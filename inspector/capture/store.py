"""Files on disk for the capture writer: atomic writes, appends, and a size cap that deletes the oldest day.

Only the capture writer thread touches a `Store` (and the `Disk` under it). `Disk` is the seam a test puts a
twin behind (a disk that blocks until the test lets it go).

Atomic: every file is written to `<root>/.partial-<pid>/` (same file system), flushed and fsynced, then moved
into place with `os.replace`, so a reader (or a SIGKILL) never meets half an image; what a killed writer left in
its `.partial-<pid>/` is removed by the next writer that starts (workers sharing a folder keep their own). CSV
and JSON lines are appended with one `write()` each, after the image they describe: a line names only files
already complete, and a reader skips a last line without its newline.

The cap: `Store` counts the bytes it wrote per day folder (`yyyy-mm-dd`, found on disk at start); before a write
that would pass the cap, it deletes whole days, oldest first, never the day being written or a newer one; when
that is not enough the write is refused (`over_cap`) and nothing is deleted for it.
"""

from __future__ import annotations

import os
import re
import shutil
import uuid
from pathlib import Path

DAY = re.compile(r"\d{4}-\d{2}-\d{2}")
PARTIAL = ".partial-"


def _alive(pid: str) -> bool:
    """Whether the process that owns a partial folder still runs (on this machine)."""
    if not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


class Disk:
    """The file operations the writer needs, on the real file system."""

    def write(self, path: Path, data: bytes, partial: Path) -> None:
        """`data` at `path` whole or not at all: a temporary file in `partial`, fsynced, then renamed."""
        path.parent.mkdir(parents=True, exist_ok=True)
        partial.mkdir(parents=True, exist_ok=True)
        tmp = partial / f"{uuid.uuid4().hex}.tmp"
        try:
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def append(self, path: Path, data: bytes) -> None:
        """One `write()` at the end of `path` (O_APPEND: whole lines, never interleaved)."""
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)

    def remove(self, path: Path) -> None:
        shutil.rmtree(path, ignore_errors=True)

    def usage(self, path: Path) -> int:
        """Bytes of the files under `path`."""
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


class Store:
    """One root of day folders under one byte cap (captures: capture.folder; crops: capture.folder/evidence)."""

    def __init__(self, root: Path, cap_bytes: int, disk: Disk | None = None) -> None:
        self.root, self.cap, self.disk = root, cap_bytes, disk or Disk()
        self.partial = root / f"{PARTIAL}{os.getpid()}"
        root.mkdir(parents=True, exist_ok=True)
        for left in root.glob(f"{PARTIAL}*"):  # what killed writers left half-written
            if left == self.partial or not _alive(left.name[len(PARTIAL):]):
                self.disk.remove(left)
        self.days = {p.name: self.disk.usage(p) for p in root.iterdir() if p.is_dir() and DAY.fullmatch(p.name)}
        self.deleted_days = 0

    @property
    def used(self) -> int:
        return sum(self.days.values())

    def room(self, day: str, nbytes: int) -> bool:
        """Make room for `nbytes` more in `day`, deleting older days; False: not possible within the cap."""
        while self.used + nbytes > self.cap:
            older = sorted(d for d in self.days if d < day)
            if not older:
                return False
            self.disk.remove(self.root / older[0])
            del self.days[older[0]]
            self.deleted_days += 1
        self.days[day] = self.days.get(day, 0) + nbytes
        return True

    def write(self, day: str, relative: str, data: bytes) -> None:
        """An atomic file at <root>/<day>/<relative>; `room` was asked first."""
        self.disk.write(self.root / day / relative, data, self.partial)

    def append(self, day: str, relative: str, data: bytes, header: bytes = b"") -> None:
        """Lines at the end of <root>/<day>/<relative>; a new file starts with `header`, written atomically."""
        path = self.root / day / relative
        if header and not path.exists():
            self.disk.write(path, header, self.partial)
        self.disk.append(path, data)
