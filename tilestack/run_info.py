"""The run-info page: one HTML page with the verdict, the effective config and the versions.

Why: ``snakemake --report`` shows result files; this page puts what a reader needs to judge
and reproduce the run (verdict and figures, every parameter, every library version) into the
report as one item. Self-contained (inline CSS, no scripts) and free of timestamps, so it is
the same for the same run. Written by the workflow's ``finish`` job.
"""

from __future__ import annotations

import html
import json
import platform
import shutil
import subprocess
from importlib import metadata

import yaml

PACKAGES = (
    "tilestack",
    "snakemake",
    "snakemake-executor-plugin-slurm",
    "numpy",
    "scipy",
    "astropy",
    "pandas",
    "pyarrow",
    "numba",
    "opencv-python-headless",
    "scikit-learn",
    "matplotlib",
    "rawpy",
)

CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#1f2937;max-width:60em}
h1{font-size:1.4em}h2{font-size:1.1em;margin-top:1.4em;border-bottom:1px solid #d1d5db}
table{border-collapse:collapse;font-size:.9em}td,th{padding:.2em .8em;text-align:left;
border-bottom:1px solid #e5e7eb}pre{background:#f3f4f6;padding:.8em;font-size:.85em;
overflow:auto}.verdict{font-size:1.3em;font-weight:bold;padding:.2em .6em;border-radius:.3em}
.success{background:#d1fae5}.borderline{background:#fef3c7}.failed{background:#fee2e2}
"""


def uses_siril(config: dict) -> bool:
    """Whether siril-cli did part of this run (registration or stacking engine)."""
    return any(
        str((config.get(section) or {}).get("engine", "tilestack")) == "siril"
        for section in ("registration", "stacking")
    )


def versions(with_siril: bool = True) -> list[tuple[str, str]]:
    """Software that made the run. siril-cli only when it took part (``with_siril``): asking
    it for its version costs about a second, and a run that did not use it owes it nothing."""
    out = [("python", platform.python_version())]
    for name in PACKAGES:
        try:
            out.append((name, metadata.version(name)))
        except metadata.PackageNotFoundError:
            continue
    siril = shutil.which("siril-cli") if with_siril else None
    if siril:
        try:
            res = subprocess.run([siril, "--version"], capture_output=True, text=True, timeout=30)
            out.append(("siril-cli", (res.stdout or res.stderr).strip().splitlines()[0]))
        except (OSError, subprocess.TimeoutExpired, IndexError):
            pass
    return out


def flat_items(d, prefix=""):
    """Nested dict -> sorted (dotted key, value) pairs."""
    for k in sorted(d):
        v = d[k]
        if isinstance(v, dict):
            yield from flat_items(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def table(rows) -> str:
    body = "".join(
        f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(_fmt(v))}</td></tr>" for k, v in rows
    )
    return f"<table>{body}</table>"


def channel_table(per_channel: dict) -> str:
    """Rows = figures, columns = channels."""
    names = list(per_channel)
    keys = sorted({k for v in per_channel.values() if isinstance(v, dict) for k in v})
    head = "<tr><th></th>" + "".join(f"<th>{html.escape(c)}</th>" for c in names) + "</tr>"
    rows = "".join(
        f"<tr><td>{html.escape(k)}</td>"
        + "".join(f"<td>{html.escape(_fmt(per_channel[c].get(k, '')))}</td>" for c in names)
        + "</tr>"
        for k in keys
    )
    return f"<table>{head}{rows}</table>"


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, list | dict):
        return json.dumps(v, sort_keys=True)
    return str(v)


def page(validation: dict, config: dict) -> str:

    verdict = str(validation.get("verdict", "unknown"))
    figures = validation.get("figures", {})
    failed = validation.get("failed_checks", [])
    warnings = validation.get("warnings", [])
    channels = validation.get("channels")
    per_channel = channels if isinstance(channels, dict) else {}
    facts = [
        ("mode", validation.get("mode")),
        (
            "frames (lights / unregistered)",
            f"{validation.get('n_lights', validation.get('n_frames'))}"
            f" / {validation.get('n_unregistered', 0)}",
        ),
        ("channels", ", ".join(per_channel) if per_channel else channels),
        (
            "tile size / stride (channel px)",
            f"{validation.get('tile_size')} / {validation.get('tile_stride')}",
        ),
    ]
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>tilestack run</title>",
        f"<style>{CSS}</style></head><body>",
        "<h1>tilestack run</h1>",
        f"<p>Verdict: <span class='verdict {html.escape(verdict)}'>{html.escape(verdict)}</span></p>",
    ]
    added = validation.get("tiles_added")
    if isinstance(added, dict) and added.get("summary"):
        parts.append(f"<p>{html.escape(str(added['summary']))}</p>")
    if failed:
        parts.append("<p>Failed checks: " + html.escape(", ".join(map(str, failed))) + "</p>")
    if warnings:
        items = "".join(f"<li>{html.escape(str(w))}</li>" for w in warnings)
        parts.append(f"<p>Warnings:</p><ul>{items}</ul>")
    parts += ["<h2>Run</h2>", table(facts)]
    if isinstance(figures, dict) and figures:
        parts += ["<h2>Validation figures</h2>", table(flat_items(figures))]
    if per_channel:
        parts += ["<h2>Per channel</h2>", channel_table(per_channel)]
    parts += [
        "<h2>Software</h2>",
        table(versions(uses_siril(config))),
        "<h2>Configuration</h2>",
        f"<pre>{html.escape(yaml.safe_dump(json.loads(json.dumps(config, default=str)), sort_keys=True))}</pre>",
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"
