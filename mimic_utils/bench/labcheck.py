"""Open every executed notebook in a real JupyterLab, in headless Chromium, and record what a reader sees.

    python -m mimic_utils.bench.labcheck [--profile cpu] [--out outputs/bench/lab]     (make lab-check)

Starts JupyterLab headless on a free port (with ``--allow-root`` when run as root, as in Colab and most GPU
containers), with its own settings and workspace folders (the notebook is rendered whole, not windowed, so
every output is in the page), then Chromium headless driven over the DevTools protocol (a small client on
tornado's websocket, which JupyterLab already needs). For each ``outputs/<profile>/executed/*.ipynb`` it
writes ``<out>/<notebook>.png`` — the top of the notebook above its first figure — and, in ``<out>/lab.json``,
the counts a reader would notice: images in the notebook and images the browser decoded, error outputs,
stderr outputs, and widget outputs that failed to render. Not part of the tests: it needs a browser
(Debian's ``chromium``; ``make lab-check`` installs it with apt-get when missing) and about a minute.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import itertools
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from mimic_utils.artifacts import profile_dir, repo_root, write_bytes, write_json

#: The browser window: wide enough for the study's figures at their saved size.
WINDOW = (1280, 900)
#: Seconds to wait for JupyterLab to answer, and for a notebook to render.
SERVER_TIMEOUT = 90
RENDER_TIMEOUT = 120
#: Chromium binaries tried in order (Debian's package installs ``chromium``).
BROWSERS = ("chromium", "chromium-browser", "google-chrome")

#: Run in the page once a notebook is open: what its rendered outputs hold. JupyterLab renders an error
#: output and a stderr stream alike (MIME type ``application/vnd.jupyter.stderr``), so :func:`render`'s caller
#: tells them apart with the notebook's own count of errors. A widget output renders under the widget MIME
#: type only when the widget manager could draw it; otherwise JupyterLab falls back to its text repr.
PAGE_COUNTS = """
(() => {
  const panel = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden)');
  if (!panel) return null;
  const q = (s) => Array.from(panel.querySelectorAll(s));
  const images = q('.jp-OutputArea-output img');
  const widgets = q('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.widget-view+json"]');
  return {
    cells: q('.jp-Notebook .jp-Cell').length,
    images: images.length,
    images_decoded: images.filter((i) => i.complete && i.naturalWidth > 0).length,
    stderr_typed: q('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]').length,
    widgets_drawn: widgets.filter((w) => !/Error displaying widget|model not found/i.test(w.textContent)).length,
  };
})()
"""
#: JupyterLab settings for the check: the notebook rendered whole (not windowed, so every output is in the
#: page), no autosave (the executed notebooks on disk are never written), no news pop-up over the screenshot.
LAB_SETTINGS = {
    "@jupyterlab/notebook-extension/tracker": {"windowingMode": "none"},
    "@jupyterlab/docmanager-extension/plugin": {"autosave": False},
    "@jupyterlab/apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False},
}


def notebook_counts(path: Path) -> dict[str, int]:
    """What the notebook file itself holds: cells, image outputs, error outputs, stderr streams, widget outputs."""
    nb = json.loads(path.read_text(encoding="utf-8"))
    outputs = [o for c in nb.get("cells", []) for o in c.get("outputs", [])]
    return {"cells": len(nb.get("cells", [])),
            "images": sum(any(m.startswith("image/") for m in o.get("data", {})) for o in outputs),
            "errors": sum(o.get("output_type") == "error" for o in outputs),
            "stderr": sum(o.get("output_type") == "stream" and o.get("name") == "stderr" for o in outputs),
            "widgets": sum("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in outputs)}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(url: str, timeout: float, what: str) -> bytes:
    """GET ``url`` until it answers 200; a ``TimeoutError`` names ``what`` did not come up."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return response.read()
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what} did not answer at {url} within {timeout:.0f} s") from None
            time.sleep(0.5)


def browser_binary() -> str:
    """The Chromium to drive; a ``FileNotFoundError`` says how to get one."""
    for name in BROWSERS:
        found = shutil.which(name)
        if found:
            return found
    raise FileNotFoundError(f"no Chromium found (tried {', '.join(BROWSERS)}): `apt-get install -y chromium` "
                            "(make lab-check does this when run as root)")


def as_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


@contextmanager
def background(command: list[str], log: Path, cwd: Path | None = None) -> Iterator[subprocess.Popen]:
    """``command`` running for the block (output to ``log``), then stopped: terminated, killed after 20 s."""
    with log.open("w") as handle:
        process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, cwd=cwd)
        try:
            yield process
        finally:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@contextmanager
