"""Supervised finetuning: what is trained, where the loss is taken, resume after interruption, reload."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from eval_worker import tiny_qwen_adapter
from conftest import launch_two_cpu_processes
from finetune_worker import conversations
from mimic_utils.training import finetune
from mimic_utils.models import vlm as models
from mimic_utils.models.vlm import load_adapter

HERE = Path(__file__).parents[1] / "support"  # the worker scripts


def test_cosine_schedule_warms_up_then_decays():
    lrs = [finetune.cosine_lr(s, 100, 1.0, 10) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[-1] < 0.15 and all(a >= b for a, b in zip(lrs[10:], lrs[11:]))


def test_only_the_language_model_is_trained():
    adapter = tiny_qwen_adapter()
    trained = finetune.set_trainable(adapter.model, ("language_model",))
    assert trained and all("language_model" in n for n in trained)
    frozen = [n for n, p in adapter.model.named_parameters() if not p.requires_grad]
    assert any("visual.merger" in n for n in frozen) and any("visual.blocks" in n for n in frozen)
    with pytest.raises(ValueError, match="nothing would be trained"):
        finetune.set_trainable(adapter.model, ("no_such_module",))


def test_loss_is_taken_on_answer_tokens_only(tmp_path, monkeypatch):
    adapter = tiny_qwen_adapter()
    records = conversations(tmp_path / "img", 3)
    seen = {}
    real_forward = adapter.model.forward

    def spy(*args, labels=None, **kwargs):
        seen["labels"], seen["ids"] = labels, kwargs["input_ids"]
        return real_forward(*args, labels=labels, **kwargs)

    monkeypatch.setattr(adapter.model, "forward", spy)
    loss = finetune.sft_loss(adapter, records)
    assert torch.isfinite(loss)
    for row, record in enumerate(records):
        kept = seen["labels"][row][seen["labels"][row] != -100]
        assert adapter.tokenizer.decode(kept) == record["gt"] + "<|im_end|>"


@pytest.mark.slow
def test_finetune_saves_a_loadable_model_with_vision_untouched(tmp_path):
    adapter = tiny_qwen_adapter()
    before = {n: p.detach().clone() for n, p in adapter.model.named_parameters()}
    config = finetune.FinetuneConfig(steps=3, lr=1e-3, batch=2, accumulate=2, checkpoint_every=2)
    result = finetune.finetune(adapter, conversations(tmp_path / "img", 8), config, tmp_path / "model", progress=False)
    assert len(result["log"]) == 3
    after = dict(adapter.model.named_parameters())
    assert all(torch.equal(before[n], after[n]) for n in before if "visual" in n)
    assert any(not torch.equal(before[n], after[n]) for n in before if "language_model" in n)
    reloaded = load_adapter(tmp_path / "model", family="qwen2_vl", dtype="float32")
    for name, param in reloaded.model.named_parameters():
        assert torch.equal(param, after[name]), name
    assert (tmp_path / "model" / "loss.csv").is_file()


@pytest.mark.slow
def test_interrupted_finetuning_resumes_to_the_uninterrupted_weights(tmp_path, monkeypatch):
    records = conversations(tmp_path / "img", 8)
    config = finetune.FinetuneConfig(steps=4, lr=1e-3, batch=2, checkpoint_every=2)

    def run(out: Path):
        torch.manual_seed(0)
        adapter = tiny_qwen_adapter()
        finetune.finetune(adapter, records, config, out, progress=False)
        return adapter.model

    uninterrupted = run(tmp_path / "a")
    real, calls = finetune.sft_loss, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # stopped during step 3 of 4
        return real(*args, **kwargs)

    monkeypatch.setattr(finetune, "sft_loss", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "b")
    monkeypatch.setattr(finetune, "sft_loss", real)
    resumed = run(tmp_path / "b")
    for (name, a), (_, b) in zip(uninterrupted.state_dict().items(), resumed.state_dict().items()):
        assert torch.allclose(a, b, atol=1e-6), name


@pytest.mark.parametrize("family", ["qwen2_vl", "llava_onevision"])
def test_the_unquantized_reload_for_a_qlora_merge_takes_the_recorded_preprocessing(tmp_path, family):
    """The recorded preprocessing holds derived facts (patch size, token counts) load_adapter refuses; the
    reload passes back only what can be set, so a QLoRA merge reloads the same base and backend."""
    from mimic_utils.models import tiny

    model, processor = tiny.build_tiny(family)
    tiny.save_tiny(model, processor, tmp_path)
    adapter = load_adapter(tmp_path, dtype="float32")
    assert set(adapter.settings["preprocessing"]) - set(models.PREPROCESSING_KEYS[family]) - {"image_backend"}
    base = finetune._reload_unquantized(adapter)
    assert all(torch.equal(a, b) for a, b in zip(base.state_dict().values(), adapter.model.state_dict().values()))


class RunsCode:
    """What a malicious checkpoint would hold: unpickling it calls ``Path.touch(marker)``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_a_crafted_checkpoint_is_refused_naming_the_file_and_runs_nothing(tmp_path, writer):
    import pickle

    marker = tmp_path / "code_ran"
    checkpoint = tmp_path / "checkpoints" / "finetune.pt"
    checkpoint.parent.mkdir()
    state = {"module": {}, "optimizer": {}, "step": 1, "log": [RunsCode(marker)]}
    if writer == "torch.save":
        torch.save(state, checkpoint)
    else:
        checkpoint.write_bytes(pickle.dumps(state))
    module = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(module.parameters())
    with pytest.raises(finetune.CheckpointError, match=rf"{checkpoint}: refused to resume"):
        finetune._resume(checkpoint, module, optimizer, [], "finetune", 4)
    assert not marker.exists()  # the payload never ran
    with pytest.raises(finetune.CheckpointError, match="lacks"):
        torch.save({"step": 1}, checkpoint)
        finetune.load_checkpoint(checkpoint)


