"""The GPU check (``python -m mimic_utils.bench gpu``) and its flex-attention masking path, on the CPU.

The dry run (``--tiny``) is the same script at tiny model size, so the command cannot rot between GPU
sessions; the flex mode is checked against the dense masked reference with flex_attention's eager CPU
implementation (forward only: flex has no CPU backward).
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from mimic_utils.bench import perf
from mimic_utils.models import masking

flex = pytest.importorskip("torch.nn.attention.flex_attention", reason="this torch has no flex_attention")

BLOCK_IDS = torch.tensor([
    [-1, -1, 0, 0, 0, -1, 1, 1, -1, 2, 2, 2, 2, -1],
    [-1] * 4 + [0] * 4 + [-1, 1, 1, 1, -1, -1],
    [-1] * 4 + [0] * 8 + [-1] * 2,  # one image: never masked
])


def padding_mask() -> torch.Tensor:
    attention_mask = torch.ones(3, 14, dtype=torch.long)
    attention_mask[1, :2] = 0
    attention_mask[2, :3] = 0
    return attention_mask


def test_flex_block_mask_is_the_dense_reference_mask():
    attention_mask = padding_mask()
    base = masking.dense_mask(torch.full_like(BLOCK_IDS, -1), attention_mask)  # causal + padding, as sdpa_mask
    for model_mask in (base, None):
        block_mask = masking.flex_block_mask(BLOCK_IDS, model_mask)
        dense = flex.create_mask(block_mask.mask_mod, 3, 1, 14, 14, device="cpu")
        expected = masking.dense_mask(BLOCK_IDS, attention_mask if model_mask is not None else None)
        assert torch.equal(dense, expected)


def test_flex_mode_matches_the_dense_reference_and_leaves_one_image_samples_alone():
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    generator = torch.Generator().manual_seed(0)
    base = masking.dense_mask(torch.full_like(BLOCK_IDS, -1), padding_mask())
    q, k, v = (torch.randn(3, heads, 14, 8, generator=generator) for heads in (4, 2, 2))
    module = SimpleNamespace(layer_idx=3, num_key_value_groups=2, is_causal=True, training=False)
    outputs, states = {}, {}
    for mode in ("dense", "flex"):
        with masking.image_blocks(BLOCK_IDS, [3], mode) as states[mode]:
            outputs[mode], _ = masking.attention_forward(module, q, k, v, base, scaling=0.35)
    assert not states["dense"].flex_masks and list(states["flex"].flex_masks) == ["cpu"]
    torch.testing.assert_close(outputs["flex"], outputs["dense"], atol=1e-6, rtol=1e-5)
    plain, _ = sdpa_attention_forward(module, q, k, v, base, scaling=0.35)
    assert torch.equal(outputs["flex"][2], plain[2])  # the one-image sample is exactly unmasked SDPA


def test_flex_reuses_one_block_mask_per_context(monkeypatch):
    built = []
    original = masking.flex_block_mask
    monkeypatch.setattr(masking, "flex_block_mask", lambda *args: built.append(1) or original(*args))
    q, k, v = torch.randn(1, 2, 14, 8), torch.randn(1, 2, 14, 8), torch.randn(1, 2, 14, 8)
    module = SimpleNamespace(layer_idx=0, num_key_value_groups=1, is_causal=True, training=False)
    with masking.image_blocks(BLOCK_IDS[:1], [0, 1], "flex"):
        for layer in (0, 1):
            module.layer_idx = layer
            masking.attention_forward(module, q, k, v, None, scaling=0.35)
    assert len(built) == 1


def test_preferred_mode_is_flex_only_on_cuda():
    assert masking.preferred_mode("cpu") == "blockwise"
    assert masking.preferred_mode("cuda") == "flex"
    assert "flex" in masking.MODES


def test_the_dry_run_writes_every_part_to_the_given_folder(tmp_path):
    path = perf.main(["--out-dir", str(tmp_path), "gpu", "--tiny"])
    assert path == tmp_path / "gpu.json"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpu.json"]  # the per-part partial file is gone
    result = json.loads(path.read_text())
    figures = result["figures"]
    assert result["name"] == "gpu" and result["command"].endswith("gpu --tiny")
    assert figures["tiny"] and figures["device"]["device"] == "cpu" and figures["failed_parts"] == []
    parts = figures["parts"]
    assert set(parts) == {"tokens_llava_onevision_0.5b", "tokens_qwen2_vl_2b", "generation_llava_onevision_0.5b",
                          "generation_qwen2_vl_2b", "evaluation_llava_onevision_0.5b", "evaluation_qwen2_vl_2b",
                          "attention", "masked_forward", "masked_qlora", "lora", "masked_lora_qwen2_vl_2b",
                          "streaming_memory"}
    for key in ("llava_onevision_0.5b", "qwen2_vl_2b"):
        generation = parts[f"generation_{key}"]
        assert generation["samples"] == 2 and generation["images_per_sample"] == 8
        assert 0.0 <= generation["identical_share"] <= 1.0 and generation["speedup"] > 0
    assert max(parts["attention"]["max_abs_difference_vs_dense_masked_fp32"].values()) < 1e-5
    forward = parts["masked_forward"]["max_abs_difference_vs_dense_masked"]
    assert forward["masked_blockwise"] < 1e-5 and forward["masked_flex"] < 1e-5
    assert forward["plain"] > 1e-4  # the mask acted on the last position's logits
    qlora = parts["masked_qlora"]
    assert qlora["quantization"] is None and "needs CUDA" in qlora["skipped_4bit"]
    assert qlora["mask_layers"] == [2, 3] and parts["lora"]["mask_layers"] == []
    assert len(qlora["losses"]) == len(parts["lora"]["losses"]) == 2
    assert parts["streaming_memory"]["streaming_vs_plain"] > 0


def test_the_realsize_check_runs_the_gpu_checks_parts_on_the_cpu_with_its_checks(tmp_path):
    """``make bench NAME=realsize``: the GPU check's own parts (no batch or kernel timings) at tiny size."""
    path = perf.main(["--out-dir", str(tmp_path), "realsize", "--tiny", "--benchmark-profile", ""])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["realsize.json"]
    figures = json.loads(path.read_text())["figures"]
    parts = figures["parts"]
    assert figures["failed_parts"] == [] and figures["device"]["device"] == "cpu"
    assert not set(parts) & set(perf.TIMING_PARTS) and "masked_lora_qwen2_vl_2b" in parts
    for key in ("llava_onevision_0.5b", "qwen2_vl_2b"):
        tokens = parts[f"tokens_{key}"]
        assert tokens["all_equal"] and set(tokens["tokens"]) == {"1_images", "10_images"}
    evaluation = parts["evaluation_llava_onevision_0.5b"]
    assert evaluation["image_counts"] == [1, 4, 10] and len(evaluation["answers"]) == 3
    assert evaluation["resume"] == {"questions": 2, "answered_after_resume": 1, "equal_to_uninterrupted": True}
    for name in ("masked_qlora", "lora", "masked_lora_qwen2_vl_2b"):
        assert parts[name]["losses_finite"] and parts[name]["gradients"]["only_adapter"], name
    assert parts["masked_qlora"]["images_per_sample"] == 4 and "needs CUDA" in parts["masked_qlora"]["skipped_4bit"]
    assert parts["masked_qlora"]["mask_blocks"]["equal_to_spans"] and parts["masked_qlora"]["mask_blocks"]["images"] == 4
    assert parts["masked_lora_qwen2_vl_2b"]["mask_blocks"]["equal_to_spans"] and parts["lora"]["mask_blocks"] is None
    assert parts["masked_lora_qwen2_vl_2b"]["dtype"] == "bfloat16"  # float32 does not fit 24 GB at real size
    streaming = parts["streaming_memory"]
    assert streaming["images_per_sample"] == 10 and streaming["full_attention_maps_bytes"] > 0


