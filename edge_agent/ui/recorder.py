"""Recording one sensor's signals from the page, as a CSV the technician downloads.

The UI process opens its own `watch` on the daemon for that sensor at full rate (up to
1,000 points a second, no history, no results or events) and appends each sample to a CSV
file in a private temporary directory: host time, then one column per channel in physical
units. One recording at a time; it stops by itself after `MAX_S` seconds or `MAX_BYTES`,
and the file is removed when a new recording starts or the UI process exits. (For a capture
of the raw link bytes that `replay` can play back, use `edge-agent record` on a stopped
daemon.)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

log = logging.getLogger(__name__)

MAX_S = 600.0
MAX_BYTES = 50 * 1024 * 1024


@dataclass
class Recording:
    """One recording: where it is and how far it got."""

    sensor: str
    path: Path
    started: float
    rows: int = 0
    bytes: int = 0
    stopped: float | None = None
    reason: str | None = None

    def describe(self) -> dict[str, Any]:
        """JSON-ready figures for the page."""
        end = self.stopped if self.stopped is not None else time.time()
        return {
            "sensor": self.sensor,
            "rows": self.rows,
            "bytes": self.bytes,
            "seconds": round(end - self.started, 1),
            "recording": self.stopped is None,
            "reason": self.reason,
        }


class Recorder:
    """Starts, stops and hands over the page's one recording."""

    def __init__(self, control_socket: Path) -> None:
        self.control_socket = control_socket
        self.directory = Path(tempfile.mkdtemp(prefix="edge-agent-ui-"))
        self.current: Recording | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self, sensor: str) -> dict[str, Any]:
        """Start recording `sensor` (stopping and discarding a previous recording)."""
        await self.stop()
        if self.current is not None:
            with contextlib.suppress(OSError):
                self.current.path.unlink()
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in sensor)[:64] or "sensor"
        stamp = time.strftime("%Y%m%dT%H%M%S")
        recording = Recording(sensor, self.directory / f"{safe}-{stamp}.csv", time.time())
        self.current = recording
        self._task = asyncio.create_task(self._record(recording), name="ui-recording")
        return {"ok": True, **recording.describe()}

    async def stop(self) -> dict[str, Any]:
        """Stop the running recording (if any); the file stays for download."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if self.current is None:
            return {"ok": False, "error": "nothing was recorded"}
        if self.current.stopped is None:
            self.current.stopped = time.time()
            self.current.reason = "stopped"
        return {"ok": True, **self.current.describe()}

    def download(self) -> tuple[str, bytes] | None:
        """(file name, CSV) of the last recording once stopped, or None."""
        recording = self.current
        if recording is None or recording.stopped is None or not recording.path.exists():
            return None
        return recording.path.name, recording.path.read_bytes()

    async def close(self) -> None:
        """Stop and remove every file; safe to call twice."""
        await self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)

    async def _record(self, recording: Recording) -> None:
        try:
            reader, writer = await asyncio.open_unix_connection(self.control_socket, limit=1 << 22)
        except OSError as err:
            recording.stopped, recording.reason = time.time(), f"daemon not answering: {err}"
            return
        request = {
            "cmd": "watch",
            "sensors": [recording.sensor],
            "points": 1000,
            "history_s": 0,
            "health_s": 60,
            "results": False,
            "events": False,
        }
        try:
            writer.write(json.dumps(request).encode() + b"\n")
            with recording.path.open("w", encoding="utf-8", newline="") as out:
                await self._copy(reader, out, recording)
        except (OSError, ValueError) as err:
            recording.reason = f"stopped: {err}"
        finally:
            if recording.stopped is None:
                recording.stopped = time.time()
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _copy(self, reader: asyncio.StreamReader, out: TextIO, recording: Recording) -> None:
        header: list[str] | None = None
        while line := await reader.readline():
            record = json.loads(line)
            if not isinstance(record, dict):
                continue
            if record.get("ok") is False:
                recording.reason = str(record.get("error"))[:200]
                return
            if record.get("type") != "signals":
                continue
            names = [f"{c} ({u})" for c, u in zip(record["channels"], record["units"], strict=True)]
            if header != names:
                header = names
                out.write(",".join(["t", *(n.replace(",", ";") for n in names)]) + "\n")
            rows = zip(record["t"], *record["v"], strict=True)
            text = "".join(",".join(repr(float(x)) for x in row) + "\n" for row in rows)
            out.write(text)
            recording.rows += len(record["t"])
            recording.bytes += len(text)
            if recording.bytes > MAX_BYTES or time.time() - recording.started > MAX_S:
                recording.stopped, recording.reason = time.time(), "limit reached"
                return
