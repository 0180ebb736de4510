"""`dvc plots show` renders offline: its page carries Vega inline, and a real browser draws the plots."""
from __future__ import annotations

import re
import shutil
import subprocess

import matplotlib.image
import numpy as np
import pytest

from conftest import BIN, REPO, stage_env
from lvm import offline_plots


def test_the_committed_page_is_the_pinned_bundle_and_dvc_uses_it():
    # a missing or stale page fails here (not a skip): `dvc plots show` would then be blank offline
    assert offline_plots.TEMPLATE.is_file(), "run `python -m lvm.offline_plots`"
    assert offline_plots.TEMPLATE.read_text(encoding="utf8") == offline_plots.page()
    out = subprocess.run([str(BIN / "dvc"), "config", "plots.html_template"], cwd=REPO, env=stage_env(),
                         capture_output=True, text=True, check=True).stdout.strip()
    assert (REPO / ".dvc" / out).resolve() == offline_plots.TEMPLATE  # DVC reads it relative to .dvc/


@pytest.fixture(scope="module")
def plots_page(tmp_path_factory):
    out = tmp_path_factory.mktemp("dvc_plots")
    # the plain command, as the README gives it (docs/pipeline.md, "Plots offline"): the template comes from .dvc/config
    r = subprocess.run([str(BIN / "dvc"), "plots", "show", "-o", str(out)], cwd=REPO, env=stage_env(),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    page = out / "index.html"
    html = page.read_text(encoding="utf8")
    n_vega = html.count("vegaEmbed(")
    assert n_vega >= 3  # dvc.yaml's val_cosine, val_loss and train_loss at least
    # nothing is fetched from the network: no script has a src, every image is a local file
    assert not re.search(r"<script[^>]*\bsrc=", html)
    assert not re.search(r"""<img[^>]*src=["']https?:""", html)
    return page, n_vega


def chromium():
    return shutil.which("chromium") or shutil.which("chromium-browser")


def test_a_headless_browser_draws_every_vega_plot_offline(plots_page, tmp_path):
    browser = chromium()
    if browser is None:
        # the page itself was checked above; only the browser is missing (Debian: apt-get install chromium)
        pytest.skip("chromium not installed: the offline page was built and checked, but not rendered")
    page, n_vega = plots_page
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             "--virtual-time-budget=15000", f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([*flags, "--dump-dom", page.as_uri()], capture_output=True, text=True,
                         timeout=180).stdout
    # vega-embed replaced each plot's div with an SVG scene (class "marks") holding drawn lines
    assert dom.count('class="marks"') == n_vega, dom[:2000]
    assert dom.count("mark-line") >= n_vega
    shot = tmp_path / "plots.png"
    subprocess.run([*flags, f"--screenshot={shot}", "--window-size=1200,900", page.as_uri()],
                   capture_output=True, timeout=180)
    img = matplotlib.image.imread(shot)[..., :3]
    # the first screen shows the dvc.yaml line plots: coloured (non-grey) pixels of the lines. A blank
    # page, or one showing only the PNG figures further down, has almost none in its top third.
    top = img[: img.shape[0] // 3]
    coloured = (top.max(axis=2) - top.min(axis=2)) > 0.25
    assert coloured.sum() > 500, coloured.sum()
    assert np.mean(top < 0.5) > 0.005  # axes, ticks and labels: dark pixels, not an empty white page
