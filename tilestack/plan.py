"""Parse-time planning of the workflow: which frames, which batches, bands, channels and mode.

Everything the DAG's shape depends on is decided here, from the light file names and their
headers (every light's header is read and checked against the night's majority), so ``snakemake -n`` shows the real job list without checkpoints. Frames are
sorted by file name and cut into batches of ``workflow.frames_per_job`` consecutive frames:
adding frames that sort later only changes the last (partial) batch and adds new ones, so the
per-frame work already done stays valid.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from jsonschema.exceptions import ValidationError, best_match

from tilestack.cfa import channels_for
from tilestack.checks import check_night, check_weight_sum
from tilestack.checks import decide_mode as checks_decide_mode
from tilestack.errors import ConfigError, InputError
from tilestack.io.manifest import build_manifest, frame_names, list_frames, unique_stems
from tilestack.registration.siril import siril_available
from tilestack.tiles import band_ranges

WEIGHT_SUM_TOLERANCE = 1e-6


@dataclass(frozen=True)
class Plan:
    """The shape of one run: frames, batches, channels, bands and mode."""

    frames: list[Path]  # sorted light paths
    stems: list[str]  # one per frame, unique, used in file names
    batches: dict[str, list[str]]  # batch id -> stems of its consecutive frames
    bayer: str | None  # Bayer pattern (numpy order) or None for mono
    channels: list[str]  # ["L"] or ["R", "G", "B"]
    width: int  # sensor width (pixels)
    height: int  # sensor height (pixels)
    channel_width: int  # width of a channel plane (half for OSC)
    channel_height: int
    band_rows: int  # channel rows per reconstruction job
    bands: list[tuple[int, int]]  # (y0, y1) channel rows of each band
    mode: str  # "full" | "reduced" | "emergency"
    n_clusters: int  # K of §10 (0 unless full mode)
    sample_batches: list[str] = field(default_factory=list)  # batches that pick reference/tiles
    names: list[str] = field(default_factory=list)  # paths relative to the lights root

    @property
    def n_frames(self) -> int:
        return len(self.frames)

    @property
    def stem_of(self) -> dict[str, str]:
        """Light name (relative to the lights root; or the bare file name where it names
        one frame only) -> stem."""
        names = self.names or [p.name for p in self.frames]
        files = Counter(p.name for p in self.frames)
        out = {
            p.name: s for p, s in zip(self.frames, self.stems, strict=True) if files[p.name] == 1
        }
        out.update(zip(names, self.stems, strict=True))
        return out

    def batch_names(self, batch: str) -> list[str]:
        """Names of a batch's frames (the order of ``batch_lights``)."""
        stems = set(self.batches[batch])
        names = self.names or [p.name for p in self.frames]
        return [n for n, s in zip(names, self.stems, strict=True) if s in stems]

    def batch_stems(self, batch: str) -> list[str]:
        return self.batches[batch]

    def summary(self) -> str:
        return (
            f"tilestack plan: {self.n_frames} frames, {len(self.batches)} batches, "
            f"channels {','.join(self.channels)}, {self.width}x{self.height}, "
            f"{len(self.bands)} bands of {self.band_rows} rows, mode {self.mode}"
            + (f", K={self.n_clusters}" if self.mode == "full" else "")
        )


# Declared memory of the jobs that hold whole frames (prepare, reference, align, assemble,
# finish): their measured peak is about a fixed part (interpreter, libraries, compiled kernels)
# plus a few frame-sized buffers per megapixel of the sensor (benchmarks/results/scale.md:
# 0.7 GB at 2048², 2.0-2.1 GB at 24 MP mono and OSC); the margin covers brighter or busier
# fields than the benchmark's.
FRAME_JOB_BASE_MB = 500
FRAME_JOB_MB_PER_MP = 70


