"""The last lines a user sees after a run: result, verdict and its main reason, what the
tiles added (final against the global-only stack), left-out frames, and where the logs are
(printed by the Snakefile's ``onsuccess``/``onerror``)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

ERROR_PREFIX = "tilestack: error: "


def failure_reason(logs: Path) -> str | None:
    """The one-line reason of the job that failed last: the newest log with an error line.

    Snakemake prints the failing job's output among many lines of its own; repeating the
    reason at the end keeps it where the user looks.
    """
    try:
        candidates = sorted(logs.rglob("*.log"), key=lambda f: f.stat().st_mtime, reverse=True)
    except OSError:
        return None
    for log in candidates:
        try:
            text = log.read_text(errors="replace")
        except OSError:
            continue
        found = [ln for ln in text.splitlines() if ln.startswith(ERROR_PREFIX)]
        if found:
            return found[-1]
    return None


def summary(results, ok: bool) -> str:
    """A few lines about the run in ``results``; never raises (files may be missing)."""
    res = Path(str(results))
    lines = [f"tilestack: run {'finished' if ok else 'FAILED'} ({res})"]
    if not ok:
        reason = failure_reason(res / "logs")
        if reason:
            lines.append(reason)
    try:
        doc = json.loads((res / "validation" / "validation.json").read_text())
        verdict = str(doc.get("verdict", "unknown"))
        failed = doc.get("failed_checks") or []
        reason = f": {failed[0]}" if failed and verdict != "success" else ""
        lines.append(f"tilestack: verdict {verdict}{reason}")
        added = (doc.get("tiles_added") or {}).get("summary")
        if added:
            lines.append(f"tilestack: {added}")
    except (OSError, ValueError, AttributeError):
        if ok:
            lines.append("tilestack: no validation.json (verdict unknown)")
    try:
        table = pd.read_csv(res / "registration" / "transforms.csv")
        left = table[table["status"] == "unregistered"]
        if len(left):
            names = ", ".join(left["frame"].astype(str).head(10))
            more = f", … (+{len(left) - 10} more)" if len(left) > 10 else ""
            lines.append(
                f"tilestack: {len(left)} of {len(table)} frames unregistered (left out): "
                f"{names}{more}"
            )
    except (OSError, ValueError, KeyError, ImportError):
        pass
    lines.append(f"tilestack: logs in {res / 'logs'}")
    return "\n".join(lines)
