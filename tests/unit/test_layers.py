"""The package's layers: every import points down (or sideways within a layer), never up.

LAYERS lists tilestack's modules from the bottom up; a module may import modules of its own
layer and of the layers below it. SEPARATE names pairs of packages that stay independent
even though one sits above the other. The registration library is also imported in a fresh
interpreter and run, to show it loads nothing above it.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import tilestack

PACKAGE = Path(tilestack.__file__).parent

LAYERS: list[tuple[str, tuple[str, ...]]] = [
    # numbers, geometry and process helpers every layer may use
    (
        "base",
        (
            "tilestack",  # the package itself: __version__
            "tilestack.errors",
            "tilestack.robust",
            "tilestack.cfa",
            "tilestack.cfa_centroid",
            "tilestack.stars",
            "tilestack.kernels",
            "tilestack.runtime",
        ),
    ),
    # file formats: frames, batch files, manifests, the transforms table, atomic writes
    ("io", ("tilestack.io",)),
    # the registration library (Registrator): stars → transforms → warps
    ("registration", ("tilestack.registration",)),
    # frame and tile quality on the tile grid
    ("metrics", ("tilestack.tiles", "tilestack.metrics")),
    # the method: calibration, checks, normalization, reconstruction, stacking, products
    (
        "core",
        (
            "tilestack.calibration",
            "tilestack.checks",
            "tilestack.normalization",
            "tilestack.trails",
            "tilestack.transmission",
            "tilestack.clipped_stars",
            "tilestack.reconstruction",
            "tilestack.synthetic",
            "tilestack.clustering",
            "tilestack.stacking",
            "tilestack.assemble",
            "tilestack.postprocess",
            "tilestack.provenance",
        ),
    ),
    # §13 figures and verdict
    ("validation", ("tilestack.validation",)),
    # glue: one function per workflow rule, parse-time planning, reports, simulator
    (
        "workflow",
        (
            "tilestack.workflow",
            "tilestack.plan",
            "tilestack.run_info",
            "tilestack.run_summary",
            "tilestack.results_lock",
            "tilestack.simulate",
            "tilestack.simulation",
            "tilestack.example",
        ),
    ),
]
# (importer, imported): independent although "metrics" sits above "registration"
SEPARATE = [
    ("tilestack.metrics", "tilestack.registration"),
    ("tilestack.tiles", "tilestack.registration"),
]


def _owner(module: str) -> tuple[int, str] | None:
    """(layer index, matching prefix) of the longest prefix in LAYERS that owns ``module``."""
    best = None
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            inside = module == p or (p != "tilestack" and module.startswith(p + "."))
            if inside and (best is None or len(p) > len(best[1])):
                best = (i, p)
    return best


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[str, int]]:
    """Every tilestack module ``path`` imports (at any depth), with its line."""
    mod = _module_name(path)
    package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            for a in node.names:  # `from tilestack import cfa` imports the module tilestack.cfa
                sub = f"{name}.{a.name}"
                is_module = (PACKAGE.parent / sub.replace(".", "/")).with_suffix(
                    ".py"
                ).exists() or (PACKAGE.parent / sub.replace(".", "/")).is_dir()
                out.append((sub if is_module else name, node.lineno))
    keep = {(n, line) for n, line in out if n == "tilestack" or n.startswith("tilestack.")}
    return sorted(keep, key=lambda x: x[1])


def test_every_module_has_a_layer():
    missing = [_module_name(p) for p in PACKAGE.rglob("*.py") if _owner(_module_name(p)) is None]
    assert not missing, f"modules without a layer in LAYERS: {missing}"


def test_imports_never_point_up():
    bad = []
    for path in sorted(PACKAGE.rglob("*.py")):
        mod = _module_name(path)
        here = _owner(mod)
        for name, line in _imports(path):
            there = _owner(name)
            assert there is not None, f"{mod}:{line} imports {name}, which has no layer"
            if there[0] > here[0]:
                bad.append(
                    f"{mod}:{line} ({LAYERS[here[0]][0]}) imports {name} ({LAYERS[there[0]][0]})"
                )
            for low, high in SEPARATE:
                if _owner(mod)[1] == low and there[1] == high:
                    bad.append(f"{mod}:{line} imports {name}: {low} stays independent of {high}")
    assert not bad, "upward imports:\n" + "\n".join(bad)


_REGISTER = r"""
import json, sys
import numpy as np
from tilestack.registration import Registrator, Transform

rng = np.random.default_rng(3)
h, w = 200, 240
yy, xx = np.mgrid[0:h, 0:w]
xy = rng.uniform([15, 15], [w - 15, h - 15], size=(40, 2))
flux = rng.uniform(200, 2000, size=40)
truth = Transform.similarity(1.0, 1.5, 3.2, -2.4)


def render(points):
    img = np.full((h, w), 100.0)
    for (x, y), f in zip(points, flux):
        img += f * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * 1.3**2))
    return (img + rng.normal(0, 2, img.shape)).astype(np.float32)


ref = render(xy)
frame = render(truth.inverse().apply(xy))
reg = Registrator("similarity")
result = reg.register_images(frame, ref)
warped, coverage = reg.warp(frame, result, ref.shape)
print(json.dumps({
    "status": result.status,
    "error": float(np.abs(result.transform.matrix - truth.matrix).max()),
    "modules": sorted(m for m in sys.modules if m.startswith("tilestack")),
}))
"""


def test_the_registrator_runs_without_anything_above_registration():
    out = subprocess.run(
        [sys.executable, "-c", _REGISTER], capture_output=True, text=True, check=True, timeout=300
    )
    doc = json.loads(out.stdout.strip().splitlines()[-1])
    assert doc["status"] == "ok"
    assert doc["error"] < 0.05
    allowed = {name for name, _ in LAYERS[:3]}
    above = [m for m in doc["modules"] if LAYERS[_owner(m)[0]][0] not in allowed]
    assert not above, f"importing and running the Registrator loaded {above}"
