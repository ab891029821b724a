"""One run per results folder: the claim file ``{results}/.tilestack.lock``.

Snakemake's own lock belongs to its working directory, so two runs started from two checkouts
(or with ``snakemake -d``) could write into one results folder at once and mix their frames.
The Snakefile's ``onstart`` handler (a real run, not ``-n``; not the jobs SLURM starts) claims
the folder, ``onsuccess``/``onerror`` release it. The file names the claimant: host, process
id (with the process's start time, so a reused id is not mistaken for it) and working
directory. A claim left by a process that is gone from this host (``kill -9``, a power cut)
is taken over; a claim from another host cannot be checked and is refused with the file to
delete once that run has ended.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from tilestack.errors import TilestackError

LOCK_NAME = ".tilestack.lock"


class ResultsInUseError(TilestackError):
    """Another run holds the results folder."""


@dataclass(frozen=True)
class Claimant:
    host: str
    pid: int
    started: str  # the process's start time in clock ticks since boot ("" when unknown)
    cwd: str
    since: str = ""  # when the claim was made (local time, for the message only)

    def same_process(self, other: Claimant) -> bool:
        return (self.host, self.pid, self.started) == (other.host, other.pid, other.started)

    def describe(self) -> str:
        since = f", since {self.since}" if self.since else ""
        return f"pid {self.pid} on {self.host}, working directory {self.cwd}{since}"


def process_start(pid: int) -> str:
    """Start time of process ``pid`` in clock ticks since boot (Linux ``/proc``); "" if
    unknown."""
    try:
        with open(f"/proc/{int(pid)}/stat") as fh:
            stat = fh.read()
    except OSError:
        return ""
    # the command name (field 2) may hold spaces and parentheses: split after the last ")"
    fields = stat[stat.rfind(")") + 2 :].split()
    return fields[19] if len(fields) > 19 else ""


def this_process() -> Claimant:
    pid = os.getpid()
    return Claimant(
        host=socket.gethostname(),
        pid=pid,
        started=process_start(pid),
        cwd=os.getcwd(),
        since=time.strftime("%Y-%m-%d %H:%M:%S"),
    )


def is_running(c: Claimant) -> bool | None:
    """True/False for a process of this host; None for another host (cannot be checked)."""
    if c.host != socket.gethostname():
        return None
    try:
        os.kill(c.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process of that id exists
    now = process_start(c.pid)
    return not (c.started and now and now != c.started)


def read_claim(lock: Path) -> tuple[Claimant | None, str | None]:
    """The claimant of ``lock`` and the file's text; (None, None) when there is no file,
    (None, text) when the text is not a claim."""
    try:
        text = lock.read_text()
    except FileNotFoundError:
        return None, None
    try:
        d = json.loads(text)
        return Claimant(
            str(d["host"]), int(d["pid"]), str(d["started"]), str(d["cwd"]), str(d.get("since", ""))
        ), text
    except (ValueError, KeyError, TypeError):
        return None, text


def _create(lock: Path, me: Claimant) -> bool:
    """Write the claim beside ``lock`` and hard-link it into place: the link fails when
    ``lock`` exists, so the file is never seen half-written and never overwritten."""
    tmp = lock.with_name(f"{LOCK_NAME}.{me.host}.{me.pid}.tmp")
    tmp.write_text(json.dumps(asdict(me), sort_keys=True) + "\n")
    try:
        os.link(tmp, lock)
        return True
    except FileExistsError:
        return False
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def _take_over(lock: Path, stale_text: str, me: Claimant) -> None:
    """Move a stale claim aside; if another run replaced it meanwhile, put that one back."""
    aside = lock.with_name(f"{LOCK_NAME}.{me.host}.{me.pid}.stale")
    try:
        os.rename(lock, aside)
    except FileNotFoundError:
        return
    if aside.read_text() != stale_text:  # a live claim was moved: restore it
        with contextlib.suppress(FileExistsError):
            os.link(aside, lock)
    aside.unlink()


def claim(results, me: Claimant | None = None) -> Path:
    """Claim ``results`` for this run; returns the claim file.

    Raises :class:`ResultsInUseError` (one line naming the folder and the other run) while
    another live run holds it.
    """
    me = me or this_process()
    folder = Path(results)
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / LOCK_NAME
    for _ in range(5):
        if _create(lock, me):
            return lock
        other, text = read_claim(lock)
        if text is None:
            continue  # released meanwhile
        if other is not None and other.same_process(me):
            return lock
        running = False if other is None else is_running(other)
        if running is False:
            _take_over(lock, text, me)
            continue
        hint = (
            "wait for it to end or stop it" if running else f"if that run has ended, delete {lock}"
        )
        raise ResultsInUseError(
            f"results folder {folder} is in use by another run ({other.describe()}); "
            f"{hint}, or choose another results folder"
        )
    raise ResultsInUseError(f"results folder {folder}: could not claim {lock}")


def release(results, me: Claimant | None = None) -> None:
    """Remove this run's claim on ``results`` (another run's claim is left alone)."""
    me = me or this_process()
    lock = Path(results) / LOCK_NAME
    other, _ = read_claim(lock)
    if other is not None and other.same_process(me):
        with contextlib.suppress(FileNotFoundError):
            lock.unlink()


def claim_or_exit(results) -> None:
    """``claim`` for the Snakefile's ``onstart``: a refusal is one line and exit status 1."""
    import sys

    try:
        claim(results)
    except ResultsInUseError as err:
        print(f"tilestack: error: {err}", file=sys.stderr)
        sys.exit(1)
    except OSError as err:  # the folder cannot be made or written (read-only, full, denied)
        reason = err.strerror or str(err)
        print(f"tilestack: error: results folder {results}: {reason}", file=sys.stderr)
        sys.exit(1)
