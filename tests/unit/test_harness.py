"""The evaluation harness: complete, resumable after a real kill, shardable, batch-invariant."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import launch_two_cpu_processes
from eval_worker import make_records, tiny_qwen_adapter
from mimic_utils.evaluation import harness

HERE = Path(__file__).parents[1] / "support"  # the worker scripts


@pytest.fixture(scope="module")
def adapter():
    return tiny_qwen_adapter()


def test_rows_hold_output_parse_score_and_settings(adapter, tmp_path):
    records = make_records(tmp_path / "img", 8)
    rows = harness.run(adapter, records, tmp_path / "p.jsonl", batch_size=3, progress=False)
    assert [r["id"] for r in rows] == sorted(r["id"] for r in records)
    for row in rows:
        assert {"id", "output", "parsed", "score", "model", "knobs", "gt", "pool"} <= set(row)
        assert row["model"]["family"] == "qwen2_vl" and row["model"]["pool"] == 1
        assert row["model"]["preprocessing"]["image_backend"] == "pil"  # the resize every score depends on
        assert row["model"]["image_processor_class"] == "Qwen2VLImageProcessorPil"
        assert 0.0 <= row["score"] <= 1.0
    summary = harness.summarize(rows)
    assert summary["counting"]["n"] == 2 and "f1" in summary["listing"]


def test_batched_predictions_equal_one_at_a_time(adapter, tmp_path):
    records = make_records(tmp_path / "img", 8)
    batched = harness.run(adapter, records, tmp_path / "b.jsonl", batch_size=8, progress=False)
    single = harness.run(adapter, records, tmp_path / "s.jsonl", batch_size=1, progress=False)
    assert [r["output"] for r in batched] == [r["output"] for r in single]


def test_resume_skips_written_rows_and_drops_a_torn_line(adapter, tmp_path):
    records = make_records(tmp_path / "img", 6)
    full = harness.run(adapter, records, tmp_path / "full.jsonl", batch_size=2, progress=False)
    partial = tmp_path / "partial.jsonl"
    harness.run(adapter, records[:3], partial, batch_size=2, progress=False)
    with partial.open("a") as handle:
        handle.write('{"id": "s005", "outp')  # a run killed mid-write
    resumed = harness.run(adapter, records, partial, batch_size=2, progress=False)
    assert resumed == full
    assert len(partial.read_text().splitlines()) == 6


@pytest.mark.slow
def test_a_killed_run_resumes_to_the_uninterrupted_result(tmp_path):
    images, killed, clean = tmp_path / "img", tmp_path / "killed.jsonl", tmp_path / "clean.jsonl"
    n = 24
    env = {**os.environ, "PYTHONPATH": str(HERE)}
    command = [sys.executable, str(HERE / "eval_worker.py"), str(images), str(killed), str(n), "2"]
    process = subprocess.Popen(command, env=env)
    deadline = time.time() + 300
    while time.time() < deadline and (not killed.exists() or len(killed.read_text().splitlines()) < 4):
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait()
    written = len(killed.read_text().splitlines())
    assert 4 <= written < n, "the run must be killed part-way for this test to mean anything"
    subprocess.run(command, env=env, check=True)
    subprocess.run(command[:3] + [str(clean), str(n), "2"], env=env, check=True)
    assert harness.read_predictions(killed) == harness.read_predictions(clean)


@pytest.mark.slow
def test_two_processes_under_accelerate_merge_to_the_single_process_result(tmp_path):
    images, sharded, single = tmp_path / "img", tmp_path / "sharded.jsonl", tmp_path / "single.jsonl"
    worker = HERE / "eval_worker.py"
    make_records(images, 10)  # images written once, before the ranks start
    out = launch_two_cpu_processes(worker, images, sharded, 10, 2)
    assert out.count("processes=2") == 2
    env = {**os.environ, "PYTHONPATH": str(HERE), "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, str(worker), str(images), str(single), "10", "2"], env=env, check=True)
    by_id = lambda path: {row["id"]: row for row in harness.read_predictions(path)}  # noqa: E731
    assert by_id(sharded) == by_id(single) and len(by_id(single)) == 10
    assert not list(tmp_path.glob("sharded.rank*"))


def test_predictions_of_another_model_are_not_resumed(adapter, tmp_path):
    records = make_records(tmp_path / "img", 4)
    path = tmp_path / "p.jsonl"
    first = harness.run(adapter, records, path, batch_size=2, progress=False)
    assert len({r["fingerprint"] for r in first}) == 1
    other = tiny_qwen_adapter()
    other.settings["weights_fingerprint"] = "another model"
    rows = harness.run(other, records, path, batch_size=2, progress=False)
    assert {r["fingerprint"] for r in rows} != {r["fingerprint"] for r in first}
    assert (tmp_path / "p.stale.jsonl").is_file()
