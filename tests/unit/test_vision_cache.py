"""The vision-feature cache changes nothing a model computes, on all three families; it is never stale."""

import pytest
import torch

from mimic_utils.models import tiny, vision_cache, vlm

FAMILIES = ("qwen2_vl", "llava_onevision", "internvl")


@pytest.fixture(autouse=True)
def fresh_cache(tmp_path):
    """Every test starts from an empty on-disk cache of its own."""
    cache = vision_cache.configure(tmp_path / "vision")
    yield cache
    vision_cache.configure(None)


@pytest.mark.parametrize("family", FAMILIES)
def test_cached_features_equal_the_models_own_vision_path(family, tiny_adapter, two_samples, single_thread):
    adapter = tiny_adapter(family)
    batch = adapter.prepare(two_samples, vision_cache=False)
    inputs = {k: v for k, v in batch.inputs.items()}
    cached = vision_cache.image_features(adapter.model, family, inputs, batch.image_tokens)
    reference = adapter.model.get_image_features(
        **{k: v for k, v in inputs.items() if k in __import__("inspect").signature(
            adapter.model.get_image_features).parameters}, return_dict=True).pooler_output
    flat = lambda f: torch.cat(list(f)) if isinstance(f, (list, tuple)) else f.reshape(-1, f.shape[-1])  # noqa: E731
    torch.testing.assert_close(flat(cached), flat(reference), rtol=1e-5, atol=1e-5)
    # and the model call routes them in place of the tower: same logits as the model's own vision path
    with torch.no_grad():
        routed = adapter.model(**adapter.model_inputs(batch)).logits
        own = adapter.model(**batch.inputs).logits
    torch.testing.assert_close(routed, own, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_answers_and_losses_equal_with_and_without_the_cache(family, tiny_adapter, two_samples, fresh_cache,
                                                              single_thread):
    adapter = tiny_adapter(family)
    plain = adapter.generate(adapter.prepare(two_samples, vision_cache=False), max_new_tokens=6)
    cold = adapter.generate(adapter.prepare(two_samples), max_new_tokens=6)
    assert fresh_cache.misses == 5 and fresh_cache.hits == 0
    warm = adapter.generate(adapter.prepare(two_samples), max_new_tokens=6)
    assert fresh_cache.hits == 5
    assert plain == cold == warm
    for pool in (2,):
        assert (adapter.generate(adapter.prepare(two_samples, pool=pool, vision_cache=False), max_new_tokens=6)
                == adapter.generate(adapter.prepare(two_samples, pool=pool), max_new_tokens=6))
    answers = ["3", "bus, car"]
    losses = []
    for use in (False, True):
        batch = adapter.prepare(two_samples, answers=answers, vision_cache=use)
        labels = batch.inputs["input_ids"].clone()
        with torch.no_grad():
            losses.append(adapter.forward(batch, labels=labels).loss.item())
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)


def test_disk_entries_are_reused_by_a_new_process(tiny_adapter, two_samples, tmp_path, single_thread):
    adapter = tiny_adapter("qwen2_vl")
    first = adapter.generate(adapter.prepare(two_samples), max_new_tokens=4)
    files = list((tmp_path / "vision").rglob("*.pt"))
    assert len(files) == 5
    reloaded = vision_cache.configure(tmp_path / "vision")  # empty memory, same directory
    assert adapter.generate(adapter.prepare(two_samples), max_new_tokens=4) == first
    assert reloaded.disk_hits == 5 and reloaded.misses == 0


def test_a_changed_tower_is_never_served_from_a_stale_entry(two_samples, fresh_cache, single_thread):
    model, processor = tiny.build_tiny("qwen2_vl")
    adapter = vlm.adapter_from_model(model, processor, "qwen2_vl")
    inner = vision_cache.inner_model(model)
    split = vision_cache.SPLITS["qwen2_vl"]
    before = vision_cache.tower_fingerprint(inner, split)
    adapter.model_inputs(adapter.prepare(two_samples))
    with torch.no_grad():
        inner.visual.blocks[0].mlp.fc1.weight.add_(0.5)  # an in-place update, as an optimizer step makes
    after = vision_cache.tower_fingerprint(inner, split)
    assert after != before
    fresh = adapter.generate(adapter.prepare(two_samples, vision_cache=False), max_new_tokens=4)
    assert adapter.generate(adapter.prepare(two_samples), max_new_tokens=4) == fresh
    # a merger (projector) change does not touch the tower's entries: they stay valid and are reused
    hits = fresh_cache.hits
    with torch.no_grad():
        inner.visual.merger.mlp[0].weight.mul_(1.1)
    assert vision_cache.tower_fingerprint(inner, split) == after
    adapter.model_inputs(adapter.prepare(two_samples))
    assert fresh_cache.hits == hits + 5


def test_features_are_computed_in_eval_mode_even_when_the_model_is_in_train_mode(two_samples, fresh_cache,
                                                                                 single_thread):
    model, processor = tiny.build_tiny("qwen2_vl")
    adapter = vlm.adapter_from_model(model, processor, "qwen2_vl")
    for name, param in model.named_parameters():
        param.requires_grad = "visual" not in name  # a frozen tower, as in finetuning
    model.train()
    inner = vision_cache.inner_model(model)
    inner.visual.blocks[0].attn.proj.register_forward_hook(lambda module, *_: seen.append(module.training))
    seen: list[bool] = []
    adapter.model_inputs(adapter.prepare(two_samples))
    assert seen == [False] and inner.visual.training  # encoded in eval mode, the mode given back


def test_a_tower_in_training_is_not_cached(two_samples, fresh_cache, single_thread):
    model, processor = tiny.build_tiny("qwen2_vl")
    adapter = vlm.adapter_from_model(model, processor, "qwen2_vl")
    model.train()
    inner = vision_cache.inner_model(model)
    assert vision_cache.tower_fingerprint(inner, vision_cache.SPLITS["qwen2_vl"]) is None
    batch = adapter.prepare(two_samples)
    assert adapter.model_inputs(batch) is batch.inputs  # the model's own vision path runs
    assert fresh_cache.misses == 0 and fresh_cache.hits == 0


def test_projector_gradients_flow_through_cached_features(two_samples, single_thread):
    model, processor = tiny.build_tiny("qwen2_vl")
    adapter = vlm.adapter_from_model(model, processor, "qwen2_vl")
    inner = vision_cache.inner_model(model)
    for name, param in model.named_parameters():
        param.requires_grad = "merger" in name
    model.train()
    grads = []
    for use in (False, True):
        model.zero_grad()
        batch = adapter.prepare(two_samples, answers=["3", "bus"], vision_cache=use)
        adapter.forward(batch, labels=batch.inputs["input_ids"].clone()).loss.backward()
        grads.append(inner.visual.merger.mlp[0].weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-6)
