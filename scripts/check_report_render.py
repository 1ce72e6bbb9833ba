"""Open a posttrain report in headless Chromium, offline, and check that every image decoded.

    python scripts/check_report_render.py RUN_DIR [--screenshot shot.png] [--width 1500]

RUN_DIR is a run directory (the report is built first, into RUN_DIR/report) or a
report.html. Chromium runs with the network blocked (every host resolves to nothing and
the proxy is a closed port), so an image or style that needed the network would fail to
load. The page's own script writes, on `load`, how many <img> it holds and how many have
naturalWidth > 0 onto <body>; --dump-dom prints the DOM after that and this script reads
the counts back. It passes when expected == total == decoded > 0. With --screenshot it
also renders the whole page (height from the page's own measure) to a PNG to look at.

Needs a Chromium (Debian: `apt-get install chromium`); exits 2 if none is found.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "chrome")
# headless, no sandbox (containers run as root), nothing that phones home, no network at all
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
         "--host-resolver-rules=MAP * ~NOTFOUND", "--proxy-server=127.0.0.1:9",
         "--virtual-time-budget=15000")


def find_browser(name: str | None) -> str | None:
    for b in ([name] if name else BROWSERS):
        path = shutil.which(b)
        if path:
            return path
    return None


def _run(browser: str, args: list[str], timeout: float) -> str:
    with tempfile.TemporaryDirectory(prefix="posttrain-chromium-") as profile:
        cmd = [browser, *FLAGS, f"--user-data-dir={profile}", *args]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"{Path(browser).name} exited {done.returncode}: {done.stderr.strip()[-2000:]}")
    return done.stdout


def body_attrs(dom: str) -> dict[str, str]:
    """The data-* attributes of <body> in a dumped DOM."""
    m = re.search(r"<body([^>]*)>", dom)
    if not m:
        raise RuntimeError("no <body> in the dumped DOM")
    return dict(re.findall(r'data-([a-z-]+)="([^"]*)"', m.group(1)))


def check(html: Path, browser: str, screenshot: Path | None = None, width: int = 1500,
          timeout: float = 180.0) -> dict:
    """Render `html`; returns {expected, total, decoded, page_height, ok}."""
    url = html.resolve().as_uri()
    # the same width as the screenshot, so the page height it measures is the one shot
    attrs = body_attrs(_run(browser, [f"--window-size={width},800", "--dump-dom", url], timeout))
    res = {k: int(attrs.get(f"images-{k}", attrs.get(k, -1))) for k in ("expected", "total", "decoded")}
    res["page_height"] = int(attrs.get("page-height", 0))
    res["ok"] = res["expected"] > 0 and res["expected"] == res["total"] == res["decoded"]
    if screenshot is not None:
        height = max(res["page_height"], 800)
        _run(browser, [f"--screenshot={screenshot.resolve()}", f"--window-size={width},{height}", url], timeout)
        res["screenshot"] = str(screenshot)
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("target", help="a run directory (the report is built) or a report.html")
    p.add_argument("--screenshot", type=Path, help="also write a full-page screenshot PNG here")
    p.add_argument("--width", type=int, default=1500, help="window width for the screenshot")
    p.add_argument("--browser", help="browser binary (default: the first of chromium, google-chrome)")
    args = p.parse_args(argv)
    browser = find_browser(args.browser)
    if browser is None:
        print("no headless browser found (install one: apt-get install chromium)", file=sys.stderr)
        return 2
    target = Path(args.target)
    if target.is_dir():
        from posttrain.report import build_report
        html = build_report(target).html
    else:
        html = target
    res = check(html, browser, args.screenshot, args.width)
    print(f"{html}: {res['decoded']}/{res['total']} images decoded (expected {res['expected']}), "
          f"page height {res['page_height']} px" + (f", screenshot {res['screenshot']}" if args.screenshot else ""))
    print("render check:", "ok" if res["ok"] else "FAILED")
    return 0 if res["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