def test_a_checkpoint_holds_only_what_weights_only_loading_accepts(tmp_path):
    import numpy as np

    module = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-3)
    module(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    log = [{"stage": "s", "step": 1, "loss": 0.5, "tf_counting": np.float64(0.25), "hits": torch.tensor(3)}]
    finetune.save_checkpoint(tmp_path / "c.pt", module, optimizer, 1, log)
    state = torch.load(tmp_path / "c.pt", weights_only=True)
    assert state["log"] == [{"stage": "s", "step": 1, "loss": 0.5, "tf_counting": 0.25, "hits": 3}]
    again = torch.optim.AdamW(module.parameters(), lr=1e-3)
    again.load_state_dict(state["optimizer"])
    assert torch.equal(again.state_dict()["state"][0]["exp_avg"], optimizer.state_dict()["state"][0]["exp_avg"])


@pytest.mark.slow
def test_masked_lora_trains_adapters_and_projector_and_the_mask_travels_with_the_model(tmp_path):
    adapter = tiny_qwen_adapter()
    adapter.set_mask("second_half")
    before = {n: p.detach().clone() for n, p in adapter.model.named_parameters()}
    config = finetune.FinetuneConfig(steps=2, lr=1e-2, batch=2, lora={"r": 4, "alpha": 8, "dropout": 0.0})
    finetune.finetune(adapter, conversations(tmp_path / "img", 8), config, tmp_path / "model", progress=False)
    merged = dict(adapter.model.named_parameters())
    assert set(merged) == set(before)  # LoRA merged away: the same architecture as the base
    changed = {n for n in before if not torch.equal(before[n], merged[n])}
    assert changed and all("language_model" in n or "merger" in n for n in changed)
    assert any("merger" in n for n in changed) and not any("visual.blocks" in n for n in changed)
    reloaded = load_adapter(tmp_path / "model", family="qwen2_vl", dtype="float32")
    assert reloaded.mask_layers == adapter.mask_layers == (1,)
    assert reloaded.settings["mask"] == {"layers": [1], "mode": "blockwise"}


@pytest.mark.slow
def test_two_processes_under_accelerate_average_their_gradients(tmp_path):
    """Each rank draws its own batches: only synchronised gradients keep the two replicas identical."""
    conversations(tmp_path / "img", 8)  # images written once, before the ranks start
    out = launch_two_cpu_processes(HERE / "finetune_worker.py", tmp_path / "img", tmp_path)
    assert out.count("processes=2") == 2
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    base = tiny_qwen_adapter().model.state_dict()
    assert any(not torch.equal(base[n], rank0[n]) for n in base if "language_model" in n)
    for name in rank0:
        assert torch.allclose(rank0[name], rank1[name], atol=1e-6), name
    assert (tmp_path / "model" / "model.safetensors").is_file()


def test_a_16_bit_model_trains_fp32_master_weights_and_keeps_the_frozen_ones_16_bit():
    adapter = tiny_qwen_adapter()
    adapter.model.to(torch.bfloat16)
    finetune.set_trainable(adapter.model, ("language_model",))
    assert finetune.master_weights(adapter.model) == torch.bfloat16
    for name, param in adapter.model.named_parameters():
        assert param.dtype == (torch.float32 if param.requires_grad else torch.bfloat16), name
    fp32 = tiny_qwen_adapter()
    finetune.set_trainable(fp32.model, ("language_model",))
    assert finetune.master_weights(fp32.model) is None


@pytest.mark.slow
def test_a_bf16_model_finetunes_under_autocast_and_is_saved_in_bf16(tmp_path):
    adapter = tiny_qwen_adapter()
    adapter.model.to(torch.bfloat16)
    before = {n: p.detach().float().clone() for n, p in adapter.model.named_parameters()}
    config = finetune.FinetuneConfig(steps=2, lr=1e-3, batch=2)
    result = finetune.finetune(adapter, conversations(tmp_path / "img", 8), config, tmp_path / "model", progress=False)
    assert all(torch.isfinite(torch.tensor(e["loss"])) for e in result["log"])
    reloaded = load_adapter(tmp_path / "model", family="qwen2_vl")
    assert reloaded.model.dtype == torch.bfloat16
    changed = [n for n, p in reloaded.model.named_parameters() if not torch.equal(before[n], p.float())]
    assert changed and all("language_model" in n for n in changed)


@pytest.mark.slow
def test_qlora_style_merge_into_a_reloaded_base_equals_the_in_place_merge(tmp_path):
    """The quantised path saves the PEFT adapter and merges it into the base loaded again unquantised;
    with a full-precision base both routes must give the same model."""
    base_dir = tmp_path / "base"
    tiny_qwen_adapter().save(base_dir)
    records = conversations(tmp_path / "img", 8)
    config = finetune.FinetuneConfig(steps=2, lr=1e-2, batch=2, lora={"r": 4, "alpha": 8, "dropout": 0.0})
    merged = {}
    for route in ("in_place", "reload"):
        adapter = load_adapter(base_dir, family="qwen2_vl", dtype="float32")
        torch.manual_seed(0)  # the same LoRA initialisation on both routes
        finetune.apply_lora(adapter, **config.lora)
        params = [p for p in adapter.model.parameters() if p.requires_grad]
        loss = finetune.sft_loss(adapter, records[:4])
        loss.backward()
        torch.optim.SGD(params, lr=0.1).step()
        reload = (lambda: load_adapter(base_dir, family="qwen2_vl", dtype="float32").model) if route == "reload" else None
        merged[route] = finetune.merge_lora(adapter, tmp_path / route, reload_base=reload).state_dict()
    assert (tmp_path / "reload" / "lora" / "adapter_config.json").is_file()
    assert set(merged["in_place"]) == set(merged["reload"])
    for name, value in merged["in_place"].items():
        assert torch.allclose(value, merged["reload"][name], atol=1e-6), name


def test_checkpoint_progress_reads_the_step_a_stage_would_resume_from(tmp_path):
    """0 without a checkpoint; else the step it was saved at (callers timing a stage need it first)."""
    module = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(module.parameters())
    path = tmp_path / "stage.pt"
    assert finetune.checkpoint_progress(path) == (0, None)
    finetune.save_checkpoint(path, module, optimizer, 7, [{"stage": "s", "step": 7, "loss": 0.5}])
    assert finetune.checkpoint_progress(path) == (7, None)


def test_a_stage_checkpoint_records_its_training_time_across_resumes(tmp_path):
    """train_stage saves the stage's seconds with each checkpoint and adds to them when it resumes, so a run
    that starts a phase from another run's checkpoint (the ov stage's resumed phases) counts that earlier
    time without it being written in by hand; a checkpoint from before the record gives None."""
    module = torch.nn.Linear(2, 1)
    params = list(module.parameters())

    def loss_fn(rng, batch, net):
        return net(torch.ones(batch, 2)).pow(2).mean()

    path = tmp_path / "stage.pt"
    schedule = finetune.StageSchedule(steps=4, lr=1e-3, batch=2, warmup=0, checkpoint_every=2)
    optimizer = torch.optim.AdamW(params)
    finetune.save_checkpoint(path, module, optimizer, 2, [{"stage": "s", "step": 2, "loss": 1.0}])
    assert finetune.checkpoint_progress(path)[1] is None  # saved without a time: an older checkpoint
    assert finetune.checkpoint_progress(tmp_path / "none.pt")[1] is None
    finetune.train_stage("s", module, params, loss_fn, schedule, 0, path, [], progress=False)
    assert finetune.checkpoint_progress(path) == (4, None)  # a part is not the whole
    finetune.save_checkpoint(path, module, optimizer, 2, [{"stage": "s", "step": 2, "loss": 1.0}], seconds=100.0)
    finetune.train_stage("s", module, params, loss_fn, schedule, 0, path, [], progress=False)
    assert finetune.checkpoint_progress(path)[0] == 4
    assert 100.0 < finetune.checkpoint_progress(path)[1] < 160.0  # the earlier 100 s and this run's two steps
    fresh, other = tmp_path / "fresh.pt", torch.nn.Linear(2, 1)
    finetune.train_stage("s", other, list(other.parameters()), loss_fn, schedule, 0, fresh, [], progress=False)
    assert 0.0 <= finetune.checkpoint_progress(fresh)[1] < 60.0


def _fake(n_images: int, i: int) -> dict:
    return {"id": f"{n_images}-{i}", "images": ["x.png"] * n_images}


def test_grouped_batches_hold_one_number_of_images_and_draw_each_conversation_as_mixed_ones_do():
    import collections
    import random

    multi = [_fake(n, i) for n in (2, 4, 10) for i in range(n)]  # groups of 2, 4 and 10 conversations
    single = [_fake(1, i) for i in range(5)]
    groups = finetune.by_images(multi), finetune.by_images(single)
    assert list(groups[0]) == [2, 4, 10] and len(groups[0][10]) == 10
    draw, seen, mixed_seen = random.Random(0), collections.Counter(), collections.Counter()
    for _ in range(20000):
        batch = finetune.grouped_batch(draw, *groups, 8, 0.25)
        assert len(batch) == 8 and len({len(r["images"]) for r in batch}) == 1
        seen.update(r["id"] for r in batch)
        mixed_seen.update(r["id"] for r in finetune.mixed_batch(draw, multi, single, 8, 0.25))
    total = sum(seen.values())
    # each conversation's share: 0.25 / 5 if single-image, 0.75 / 16 otherwise, as mixed_batch draws them
    for r in multi + single:
        expected = 0.25 / 5 if len(r["images"]) == 1 else 0.75 / 16
        assert seen[r["id"]] / total == pytest.approx(expected, rel=0.1), r["id"]
        assert mixed_seen[r["id"]] / total == pytest.approx(expected, rel=0.1), r["id"]
    no_single = finetune.grouped_batch(random.Random(1), groups[0], {}, 4, 1.0)  # no single-image data: multi
    assert all(len(r["images"]) > 1 for r in no_single)


def test_grouping_by_images_keeps_earlier_runs_digest_and_is_a_new_run_when_set():
    import hashlib
    import json
    from dataclasses import asdict, replace

    config = finetune.FinetuneConfig(steps=360, lr=1e-3)
    before = {k: v for k, v in asdict(config).items() if k != "group_by_images"}  # the configuration as it was
    assert config.digest() == hashlib.sha256(json.dumps(before, sort_keys=True).encode()).hexdigest()[:12]
    assert replace(config, group_by_images=True).digest() != config.digest()


@pytest.mark.slow
def test_finetune_with_batches_grouped_by_images_trains_on_one_number_of_images_a_step(tmp_path, monkeypatch):
    adapter = tiny_qwen_adapter()
    seen: list[set[int]] = []
    real = finetune.sft_batch

    def spy(adapter, records, vision_cache=False):
        seen.append({len(r["images"]) for r in records})
        return real(adapter, records, vision_cache)

    monkeypatch.setattr(finetune, "sft_batch", spy)
    config = finetune.FinetuneConfig(steps=3, lr=1e-3, batch=3, checkpoint_every=3, group_by_images=True)
    result = finetune.finetune(adapter, conversations(tmp_path / "img", 8), config, tmp_path / "model", progress=False)
    assert len(result["log"]) == 3 and len(seen) == 3 and all(len(s) == 1 for s in seen)
    assert (tmp_path / "model" / "finetune.json").is_file()
