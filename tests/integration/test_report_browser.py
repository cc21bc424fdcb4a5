"""The report page as a person sees it: rendered by headless Chromium (Debian's `chromium`).

The DOM Chromium builds is checked for the regressions table and the charts,
and a screenshot is kept (in $HARNESS_ARTIFACTS_DIR when set, for CI to upload,
else in the test's tmp dir) and checked for what should be seen: the red
header of a failing report, and the chart's data line.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
from pathlib import Path
from types import ModuleType

import pytest

from harness import report

CHROMIUM = Path("/usr/bin/chromium")
REPO = Path(__file__).resolve().parents[2]
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run", "--hide-scrollbars"]


def _records_builder() -> ModuleType:
    spec = importlib.util.spec_from_file_location("report_records", REPO / "tests" / "unit" / "test_report.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def chromium() -> Path:
    if not CHROMIUM.exists():
        reason = "headless Chromium is not installed (/usr/bin/chromium): apt-get install -y chromium"
        if os.environ.get("HARNESS_STRICT", "") not in ("", "0"):
            pytest.fail(reason)
        pytest.skip(reason)
    return CHROMIUM


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = Path(os.environ.get("HARNESS_ARTIFACTS_DIR") or tmp_path_factory.mktemp("artifacts"))
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory, artifacts: Path) -> Path:
    """A report over two testbeds: one regression, one acknowledged-free stable series, a host_rings series."""
    build = _records_builder()
    tmp = tmp_path_factory.mktemp("report")
    records = (build.step_history()
               + build.step_history(step_at=None, seed=100, scenario="guest_rx", guest_os="linux",
                                    engines=("linux-pktgen", "guest-counters"))
               + build.step_history(step_at=None, seed=200, frame=1514)
               + build.step_history(step_at=None, seed=300, testbed="ci-kvm-1", accel="kvm", vhost=True))
    html = artifacts / "report.html"
    code = report.main([*map(str, build.write_sources(records, tmp)), "--out", str(html)])
    assert code == 1
    return html


def _chromium(binary: Path, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    profile.mkdir(exist_ok=True)
    return subprocess.run([str(binary), *FLAGS, f"--user-data-dir={profile}", *args],
                          capture_output=True, text=True, timeout=180, check=False)


def test_rendered_dom_has_the_regressions_table_and_charts(chromium: Path, page: Path, tmp_path: Path) -> None:
    result = _chromium(chromium, tmp_path / "profile", "--dump-dom", page.as_uri())
    dom = result.stdout
    assert result.returncode == 0 and dom, result.stderr[-2000:]
    table = re.search(r'<table class="regressions">(.*?)</table>', dom, re.S)
    assert table, "no regressions table in the rendered DOM"
    rows = re.findall(r'<tr class="unacked">', table.group(1))
    assert len(rows) == 1
    assert "guest_tx/freebsd/netmap-pktgen-&gt;host-counters/60B/q1/tcg/novhost" in table.group(1)
    assert len(re.findall(r'<svg class="chart"', dom)) == 4
    assert dom.count('class="grid"') == 2                      # one status grid per testbed


def test_screenshot_shows_the_failing_header_and_the_charts(chromium: Path, page: Path, tmp_path: Path,
                                                            artifacts: Path) -> None:
    shot = artifacts / "report.png"
    shot.unlink(missing_ok=True)
    result = _chromium(chromium, tmp_path / "profile", f"--screenshot={shot}", "--window-size=1400,2000",
                       page.as_uri())
    assert shot.exists(), result.stderr[-2000:]
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 50_000
    image = pytest.importorskip("PIL.Image").open(shot).convert("RGB")
    assert image.size == (1400, 2000)
    assert len(image.getcolors(maxcolors=1 << 20) or []) > 50              # not one flat colour
    header = image.crop((0, 0, 1400, 60)).getcolors(maxcolors=1 << 16) or []
    reddish = sum(n for n, (r, g, b) in header if r > 120 and g < 60 and b < 60)
    assert reddish > 1400 * 60 // 2, "the header of a failing report is not red"
    line = sum(n for n, (r, g, b) in image.getcolors(maxcolors=1 << 20) or []
               if abs(r - 0x1F) < 12 and abs(g - 0x4E) < 12 and abs(b - 0x79) < 12)
    assert line > 500, "no chart data line visible in the first 2000 pixels"
    if shutil.which("true"):
        print(f"\nscreenshot: {shot}")
