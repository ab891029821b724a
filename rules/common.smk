# Shared parse-time logic: config validation, the run plan, path helpers and input functions.

import sys

from tilestack import plan as tsplan


def _stop(line):
    """End the run at parse time with one line on stderr and no traceback."""
    print(line, file=sys.stderr)
    sys.exit(1)


try:  # every parse-time check, in the workflow's order (tilestack.plan.start_run)
    PLAN, CALIB_FRAMES = tsplan.start_run(
        config, os.path.join(workflow.basedir, "config", "schema.yaml")
    )
except tsplan.StopRun as err:
    _stop(str(err))

print(PLAN.summary(), file=sys.stderr)

RESULTS = str(config["results"]).rstrip("/")
CHANNELS = PLAN.channels
BATCHES = list(PLAN.batches)
BANDS = [f"{i:03d}" for i in range(len(PLAN.bands))]
OSC = PLAN.bayer is not None
FULL = PLAN.mode == "full"
CALIB = {k: str(config.get(k) or "") for k in ("bias", "darks", "flats")}
HAS_CALIB = any(CALIB.values())
WF = config["workflow"]
ENV = "../envs/tilestack.yaml"
REG_ENGINE = config["registration"]["engine"]
STACK_ENGINE = config["stacking"]["engine"]


wildcard_constraints:
    batch=r"b\d+",
    band=r"\d{3}",
    c=r"[LRGB]",


def R(path):
    """A path below the results folder."""
    return f"{RESULTS}/{path}"


def log_path(name):
    return f"{RESULTS}/logs/{name}.log"


def mem_mb(factor=1.0):
    return int(WF["memory_mb"] * factor)


def frame_mem_mb():
    """mem_mb of the jobs that hold whole frames: at least their measured need at this
    frame size (workflow.memory_mb is the floor)."""
    return tsplan.frame_job_mem_mb(PLAN.width, PLAN.height, WF["memory_mb"])


def runtime_min():
    return int(WF["runtime_min"])


def batch_lights(wildcards):
    """Light paths of one batch (sorted, consecutive)."""
    stems = set(PLAN.batches[wildcards.batch])
    return [str(p) for p, s in zip(PLAN.frames, PLAN.stems) if s in stems]


def calibration_frames(kind):
    """Calibration frame paths for bias/darks/flats (empty list when not configured)."""
    return CALIB_FRAMES[kind]


def master_files():
    """Calibration masters this run builds (none without bias/darks/flats)."""
    out = {}
    if CALIB["bias"]:
        out["bias"] = R("calibration/master_bias.fits")
    if CALIB["darks"]:
        out["dark"] = R("calibration/master_dark.fits")
    if CALIB["flats"]:
        out["flat"] = R("calibration/master_flat.fits")
    if CALIB["darks"]:
        out["bad_pixels"] = R("calibration/bad_pixels.fits")
    return out


def sample_batch_files(pattern):
    """Files of the leading batches that choose the reference and size the tiles."""
    return [R(pattern.format(batch=b)) for b in PLAN.sample_batches]


def band_rows(band):
    y0, y1 = PLAN.bands[int(band)]
    return [int(y0), int(y1)]


def stack_targets():
    return [R(f"stack/{c}.fits") for c in CHANNELS]


def final_targets():
    out = [
        R("scan/frames.csv"),
        R("registration/transforms.csv"),
        *stack_targets(),
        R("final/preview.png"),
        R("validation/validation.json"),
    ]
    if OSC:
        out.append(R("final/rgb.fits"))
    out.append(R("report/run_info.html"))  # verdict, config, versions page of --report
    return out


def plan_params():
    """The plan facts every script may need, passed as params so reruns follow them."""
    return {
        "mode": PLAN.mode,
        "bayer": PLAN.bayer or "",
        "channels": CHANNELS,
        "width": PLAN.width,
        "height": PLAN.height,
        "channel_width": PLAN.channel_width,
        "channel_height": PLAN.channel_height,
        "n_frames": PLAN.n_frames,
        "n_clusters": PLAN.n_clusters,
    }


# ---- input/output functions of the phase rules ----------------------------------------

def reference_inputs():
    """Star tables and calibrated frames that may hold the reference.

    `registration.reference: auto` chooses among the leading `workflow.sample_batches` batches
    (stable when lights are added later); a named reference adds its own batch.
    """
    batches = list(PLAN.sample_batches)
    name = config["registration"]["reference"]
    if name != "auto":
        stem = PLAN.stem_of.get(name) or (name if name in PLAN.stems else None)
        if stem is None:
            _stop(f"config error: registration.reference = {name!r} is not one of the lights")
        for b, stems in PLAN.batches.items():
            if stem in stems and b not in batches:
                batches.append(b)
    return {
        "stars": [R(f"stars/{b}.parquet") for b in batches],
        "calibrated": [R(f"calibrated/{b}.fits") for b in batches],
    }


