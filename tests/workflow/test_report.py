"""The HTML report and the run archive.

``snakemake --report`` must give one self-contained file holding every validation plot with its
caption and the run-info page (verdict, config, software versions); headless Chromium renders
it offline. ``snakemake archive`` must give a byte-reproducible .tar.gz with the workflow,
config, manifest with checksums, environment, report and products.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import pytest
import wfrun

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--window-size=1400,1000",
    "--virtual-time-budget=8000",
]
# Opens one result of the report (the app's own view switch) once the page has rendered.
SHOW_RESULT = """
<script>
window.addEventListener("load", function () {
  setTimeout(function () {
    var key = Object.keys(results).find(function (k) { return k.endsWith("%s"); });
    var kind = results[key].mime_type === "text/html" ? "html" : "img";
    app.setView({navbarMode: "resultinfo", resultPath: key, content: kind,
                 contentPath: results[key].data_uri});
  }, 500);
});
</script>
"""


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return wfrun.session_base(tmp_path_factory)


@pytest.fixture(scope="module")
def report(base) -> tuple[Path, Path]:
    ref, _ = wfrun.reference_run(base)
    out = base / "report" / "report.html"
    out.parent.mkdir(exist_ok=True)
    wfrun.snakemake(ref, "--report", str(out))
    return ref, out


def report_var(text: str, name: str):
    """A JSON global of the report page (``var results = {...};``)."""
    m = re.search(rf"var {name} = (\{{.*?\}});\s*</script>", text, re.S)
    assert m, f"report has no '{name}' data"
    return json.loads(m.group(1))


def decode_data_uri(uri: str) -> bytes:
    head, _, data = uri.partition(",")
    assert head.endswith(";base64"), head[:80]
    return base64.b64decode(data)


def test_report_holds_every_plot_verdict_config_versions(report):
    ref, out = report
    text = out.read_text()
    results = report_var(text, "results")
    by_name = {Path(k).name: v for k, v in results.items()}

    plots = sorted((ref / "results" / "validation").glob("*.png"))
    assert plots, "the run made no validation plots"
    for p in [*plots, ref / "results" / "final" / "preview.png"]:
        assert p.name in by_name, f"{p.name} is not in the report"
        entry = by_name[p.name]
        assert decode_data_uri(entry["data_uri"]) == p.read_bytes(), f"{p.name} differs"
        assert entry.get("caption", "").strip(), f"{p.name} has no caption"

    info = next((v for k, v in by_name.items() if k == "run_info.html"), None)
    assert info is not None, "the run-info page (verdict, config, versions) is not in the report"
    page = decode_data_uri(info["data_uri"]).decode()
    verdict = json.loads((ref / "results/validation/validation.json").read_text())["verdict"]
    assert f">{verdict}<" in page
    for needle in ("frames_per_job", "kappa_low", "numpy", "astropy", "snakemake", "tilestack"):
        assert needle in page, f"run-info page lacks {needle}"

    # Self-contained: nothing is fetched from the network when the page opens.
    assert not re.search(r"<(?:script|link|img|iframe)[^>]+(?:src|href)=[\"']https?://", text)


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def screenshot(html: Path, png: Path, profile: Path) -> np.ndarray:
    exe = _chromium()
    cmd = [exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--screenshot={png}"]
    subprocess.run([*cmd, html.as_uri()], capture_output=True, timeout=120, check=False)
    assert png.is_file(), f"chromium wrote no screenshot of {html.name}"
    import matplotlib.image

    return matplotlib.image.imread(png)


def rendered_dom(html: Path, profile: Path) -> str:
    """The page's DOM after its scripts ran (what the user's browser would show)."""
    exe = _chromium()
    cmd = [exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--dump-dom", html.as_uri()]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    return res.stdout


def test_report_renders_offline(report, base):
    if _chromium() is None:
        pytest.skip("chromium not installed (apt-get install chromium)")
    ref, out = report
    shots = base / "report"
    home = screenshot(out, shots / "report_home.png", shots / "chromium")
    # The page is drawn (sidebar and content), not a blank or error page.
    assert home.shape[0] > 500 and home[..., :3].std() > 0.05

    plot = sorted((ref / "results" / "validation").glob("*.png"))[0].name
    for name in (plot, "run_info.html"):
        view = shots / f"report_{Path(name).stem}.html"
        # Only the page's own closing tag: the bundled scripts contain "</body>" in strings.
        head, tag, tail = out.read_text().rpartition("</body>")
        assert tag, "report has no </body>"
        view.write_text(head + SHOW_RESULT % name + tag + tail)
        # The app really opened the embedded file (an <img> or <iframe> of its data URI) ...
        tag = 'iframe src="data:text/html' if name.endswith(".html") else 'img src="data:image/png'
        dom = rendered_dom(view, shots / "chromium")
        assert f"<{tag};charset=utf8;filename={name};base64," in dom, f"{name} is not displayed"
        # ... and the screenshot shows it: a different picture from the home page, not blank.
        img = screenshot(view, shots / f"report_{Path(name).stem}.png", shots / "chromium")
        content = img[:, img.shape[1] // 2 :, :3]
        assert (content < 0.9).mean() > 0.005, f"{name} view looks empty"
        assert img.shape != home.shape or not np.array_equal(img, home)
    print(f"\nreport screenshots in {shots}")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_archive_is_complete_and_byte_reproducible(base):
    ref, _ = wfrun.reference_run(base)
    wd = wfrun.copy_run(ref, base / "archive")
    wfrun.snakemake(wd, "--cores", "1", "archive")
    arc = wd / "results" / "archive" / "tilestack-run.tar.gz"
    first = sha256(arc)
    wfrun.snakemake(wd, "--cores", "1", "--force", "archive")
    assert sha256(arc) == first, "archiving the same run twice gave different bytes"

    with tarfile.open(arc) as tar:
        names = tar.getnames()
        assert names == sorted(names)
        assert {m.mtime for m in tar.getmembers()} == {946684800}
        top = "tilestack-run/"
        for member in (
            "VERSION.json",
            "config.yaml",
            "manifest.csv",
            "environment.txt",
            "report.html",
            "workflow/Snakefile",
            "workflow/config/config.yaml",
            "results/stack/L.fits",
            "results/registration/transforms.csv",
            "results/validation/validation.json",
        ):
            assert top + member in names, f"{member} missing from the archive"
        manifest = tar.extractfile(top + "manifest.csv").read().decode().splitlines()
        env = tar.extractfile(top + "environment.txt").read().decode()
    rows = [r.split(",") for r in manifest[1:]]
    inputs = [r for r in rows if r[0] == "input"]
    assert len(inputs) == wfrun.N_BASE and all(len(r[3]) == 64 for r in inputs)
    stack = next(r for r in rows if r[1] == "results/stack/L.fits")
    assert stack[3] == sha256(wd / "results/stack/L.fits")
    assert "numpy==" in env and "snakemake==" in env
