"""make lab-check: what it counts in a notebook file and in the page, and (where a browser is installed) a
real JupyterLab in headless Chromium telling an image, an error, a stderr stream and a failed widget apart."""

from __future__ import annotations

import base64
import importlib.util
import io
import json
import shutil
from pathlib import Path

import nbformat
import pytest
from PIL import Image

from mimic_utils.bench import labcheck
from mimic_utils.artifacts import repo_root

ROOT = repo_root(Path(__file__).parent)


def demo_notebook(path: Path) -> Path:
    """One of each output a reader could trip over: an image, a stderr stream, an error, a widget without its
    state (it cannot be drawn), and plain stdout."""
    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), "red").save(buffer, format="PNG")
    png = base64.b64encode(buffer.getvalue()).decode()
    widget = {"model_id": "abc", "version_major": 2, "version_minor": 0}
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell("# demo"),
        nbformat.v4.new_code_cell("x", outputs=[nbformat.v4.new_output("display_data", data={"image/png": png})]),
        nbformat.v4.new_code_cell("y", outputs=[nbformat.v4.new_output("stream", name="stderr", text="a warning\n")]),
        nbformat.v4.new_code_cell("z", outputs=[nbformat.v4.new_output("error", ename="ValueError", evalue="boom",
                                                                        traceback=["ValueError: boom"])]),
        nbformat.v4.new_code_cell("w", outputs=[nbformat.v4.new_output("display_data", data={
            "application/vnd.jupyter.widget-view+json": widget, "text/plain": "IntProgress(value=3)"})]),
        nbformat.v4.new_code_cell("v", outputs=[nbformat.v4.new_output("stream", name="stdout", text="fine\n")]),
    ])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


def test_notebook_counts_read_the_file(tmp_path):
    counts = labcheck.notebook_counts(demo_notebook(tmp_path / "demo.ipynb"))
    assert counts == {"cells": 6, "images": 1, "errors": 1, "stderr": 1, "widgets": 1}


def test_summary_tells_errors_from_stderr_and_counts_undrawn_widgets():
    expected = {"cells": 6, "images": 1, "errors": 1, "stderr": 1, "widgets": 1}
    page = {"cells": 6, "images": 1, "images_decoded": 1, "stderr_typed": 2, "widgets_drawn": 0}
    summary = labcheck.summarize("outputs/cpu/executed/01_x.ipynb", expected, page, 1.0)
    assert (summary["error_outputs"], summary["stderr_outputs"], summary["widgets_failed"]) == (1, 1, 1)
    assert summary["screenshot"] == "01_x.png" and not labcheck.clean(summary)
    quiet = labcheck.summarize("x.ipynb", {**expected, "errors": 0, "widgets": 0},
                               {**page, "stderr_typed": 0, "widgets_drawn": 0}, 1.0)
    assert labcheck.clean(quiet)
    assert not labcheck.clean({**quiet, "images_rendered": 0})  # an image the browser could not decode


def test_stitch_puts_the_top_above_the_first_figure_at_a_fixed_width():
    def png(color, size):
        buffer = io.BytesIO()
        Image.new("RGB", size, color).save(buffer, format="PNG")
        return buffer.getvalue()

    sheet = Image.open(io.BytesIO(labcheck.stitch(png("white", (1280, 900)), png("blue", (1280, 900)), width=640)))
    assert sheet.size == (640, 450 + 8 + 450)
    assert Image.open(io.BytesIO(labcheck.stitch(png("white", (1280, 900)), None, width=640))).size == (640, 450)


@pytest.mark.slow
def test_a_real_jupyterlab_in_chromium_sees_each_kind_of_output(tmp_path):
    if importlib.util.find_spec("jupyterlab") is None or not any(shutil.which(b) for b in labcheck.BROWSERS):
        pytest.skip("needs JupyterLab (make lab) and Chromium (apt-get install chromium): see make lab-check")
    notebook = demo_notebook(ROOT / "outputs" / "smoke" / "executed" / "01_labcheck_demo.ipynb")
    try:
        path = labcheck.run("smoke", tmp_path, notebooks=[notebook])
    finally:
        notebook.unlink()
    found = json.loads(path.read_text())["notebooks"]["01_labcheck_demo"]
    assert (found["images"], found["images_rendered"], found["cells_rendered"]) == (1, 1, 6)
    assert (found["error_outputs"], found["stderr_outputs"], found["widgets_failed"]) == (1, 1, 1)
    with Image.open(tmp_path / "01_labcheck_demo.png") as shot:
        assert shot.width == 960 and shot.height > 1000  # the top, and the view at the first figure