def weights_outputs():
    out = {
        "global_": [R(f"metrics/global_{c}.csv") for c in CHANNELS],
        "local": [R(f"metrics/local_{c}.parquet") for c in CHANNELS],
    }
    if config["method"] == "tbqr2":
        out["normalization"] = [R(f"metrics/normalization_{c}.parquet") for c in CHANNELS]
    if FULL:
        out["clusters"] = R("clustering/clusters.csv")
    return out


def reconstruct_inputs(wildcards=None):
    """Everything one band job reads: every channel's registered batches and weights."""
    out = {
        "registered": expand(R("registered/{c}/{batch}.fits"), c=CHANNELS, batch=BATCHES),
        "metrics": expand(R("metrics/batches/{batch}.parquet"), batch=BATCHES),
        "global_": [R(f"metrics/global_{c}.csv") for c in CHANNELS],
        "local": [R(f"metrics/local_{c}.parquet") for c in CHANNELS],
        "grid": R("tiles/grid.json"),
    }
    if config["method"] == "tbqr2":
        out["normalization"] = [R(f"metrics/normalization_{c}.parquet") for c in CHANNELS]
    if FULL:
        out["clusters"] = R("clustering/clusters.csv")
    return out


def band_files(band):
    """The band results of every channel (`band` may be a wildcard pattern)."""
    return [R(f"reconstruction/{c}/band_{band}.npz") for c in CHANNELS]


def assemble_outputs():
    """Every channel's stack, classical and global-only stacks (§13), maps and tile flags
    (lists in CHANNELS order)."""
    out = {
        "weight": [R(f"reconstruction/{c}_weight.fits") for c in CHANNELS],
        "coverage": [R(f"reconstruction/{c}_coverage.fits") for c in CHANNELS],
        "classical": [R(f"classical/{c}.fits") for c in CHANNELS],
        "global_only": [R(f"global_only/{c}.fits") for c in CHANNELS],
        "flags": [R(f"reconstruction/{c}_tiles.csv") for c in CHANNELS],
    }
    if STACK_ENGINE == "siril":
        out["stack"] = [R(f"reconstruction/{c}.fits") for c in CHANNELS]
    else:
        out["stack"] = [R(f"stack/{c}.fits") for c in CHANNELS]
    if FULL:
        out["synthetic"] = [
            R(f"synthetic/{c}/k{k:02d}.fits") for c in CHANNELS for k in range(PLAN.n_clusters)
        ]
    return out


def reconstruct_params(rows):
    """What a band job needs: its rows (a list, or a function of the band wildcard) and
    the reconstruction settings."""
    return {
        "channels": CHANNELS,
        "rows": rows,
        "reconstruction": config["reconstruction"],
        "synthetic": config["synthetic"],
        "final": config["final"],
        "mode": PLAN.mode,
        "n_clusters": PLAN.n_clusters,
        "memory_mb": WF["memory_mb"],
        "method": config["method"],
    }


def assemble_params():
    """What joining the bands needs (provenance: the config hash is taken in the script)."""
    return {
        "channels": CHANNELS,
        "bands": [band_rows(b) for b in BANDS],
        "mode": PLAN.mode,
        "n_frames": PLAN.n_frames,
        "n_clusters": PLAN.n_clusters,
        "channel_width": PLAN.channel_width,
        "channel_height": PLAN.channel_height,
    }


def postprocess_outputs():
    out = {
        "preview": report(
            R("final/preview.png"), caption="../report/preview.rst", category="Result"
        )
    }
    if OSC:
        out["rgb"] = R("final/rgb.fits")
        out["superpixel"] = R("final/rgb_superpixel.fits")
    else:
        out["mono"] = R("final/L.fits")
    return out


def validate_inputs():
    out = {
        "stacks": stack_targets(),
        "classical": [R(f"classical/{c}.fits") for c in CHANNELS],
        "global_only": [R(f"global_only/{c}.fits") for c in CHANNELS],
        "weight": [R(f"reconstruction/{c}_weight.fits") for c in CHANNELS],
        "coverage": [R(f"reconstruction/{c}_coverage.fits") for c in CHANNELS],
        "flags": [R(f"reconstruction/{c}_tiles.csv") for c in CHANNELS],
        "global_": [R(f"metrics/global_{c}.csv") for c in CHANNELS],
        "local": [R(f"metrics/local_{c}.parquet") for c in CHANNELS],
        "grid": R("tiles/grid.json"),
        "transforms": R("registration/transforms.csv"),
        "checks": R("scan/checks.json"),
        "frames": R("scan/frames.csv"),
    }
    if FULL:
        out["clusters"] = R("clustering/clusters.csv")
    return out
