"""Trigger scripts, run exactly as JetStream documents: serial, asynchronous, silent.

:meth:`TriggerRunner.fire` never waits: it puts the event on a queue and returns. One task
takes events off the queue in order and runs ``<trigger dir>/<event name>`` for each, one
at a time, when that file exists and is executable (checked when the event's turn comes).
A script that runs long delays only the triggers after it; one that never exits blocks
them, as documented.

Each script runs with the trigger directory as its working directory, its arguments as
positional parameters, the event's data on stdin (or nothing), and a small, predictable
environment: ``PATH`` (the folder of the running ``jetstream`` commands first, then the
system folders), ``HOME``, ``LANG=C.UTF-8``, ``JETSTREAM_API_CONTROL_PORT`` (the real
control port, so ``jetstream api`` reaches this server), ``JETSTREAM_TRIGGER_DIR`` and
``JETSTREAM_EVENT``. Nothing else of the server's environment is passed on.

Silent by default: output is discarded and failures are not reported. With
``--trigger-log`` every run is logged (event, arguments, exit status, duration), missing
or non-executable scripts are logged, and the script's output is copied to the server's
stderr, never to the ``--log`` file.

At most ``MAX_QUEUED`` events wait; when the queue is full a new event is dropped and a
warning logged. On shutdown the runner stops taking events and lets the running and queued
scripts go on for up to ``--trigger-stop-seconds`` (``DRAIN_S`` by default); a script
still running then is left running (the server does not kill it; under systemd the unit's
stop kills it once the server has exited), and events not started are dropped (and
logged).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

__all__ = ["DRAIN_S", "MAX_QUEUED", "TriggerRunner"]

log = logging.getLogger("jetstream.triggers")

MAX_QUEUED = 10_000
ETXTBSY_RETRIES = 20
DRAIN_S = 30.0
_SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class _Event:
    name: str
    args: tuple[str, ...]
    stdin: bytes


class TriggerRunner:
    def __init__(self, trigger_dir: Path | None, log_runs: bool = False) -> None:
        self.trigger_dir = trigger_dir
        self.log_runs = log_runs
        #: runs are logged at INFO with --trigger-log (and their output shown), else at DEBUG
        self._level = logging.INFO if log_runs else logging.DEBUG
        self.api_port = 0
        #: scripts run, and those that failed (could not start, or exited non-zero), by
        #: event; events dropped because the queue was full
        self.runs: Counter[str] = Counter()
        self.failures: Counter[str] = Counter()
        self.dropped = 0
        self._queue: asyncio.Queue[_Event] = asyncio.Queue(MAX_QUEUED)
        self._task: asyncio.Task[None] | None = None
        self._accepting = True
        self._running: asyncio.subprocess.Process | None = None

    def fire(self, event: str, *args: str, stdin: bytes = b"") -> None:
        """Queue ``event``; never blocks, never raises."""
        if self.trigger_dir is None or not self._accepting:
            return
        if "/" in event or "\x00" in event or event in (".", ".."):
            return
        try:
            self._queue.put_nowait(_Event(event, tuple(args), stdin))
        except asyncio.QueueFull:
            self.dropped += 1
            log.warning("trigger queue full (%d events): %s dropped", MAX_QUEUED, event)
            return
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._work())

    async def _work(self) -> None:
        while True:
            event = await self._queue.get()
            try:
                await self._run(event)
            except Exception:  # a trigger never takes the server down
                log.exception("trigger %s could not run", event.name)
            finally:
                self._queue.task_done()

    def _environment(self, event: str) -> dict[str, str]:
        bin_dir = os.path.dirname(sys.argv[0]) if os.path.isabs(sys.argv[0]) else ""
        exe_dir = os.path.dirname(sys.executable)
        path = ":".join(dict.fromkeys(p for p in (bin_dir, exe_dir, _SYSTEM_PATH) if p))
        return {
            "PATH": path,
            "HOME": os.environ.get("HOME", "/"),
            "LANG": "C.UTF-8",
            "JETSTREAM_API_CONTROL_PORT": str(self.api_port),
            "JETSTREAM_TRIGGER_DIR": str(self.trigger_dir),
            "JETSTREAM_EVENT": event,
        }

    async def _run(self, event: _Event) -> None:
        assert self.trigger_dir is not None
        script = self.trigger_dir / event.name
        if not script.is_file() or not os.access(script, os.X_OK):
            if self.log_runs:
                why = "is not executable" if script.is_file() else "does not exist"
                log.info("trigger %s: %s %s, nothing run", event.name, script, why)
            return
        output = asyncio.subprocess.PIPE if self.log_runs else asyncio.subprocess.DEVNULL
        started = time.monotonic()
        for attempt in range(ETXTBSY_RETRIES + 1):
            try:
                proc = await asyncio.create_subprocess_exec(
                    str(script), *event.args, cwd=self.trigger_dir,
                    env=self._environment(event.name),
                    stdin=asyncio.subprocess.PIPE if event.stdin else asyncio.subprocess.DEVNULL,
                    stdout=output, stderr=output, start_new_session=True)
                break
            except OSError as exc:
                # "text file busy": the script is being written (or was, by a process
                # that forked meanwhile); wait a moment and try again
                if exc.errno == errno.ETXTBSY and attempt < ETXTBSY_RETRIES:
                    await asyncio.sleep(0.05)
                    continue
                log.log(self._level, "trigger %s could not start: %s", event.name, exc)
                self.failures[event.name] += 1
                return
        self._running = proc
        self.runs[event.name] += 1
        try:
            out, err, _ = await asyncio.gather(_read_all(proc.stdout), _read_all(proc.stderr),
                                               _feed(proc, event.stdin))
            await proc.wait()
        finally:
            self._running = None
        if proc.returncode != 0:
            self.failures[event.name] += 1
        log.log(self._level, "trigger %s %s exited %s after %.3f s", event.name,
                list(event.args), proc.returncode, time.monotonic() - started)
        if self.log_runs:
            for data in (out, err):  # to the console only, never to the --log file
                if data:
                    sys.stderr.write(data.decode(errors="replace"))
            sys.stderr.flush()

    @property
    def queued(self) -> int:
        """Events waiting for their turn."""
        return self._queue.qsize()

    async def close(self, drain_s: float = DRAIN_S) -> None:
        """Stop taking events; give running and queued scripts up to ``drain_s``."""
        self._accepting = False
        if self._task is None:
            return
        try:
            await asyncio.wait_for(self._queue.join(), drain_s)
        except TimeoutError:
            waiting = self._queue.qsize()
            log.warning("triggers still running after %.0f s: left running; %d queued "
                        "trigger(s) dropped", drain_s, waiting)
        running = self._running
        self._task.cancel()
        await asyncio.wait({self._task})  # (a cancel of close itself goes on up)
        if running is not None and running.returncode is None:
            log.info("trigger process %d left running", running.pid)


async def _read_all(stream: asyncio.StreamReader | None) -> bytes:
    return await stream.read() if stream is not None else b""


async def _feed(proc: asyncio.subprocess.Process, data: bytes) -> None:
    """Write the event's stdin; a script that exits without reading it is fine."""
    if proc.stdin is None:
        return
    try:
        proc.stdin.write(data)
        await proc.stdin.drain()
    except (BrokenPipeError, ConnectionResetError, RuntimeError):
        pass  # (uvloop says RuntimeError when the pipe is already closed)
    finally:
        with contextlib.suppress(Exception):
            proc.stdin.close()