def jupyterlab(root: Path, work: Path) -> Iterator[tuple[str, str]]:
    """A headless JupyterLab serving ``root`` with fresh settings (notebooks rendered whole), yielding
    ``(base_url, token)``; stopped (its kernels too) when the block ends. Its log goes to ``work/lab.log``."""
    for plugin, values in LAB_SETTINGS.items():
        folder, name = plugin.rsplit("/", 1)
        (work / "settings" / folder).mkdir(parents=True, exist_ok=True)
        (work / "settings" / folder / f"{name}.jupyterlab-settings").write_text(json.dumps(values))
    port, token = free_port(), base64.b32encode(os.urandom(10)).decode().lower()
    command = [sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={port}", "--ip=127.0.0.1",
               f"--ServerApp.token={token}", f"--ServerApp.root_dir={root}",
               f"--LabApp.user_settings_dir={work / 'settings'}", f"--LabApp.workspaces_dir={work / 'workspaces'}",
               "--LabApp.expose_app_in_browser=True"] + (["--allow-root"] if as_root() else [])
    base = f"http://127.0.0.1:{port}"
    with background(command, work / "lab.log", cwd=root):
        wait_for(f"{base}/api/status?token={token}", SERVER_TIMEOUT, "JupyterLab")
        yield base, token


@contextmanager
def chromium(work: Path) -> Iterator[str]:
    """Headless Chromium with remote debugging, yielding the websocket URL of its first page."""
    port = free_port()
    command = [browser_binary(), "--headless=new", f"--remote-debugging-port={port}", "--disable-gpu",
               f"--user-data-dir={work / 'chromium'}", f"--window-size={WINDOW[0]},{WINDOW[1]}",
               "--no-first-run", "--hide-scrollbars", "about:blank"] + (["--no-sandbox"] if as_root() else [])
    with background(command, work / "chromium.log"):
        pages = json.loads(wait_for(f"http://127.0.0.1:{port}/json/list", SERVER_TIMEOUT, "Chromium"))
        yield next(p for p in pages if p.get("type") == "page")["webSocketDebuggerUrl"]


class DevTools:
    """The few DevTools-protocol calls this check needs, over one websocket (events are ignored)."""

    def __init__(self, connection) -> None:
        self.connection = connection
        self.ids = itertools.count(1)

    @classmethod
    async def connect(cls, url: str) -> "DevTools":
        from tornado.websocket import websocket_connect

        return cls(await websocket_connect(url, max_message_size=256 * 2**20))

    async def call(self, method: str, **params: Any) -> dict:
        """Send one command and wait for its answer; an error answer raises naming the method."""
        number = next(self.ids)
        await self.connection.write_message(json.dumps({"id": number, "method": method, "params": params}))
        while True:
            message = await self.connection.read_message()
            if message is None:
                raise ConnectionError(f"DevTools closed the connection during {method}")
            answer = json.loads(message)
            if answer.get("id") == number:
                if "error" in answer:
                    raise RuntimeError(f"DevTools {method}: {answer['error']}")
                return answer.get("result", {})

    async def evaluate(self, expression: str) -> Any:
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        return result.get("result", {}).get("value")

    async def screenshot(self) -> bytes:
        return base64.b64decode((await self.call("Page.captureScreenshot", format="png"))["data"])


async def render(tools: DevTools, url: str, expected: dict[str, int]) -> dict[str, int]:
    """Open ``url`` (a notebook in JupyterLab) and wait until every cell and image output is in the page and
    the page stopped changing; returns :data:`PAGE_COUNTS`' figures."""
    await tools.call("Page.navigate", url=url)
    deadline = time.monotonic() + RENDER_TIMEOUT
    last, stable = None, 0
    while time.monotonic() < deadline:
        await asyncio.sleep(1.0)
        counts = await tools.evaluate(PAGE_COUNTS)
        if counts and counts["cells"] >= expected["cells"] and counts["images_decoded"] >= expected["images"]:
            stable = stable + 1 if counts == last else 0
            if stable >= 2:
                # the file browser off, so the screenshot is the notebook (the app is exposed for this)
                await tools.evaluate("window.jupyterapp && window.jupyterapp.shell.collapseLeft()")
                return counts
        last = counts
    if last is None:
        raise TimeoutError(f"{url}: no notebook panel appeared within {RENDER_TIMEOUT} s")
    return last  # rendered less than the file holds: recorded as such


async def capture(tools: DevTools) -> tuple[bytes, bytes | None]:
    """The top of the open notebook, and the viewport with its first image output at the top (None without one)."""
    scroller = "document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-WindowedPanel-outer')"
    await tools.evaluate(f"{scroller} && ({scroller}.scrollTop = 0)")
    await asyncio.sleep(0.5)
    top = await tools.screenshot()
    found = await tools.evaluate(
        "(() => { const i = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-OutputArea-output img');"
        " if (!i) return false; i.scrollIntoView({block: 'start'});"
        " const s = i.closest('.jp-WindowedPanel-outer'); if (s) s.scrollTop -= 60; return true; })()")
    if not found:
        return top, None
    await asyncio.sleep(0.5)
    return top, await tools.screenshot()