def test_the_span_mask_check_can_fail(tiny_adapter, make_image):
    """The mask built from the input ids equals the masking module's reference only with the right image
    length: cut the spans one token short and they differ."""
    from mimic_utils.models import masking, vlm

    adapter = tiny_adapter("qwen2_vl")
    batch = adapter.prepare([vlm.Sample([make_image(56, 56, seed) for seed in range(3)], "How many?", "counting")])
    ids, attention = batch.inputs["input_ids"], batch.inputs["attention_mask"]
    reference = masking.dense_mask(adapter.image_block_ids(batch), attention)
    per_image = batch.image_tokens[0][0]
    assert torch.equal(perf._span_mask(ids, adapter.image_token_id, per_image, attention), reference)
    assert not torch.equal(perf._span_mask(ids, adapter.image_token_id, per_image - 1, attention), reference)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_real_size_refuses_to_run_without_cuda(tmp_path):
    with pytest.raises(SystemExit, match="--tiny.*realsize"):
        perf.main(["--out-dir", str(tmp_path), "gpu"])
    assert not (tmp_path / "gpu.json").exists()


def test_a_part_runs_in_its_own_process_and_reports_its_peak_memory(tmp_path, monkeypatch):
    """``--isolate`` (the real-size CPU default): each part in a child process, its figures read back, its
    peak resident memory recorded; a part whose process is killed is that part's error."""
    path = perf.main(["--out-dir", str(tmp_path), "realsize", "--tiny", "--isolate", "--benchmark-profile", "",
                      "--parts", "tokens_llava_onevision_0.5b"])
    ok = json.loads(path.read_text())["figures"]["parts"]["tokens_llava_onevision_0.5b"]
    assert "error" not in ok and ok["exit_code"] == 0 and ok["peak_rss_bytes"] > 50 * 2**20
    import sys
    from argparse import Namespace

    killed = "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"
    monkeypatch.setattr(perf, "_child_argv", lambda *a: [sys.executable, "-c", killed])
    failed = perf._isolated_part("lora", Namespace(name="realsize"))
    assert failed["exit_code"] == -9 and "OOM killer" in failed["error"]


def test_the_child_command_repeats_the_run_with_one_part():
    import argparse

    args = argparse.Namespace(name="realsize", argv=["realsize", "--parts", "a,b", "--seed", "3", "--in-process"])
    argv = perf._child_argv(args, "b", Path("/tmp/x"))
    assert argv[1:] == ["-m", "mimic_utils.bench", "--out-dir", "/tmp/x", "realsize", "--seed", "3", "--parts", "b",
                        "--in-process"]
