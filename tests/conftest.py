"""Shared fixtures: tiny models of the real classes, built once per test session (or per module, where a module trains them)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from mimic_utils.models import tiny, vlm

# tests/support/ holds the worker scripts tests run in subprocesses and import helpers from
sys.path.insert(0, str(Path(__file__).parent / "support"))
from eval_worker import noise_image  # noqa: E402  (after the path it lives on)


@pytest.fixture(scope="module")
def single_thread():
    """Run a module's tiny models on one intra-op thread, then restore the previous count.

    The tiny models gain nothing from a second thread, and on the shared 2-core machine a second
    OpenMP thread competing with other jobs made these tests about ten times slower.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def organism_deep():
    """A fresh (untrained) organism of the recipe's shape, 192 x 8, and its processor; one per module,
    since some modules train it."""
    return tiny.build_organism(**tiny.ORGANISM_SHAPES["deep"])


@pytest.fixture(scope="module")
def organism_pool():
    """300 rendered scenes of the organism's training stream (seed 0, 28 px cells)."""
    from mimic_utils.data import scenes
    from mimic_utils.organism import recipe

    return recipe.render_pool(300, 0, recipe.TRAIN_STREAM, scenes.SceneParams(), 28, progress=False)


@pytest.fixture(scope="session")
def make_image():
    return noise_image


@pytest.fixture(scope="session")
def tiny_adapter():
    """``tiny_adapter(family)`` → a :class:`VLMAdapter` over a tiny random model, built once per family.

    Tests must not change the returned adapter; build a fresh one for preprocessing changes.
    """
    cache: dict[str, vlm.VLMAdapter] = {}

    def get(family: str) -> vlm.VLMAdapter:
        if family not in cache:
            model, processor = tiny.build_tiny(family)
            cache[family] = vlm.adapter_from_model(model, processor, family)
        return cache[family]

    return get


@pytest.fixture(scope="session")
def two_samples():
    """A batch of two multi-image samples with 3 and 2 images of mixed sizes (so tokens per image differ)."""
    return [
        vlm.Sample(
            [noise_image(56, 56, 1), noise_image(84, 56, 2), noise_image(112, 112, 3)],
            "How many dogs are there?",
            "counting",
        ),
        vlm.Sample([noise_image(84, 84, 4), noise_image(56, 84, 5)], "Which vehicles appear", "listing"),
    ]


def launch_two_cpu_processes(script, *args) -> str:
    """Run ``script`` as two CPU processes under ``accelerate launch`` and return their stdout.

    ``accelerate launch --cpu --num_processes 2`` silently starts *one* process (multi-CPU needs a
    distributed launcher), so this uses ``--multi_gpu`` (torch.distributed's launcher) with
    ``ACCELERATE_USE_CPU=1``: accelerate then runs MULTI_CPU over gloo. Workers print their world size,
    which callers assert, so a launch that silently falls back to one process fails the test.
    """
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    here = Path(__file__).parent
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent))
    env = {**os.environ, "PYTHONPATH": str(here), "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1"}
    done = subprocess.run([accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
                           str(script), *map(str, args)], env=env, check=True, capture_output=True, text=True)
    return done.stdout
