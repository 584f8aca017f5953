"""The reports and plots as a person sees them: rendered by headless Chromium (skipped without it).

Checks what a browser alone can tell: every page lays out without horizontal overflow at a laptop's
width (wide tables scroll inside their box), every inlined plot decodes, and the screenshots are not
blank. The screenshots stay in the test's tmp dir for a person to look at.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BROWSER = next((b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
pytestmark = [pytest.mark.slow, pytest.mark.skipif(BROWSER is None, reason="needs headless Chromium")]
ENV = {**os.environ, "MPLBACKEND": "Agg"}
WIDTH_PX = 1280

# Appended to a copy of a page: after layout, record what overflows and which images failed to decode.
PROBE = """<script>window.addEventListener('load', () => {
  const overflowing = [...document.querySelectorAll('div.table')].filter(d => d.getBoundingClientRect().right >
      document.documentElement.clientWidth + 1).length;
  const broken = [...document.images].filter(i => !(i.complete && i.naturalWidth > 0)).length;
  const wideTables = [...document.querySelectorAll('div.table')].filter(d => d.scrollWidth > d.clientWidth).length;
  const pre = document.createElement('pre'); pre.id = 'probe';
  pre.textContent = JSON.stringify({pageWidth: document.documentElement.scrollWidth,
      viewWidth: document.documentElement.clientWidth, overflowing, broken, wideTables,
      images: document.images.length, tables: document.querySelectorAll('table').length});
  document.body.appendChild(pre);
});</script>"""


def app(module: str, args: list[str], cwd: Path) -> None:
    result = subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, capture_output=True, text=True,
                            env=ENV, timeout=300)
    assert result.returncode == 0, result.stderr


def chromium(*args: str) -> str:
    result = subprocess.run([BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                             f"--window-size={WIDTH_PX},1600", *args], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


@pytest.fixture(scope="module")
def outputs(tmp_path_factory) -> Path:
    """Runs that differ in kernels and decoding, an nfp sweep and a 2-D simulate sweep, then the reports."""
    root = tmp_path_factory.mktemp("browser")
    out = root / "outputs"
    app("nfpsim.cli.nfp", [f"hydra.run.dir={out}/nfp/vendor"], root)
    app("nfpsim.cli.nfp", ["--multirun", "batch=1,8,64", "kernels=triton,vendor", f"hydra.sweep.dir={out}/nfp/sweep"],
        root)
    app("nfpsim.cli.simulate", ["workload.num_requests=40", f"hydra.run.dir={out}/simulate/ar"], root)
    app("nfpsim.cli.simulate", ["--multirun", "workload.num_requests=30", "decoding=speculative",
                                "decoding.k=1,2,4", "kernels=triton,vendor", "output.plot=false",
                                f"hydra.sweep.dir={out}/simulate/sweep"], root)
    for path in (out, out / "simulate" / "ar", out / "nfp" / "vendor"):
        app("nfpsim.cli.report", [str(path)], root)
    return out


PAGES = ["report.html", "simulate/ar/report.html", "simulate/sweep/report.html", "nfp/sweep/report.html",
         "nfp/vendor/report.html"]


@pytest.mark.parametrize("page", PAGES)
def test_pages_lay_out_without_overflow_and_every_plot_decodes(outputs, page, tmp_path):
    probed = tmp_path / "probed.html"
    probed.write_text((outputs / page).read_text().replace("</body>", PROBE + "</body>"))
    dom = chromium("--virtual-time-budget=5000", "--dump-dom", probed.as_uri())
    probe = json.loads(dom.split("<pre id=\"probe\">")[1].split("</pre>")[0])
    assert probe["tables"] >= 1
    assert probe["pageWidth"] <= probe["viewWidth"], probe  # nothing sticks out of the page
    assert probe["overflowing"] == 0 and probe["broken"] == 0, probe


@pytest.mark.parametrize("page", PAGES)
def test_screenshots_are_not_blank(outputs, page):
    from matplotlib.image import imread

    shot = outputs / (page.replace("/", "_").replace(".html", "") + ".screenshot.png")
    chromium(f"--screenshot={shot}", (outputs / page).as_uri())
    pixels = imread(shot)
    assert pixels.shape[1] == WIDTH_PX and pixels.std() > 0.05


def test_the_listing_tells_runs_apart(outputs):
    markdown = (outputs / "report.md").read_text()
    simulate = markdown.split("## simulate")[1].split("## ")[0]
    rows = [line for line in simulate.splitlines() if line.startswith("| sim")]
    assert len(rows) == 7
    cells = [tuple(c.strip() for c in row.split("|")[3:]) for row in rows]  # without run path and time
    assert len(set(cells)) == len(cells)  # runs that differ never look alike