def stitch(top: bytes, figure: bytes | None, width: int = 960) -> bytes:
    """One PNG per notebook: its top above its first figure, scaled to ``width`` and reduced to 256 colours
    (committed screenshots stay small)."""
    from PIL import Image

    parts = [Image.open(io.BytesIO(data)).convert("RGB") for data in (top, figure) if data is not None]
    parts = [p.resize((width, round(p.height * width / p.width))) for p in parts]
    sheet = Image.new("RGB", (width, sum(p.height for p in parts) + 8 * (len(parts) - 1)), "white")
    y = 0
    for part in parts:
        sheet.paste(part, (0, y))
        y += part.height + 8
    buffer = io.BytesIO()
    sheet.quantize(256).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def summarize(relative: str, expected: dict[str, int], page: dict[str, int], seconds: float) -> dict:
    """One notebook's line of ``lab.json``: what the file holds against what the browser showed. Errors and
    stderr streams share a look in the page (:data:`PAGE_COUNTS`): the page's stderr-looking outputs beyond
    the file's errors are stderr streams."""
    return {"notebook": relative, "cells": expected["cells"], "cells_rendered": page["cells"],
            "images": expected["images"], "images_rendered": page["images_decoded"],
            "error_outputs": min(expected["errors"], page["stderr_typed"]),
            "stderr_outputs": page["stderr_typed"] - min(expected["errors"], page["stderr_typed"]),
            "widget_outputs": expected["widgets"], "widgets_failed": expected["widgets"] - page["widgets_drawn"],
            "seconds": seconds, "screenshot": f"{Path(relative).stem}.png"}


def clean(summary: dict) -> bool:
    """Every cell and image rendered, and no error, stderr or failed widget."""
    return (summary["images_rendered"] == summary["images"] and summary["cells_rendered"] >= summary["cells"]
            and not (summary["error_outputs"] or summary["stderr_outputs"] or summary["widgets_failed"]))


async def check_notebooks(ws_url: str, base: str, token: str, root: Path, notebooks: list[Path],
                          out: Path) -> dict[str, dict]:
    tools = await DevTools.connect(ws_url)
    await tools.call("Page.enable")
    await tools.call("Emulation.setDeviceMetricsOverride", width=WINDOW[0], height=WINDOW[1], deviceScaleFactor=1,
                     mobile=False)
    found = {}
    for path in notebooks:
        relative = path.resolve().relative_to(root.resolve()).as_posix()
        expected = notebook_counts(path)
        started = time.monotonic()
        page = await render(tools, f"{base}/lab/tree/{relative}?reset&token={token}", expected)
        top, figure = await capture(tools)
        write_bytes(out / f"{path.stem}.png", stitch(top, figure))
        found[path.stem] = summarize(relative, expected, page, round(time.monotonic() - started, 1))
        print(f"[lab-check] {path.stem}: {page['images_decoded']}/{expected['images']} images, "
              f"{found[path.stem]['error_outputs']} errors, {found[path.stem]['stderr_outputs']} stderr, "
              f"{found[path.stem]['widgets_failed']} widgets failed", flush=True)
    tools.connection.close()
    return found


def versions(browser: str) -> dict[str, str]:
    import jupyterlab

    shown = subprocess.run([browser, "--version"], capture_output=True, text=True).stdout.strip()
    return {"jupyterlab": jupyterlab.__version__, "browser": shown}


def run(profile: str = "cpu", out: Path | None = None, root: Path | None = None,
        notebooks: list[Path] | None = None) -> Path:
    """Check every executed notebook of ``profile`` (or the given ``notebooks``, inside the checkout); writes
    the screenshots and ``lab.json`` under ``out``. Returns the path of ``lab.json``."""
    root = root or repo_root()
    if notebooks is None:
        notebooks = sorted((profile_dir(profile, root) / "executed").glob("[0-9][0-9]_*.ipynb"))
        notebooks = [p for p in notebooks if not p.name.endswith(".FAILED.ipynb")]
    if not notebooks:
        raise FileNotFoundError(f"no executed notebooks in {profile_dir(profile, root) / 'executed'}: "
                                f"run `python -m mimic_utils.runner --profile {profile}` first")
    out = Path(out or root / "outputs" / "bench" / "lab")
    browser = browser_binary()
    with tempfile.TemporaryDirectory(prefix="mimic-lab-") as scratch:
        work = Path(scratch)
        with jupyterlab(root, work) as (base, token), chromium(work) as ws_url:
            found = asyncio.run(check_notebooks(ws_url, base, token, root, notebooks, out))
    summary = {
        "command": f"python -m mimic_utils.bench.labcheck --profile {profile}", "profile": profile,
        "as_root": as_root(), "window": list(WINDOW), **versions(browser), "notebooks": found,
        "all_rendered": all(clean(n) for n in found.values()),
    }
    return write_json(out / "lab.json", summary)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mimic_utils.bench.labcheck", description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="cpu", help="whose outputs/<profile>/executed/ to open (default cpu)")
    parser.add_argument("--out", type=Path, help="where to write (default outputs/bench/lab/)")
    args = parser.parse_args(argv)
    try:
        path = run(args.profile, args.out)
    except (FileNotFoundError, TimeoutError, ValueError) as err:
        print(f"[lab-check] error: {err}", file=sys.stderr)
        return 2
    summary = json.loads(path.read_text(encoding="utf-8"))
    print(f"[lab-check] {len(summary['notebooks'])} notebook(s); everything rendered cleanly: "
          f"{summary['all_rendered']}; see {path}")
    return 0 if summary["all_rendered"] else 1


if __name__ == "__main__":
    sys.exit(main())