def frame_job_mem_mb(width: int, height: int, floor_mb: float) -> int:
    """``mem_mb`` to declare for a whole-frame job: ``workflow.memory_mb`` or, for frames
    large enough to need more, their measured need (a cluster kills a job that exceeds it)."""
    need = FRAME_JOB_BASE_MB + FRAME_JOB_MB_PER_MP * (int(width) * int(height) / 1e6)
    return int(math.ceil(max(float(floor_mb), need)))


def cluster_count(n: int) -> int:
    """K = clip(floor(N/10), 5, 30), never more than N (METHODOLOGY §10)."""
    return int(min(max(n // 10, 5), 30, n))


def make_batches(stems: list[str], per_job: int) -> dict[str, list[str]]:
    """Consecutive groups of ``per_job`` stems named b000, b001, ... (stable under appends)."""
    per_job = max(1, int(per_job))
    n_batches = math.ceil(len(stems) / per_job)
    width = max(3, len(str(max(n_batches - 1, 0))))
    return {f"b{i:0{width}d}": stems[i * per_job : (i + 1) * per_job] for i in range(n_batches)}


def decide_mode(n: int, config: dict) -> str:
    """Mode of METHODOLOGY §1 from the number of lights; below the minimum stop at once."""
    return checks_decide_mode(n, config)


def check_config(config: dict) -> None:
    """Cross-key rules the schema cannot express (one-line ConfigError): alpha+beta+gamma = 1."""
    check_weight_sum(config, tol=WEIGHT_SUM_TOLERANCE)
    for key in ("darks", "flats", "bias"):
        if config.get(key) is None:
            config[key] = ""
    for key in ("lights", "darks", "flats", "bias", "results"):
        check_no_braces(str(config.get(key) or ""), key)


def check_no_braces(path: str, what: str | None = None) -> None:
    """Snakemake reads ``{...}`` in a file path as a wildcard (doubling the braces does not
    escape them in its patterns): refuse such paths at start with one line (a setting:
    ``ConfigError`` naming it; a listed frame, ``what`` None: ``InputError``)."""
    if "{" in path or "}" in path:
        error = ConfigError if what else InputError
        where = f"{what} = {path!r}" if what else path
        raise error(
            f"{where}: a path with {{ or }} cannot be used (Snakemake reads braces "
            "as wildcards); rename the folder or point to it through a link without them"
        )


def _results(config: dict) -> list[str]:
    """The results folder, left out of every input listing (a glob over a parent folder must
    not take a previous run's output FITS files for lights or calibration frames)."""
    return [str(config["results"])] if config.get("results") else []


def calibration_frames(config: dict) -> dict[str, list[str]]:
    """Paths of the bias/darks/flats frames (empty lists when a key is empty)."""
    out = {}
    for key in ("bias", "darks", "flats"):
        spec = str(config.get(key) or "")
        if not spec:
            out[key] = []
            continue
        try:
            out[key] = [str(p) for p in list_frames(spec, exclude=_results(config))]
        except InputError:
            raise InputError(f"{key} = {spec!r} contains no supported frames") from None
        for p in out[key]:
            check_no_braces(p)
    return out


def check_engines(config: dict) -> None:
    """siril engines need siril-cli on PATH; say so before any work starts."""
    wants = [
        k
        for k, v in (
            ("registration.engine", config.get("registration", {}).get("engine")),
            ("stacking.engine", config.get("stacking", {}).get("engine")),
        )
        if v == "siril"
    ]
    if not wants:
        return

    if not siril_available():
        raise ConfigError(f"{' and '.join(wants)} = siril needs siril-cli on PATH (not found)")


def make_plan(config: dict) -> Plan:
    """Plan the run from the config (already validated and defaulted)."""
    lights = str(config.get("lights", "") or "")
    if not lights:
        raise ConfigError("lights is empty: set it to a folder or glob of light frames")
    try:
        frames = [Path(p) for p in list_frames(lights, exclude=_results(config))]
    except FileNotFoundError as err:
        raise InputError(f"lights = {lights!r}: {err}") from None
    except InputError as err:
        if Path(lights) == Path("example/night/lights"):
            raise InputError(
                f"{err} (make the example first: python -m tilestack.example)"
            ) from None
        raise
    if not frames:
        raise InputError(f"lights = {lights!r} contains no supported light frames")
    for p in frames:
        check_no_braces(str(p))
    # Frames are named by their path relative to the lights root (two sessions may both
    # hold light_0000.fits); stems, used in internal file names, are made unique.
    names = frame_names(frames, lights)
    stems = unique_stems(frames, names)
    wf = config.get("workflow", {})
    batches = make_batches(stems, wf.get("frames_per_job", 30))

    # Every light's header (cheap): sizes, Bayer patterns, exposures and pixel types are
    # decided over the whole night, so the odd files are named, whichever batch they are in.

    headers = build_manifest(frames, checksum=False, names=names, stems=stems)
    check_night(headers, config, lights)
    first = headers.iloc[0]
    width, height = int(first["width"]), int(first["height"])
    bayer = first["bayer"] or None
    channels = list(channels_for(bayer))
    if bayer:
        cw, ch = width // 2, height // 2
    else:
        cw, ch = width, height
    band_rows = int(wf.get("band_rows", 512))
    mode = decide_mode(len(frames), config)
    n_sample = int(wf.get("sample_batches", 1))
    batch_ids = list(batches)
    sample = batch_ids if n_sample <= 0 else batch_ids[:n_sample]
    return Plan(
        frames=frames,
        stems=stems,
        batches=batches,
        bayer=bayer,
        channels=channels,
        width=width,
        height=height,
        channel_width=cw,
        channel_height=ch,
        band_rows=band_rows,
        bands=band_ranges(ch, band_rows),
        mode=mode,
        n_clusters=cluster_count(len(frames)) if mode == "full" else 0,
        sample_batches=sample,
        names=names,
    )


def load_schema(path) -> dict:
    """The config schema (``config/schema.yaml``) as a dict."""
    import yaml

    with open(path) as fh:
        return yaml.safe_load(fh)


_TRUE = {"true", "yes", "on"}
_FALSE = {"false", "no", "off"}


def _from_text(value: str, schema: dict):
    """``value`` converted to the schema's type when the text reads as one; else unchanged."""
    types = schema.get("type", [])
    types = [types] if isinstance(types, str) else list(types)
    for alt in schema.get("oneOf", []):  # e.g. a number or the word auto
        t = alt.get("type", [])
        types += [t] if isinstance(t, str) else list(t)
        if value in alt.get("enum", []):
            return value
    if "string" in types or not types:
        return value
    text = value.strip()
    if "boolean" in types and text.lower() in _TRUE | _FALSE:
        return text.lower() in _TRUE
    if "integer" in types:
        try:
            return int(text)
        except ValueError:
            pass
    if "number" in types:
        try:
            return float(text)
        except ValueError:
            pass
    if "null" in types and text.lower() in ("null", "~", "none"):
        return None
    return value


def coerce_config_strings(config: dict, schema: dict) -> None:
    """Convert, in place, text values that read as the schema's integer, number or boolean.

    Snakemake parses ``--config workflow={frames_per_job: 20}`` with YAML's base loader, so
    every value nested in such a mapping arrives as text (``'20'``); a value whose text is not
    of the schema's type is left for the validation to report.
    """
    props = schema.get("properties", {}) if isinstance(schema, dict) else {}
    for key, sub in props.items():
        if key not in config or not isinstance(sub, dict):
            continue
        value = config[key]
        if isinstance(value, dict):
            coerce_config_strings(value, sub)
        elif isinstance(value, list) and isinstance(sub.get("items"), dict):
            config[key] = [_from_text(v, sub["items"]) if isinstance(v, str) else v for v in value]
        elif isinstance(value, str):
            config[key] = _from_text(value, sub)


def config_error_line(err) -> str:
    """One line for a jsonschema ValidationError: the key, the value and what is allowed."""
    path = ".".join(str(p) for p in err.absolute_path)
    schema = err.schema if isinstance(err.schema, dict) else {}
    validator = err.validator
    if validator == "additionalProperties":
        extra = _extra_keys(err)
        where = f"{path}." if path else ""
        return (
            f"config error: unknown key {where}{extra} (check the spelling in config/config.yaml)"
        )
    if validator == "required":
        return f"config error: {err.message}"
    value = err.instance
    if validator in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        return f"config error: {path} = {value!r} is out of range {_range_text(schema)}"
    if validator == "enum":
        allowed = ", ".join(str(v) for v in schema.get("enum", []))
        return f"config error: {path} = {value!r} is not one of: {allowed}"
    if validator == "type":
        extra = f" in range {_range_text(schema)}" if _has_range(schema) else ""
        if isinstance(value, str):
            extra += " (a value nested in --config is read as text; or set it in a --configfile)"
        return f"config error: {path} = {value!r} must be of type {schema.get('type')}{extra}"
    return f"config error: {path or '(top level)'}: {err.message}"


def _extra_keys(err) -> str:
    allowed = set(err.schema.get("properties", {})) if isinstance(err.schema, dict) else set()
    inst = err.instance if isinstance(err.instance, dict) else {}
    extra = sorted(k for k in inst if k not in allowed)
    return ", ".join(extra) if extra else "?"


def _has_range(schema: dict) -> bool:
    return any(k in schema for k in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"))


def _range_text(schema: dict) -> str:
    lo_open = "exclusiveMinimum" in schema
    hi_open = "exclusiveMaximum" in schema
    lo = schema.get("exclusiveMinimum", schema.get("minimum", "-inf"))
    hi = schema.get("exclusiveMaximum", schema.get("maximum", "inf"))
    return f"{'(' if lo_open else '['}{lo}, {hi}{')' if hi_open or hi == 'inf' else ']'}"


def validation_error_line(exc: BaseException) -> str | None:
    """Find the jsonschema error inside Snakemake's WorkflowError and format it."""
    seen = set()
    stack = [exc]
    while stack:
        e = stack.pop()
        if id(e) in seen or e is None:
            continue
        seen.add(id(e))
        if isinstance(e, ValidationError):
            best = _deepest(e)
            return config_error_line(best)
        for a in getattr(e, "args", ()):
            if isinstance(a, BaseException):
                stack.append(a)
        stack.append(e.__cause__)
        stack.append(e.__context__)
    return None


def _deepest(err):
    """For anyOf/oneOf errors pick the most specific sub-error."""
    if err.context:
        return best_match(err.context)
    return err


class StopRun(Exception):
    """The one line a run stops with at parse time (``config error: …`` or
    ``tilestack: error: …``)."""


def start_run(config: dict, schema_path) -> tuple[Plan, dict[str, list[str]]]:
    """Everything the workflow checks when it is parsed, in its order: the nested ``--config``
    text read as the schema's types, the schema, the cross-key rules, the whole night's headers
    (the plan), the calibration listings and the engines. Returns the plan and the calibration
    frames; a refusal raises :class:`StopRun` with the line (``rules/common.smk`` prints it and
    exits; the tests call this same function)."""
    from snakemake.exceptions import WorkflowError
    from snakemake.utils import validate

    from tilestack.errors import TilestackError

    coerce_config_strings(config, load_schema(schema_path))
    try:
        validate(config, str(schema_path))
    except WorkflowError as err:
        raise StopRun(validation_error_line(err) or f"config error: {err}") from None
    try:
        check_config(config)
        plan = make_plan(config)
        calib = calibration_frames(config)
        check_engines(config)
    except ConfigError as err:
        raise StopRun(f"config error: {err}") from None
    except TilestackError as err:
        raise StopRun(f"tilestack: error: {err}") from None
    return plan, calib
