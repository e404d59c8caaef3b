"""Build the manual, serve it on loopback and take screenshots of its front page and a how-to
with headless Chromium, to look at what a reader sees.

    python scripts/screenshot_docs.py [--out docs/assets/screenshots] [--chromium PATH]

Needs `pip install -e ".[docs]"` and a Chromium (Debian: `apt-get install chromium`).
"""

from __future__ import annotations

import argparse
import functools
import http.server
import pathlib
import shutil
import subprocess
import sys
import tempfile
import threading

ROOT = pathlib.Path(__file__).resolve().parent.parent
PAGES = {"home.png": "", "how-to-sites.png": "how-to/sites/"}
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--hide-scrollbars"]


def build(site: pathlib.Path) -> None:
    subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir",
                    str(site)], cwd=ROOT, check=True)


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 (the base class names it so)
        pass


def serve(site: pathlib.Path) -> http.server.ThreadingHTTPServer:
    handler = functools.partial(QuietHandler, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def screenshot(chromium: str, url: str, png: pathlib.Path, profile: pathlib.Path) -> None:
    subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                    "--window-size=1280,1600", f"--screenshot={png}", url],
                   check=True, capture_output=True, timeout=120)
    if not png.exists() or png.stat().st_size == 0:
        raise RuntimeError(f"Chromium wrote no screenshot of {url}")


def main() -> None:
    cli = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    cli.add_argument("--out", type=pathlib.Path, default=ROOT / "docs" / "assets" / "screenshots")
    cli.add_argument("--chromium", default=shutil.which("chromium") or "chromium")
    args = cli.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        site = pathlib.Path(tmp) / "site"
        build(site)
        server = serve(site)
        try:
            base = f"http://127.0.0.1:{server.server_address[1]}/"
            for name, path in PAGES.items():
                screenshot(args.chromium, base + path, args.out / name, pathlib.Path(tmp) / name)
                print(args.out / name)
        finally:
            server.shutdown()


if __name__ == "__main__":
    main()
