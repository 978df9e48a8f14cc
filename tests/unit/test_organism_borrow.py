"""--phases-from (mimic_utils.organism.borrow): a recipe that changes only the ov stage's main phase takes the
warm and grow phases of a run that trained them, and nothing else."""
import json
from dataclasses import asdict, replace
from pathlib import Path

import pytest
import torch

from mimic_utils.organism import borrow, cli
from mimic_utils.organism import ov as organism_ov
from mimic_utils.training.finetune import checkpoint_progress

RECIPE = organism_ov.OvConfig(warm_steps=3, grow=[[2, 3, 2], [2, 4, 2]], steps=5)


def donor(tmp_path: Path, recipe: organism_ov.OvConfig, si_sha: str, finished: dict[str, int]) -> Path:
    """A trained ov run's folder: training.json, weights and the phase checkpoints ``finished`` (name: step)."""
    folder = tmp_path / "donor" / "ov"
    work = folder / "checkpoints" / recipe.digest()
    work.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"donor weights")
    (folder / "training.json").write_text(json.dumps({"config": asdict(recipe), "si": {"sha256": si_sha}}))
    for name, step in finished.items():
        torch.save({"module": {}, "optimizer": {}, "step": step, "log": [], "seconds": 60.0 * step}, work / f"{name}.pt")
    return folder


@pytest.fixture
def si_dir(tmp_path):
    folder = tmp_path / "si"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"si weights")
    return folder


def test_the_earlier_phases_digest_ignores_the_main_phase_keys_only():
    for key, value in (("steps", 9), ("lr", 3e-4), ("conversations", 7), ("images", [2, 10])):
        other = replace(RECIPE, **{key: value})
        assert other.earlier_digest() == RECIPE.earlier_digest() and other.digest() != RECIPE.digest()
    for key, value in (("warm_lr", 3e-4), ("grow", [[2, 3, 2]]), ("warm_weights", {"which_image": 1}), ("seed", 1)):
        assert replace(RECIPE, **{key: value}).earlier_digest() != RECIPE.earlier_digest()


def test_with_warm_weights_the_shares_of_weights_are_the_main_phases_but_not_its_families():
    warm = replace(RECIPE, warm_weights={"which_image": 3, "counting": 1})
    more = replace(warm, weights={**warm.weights, "which_image": 16})
    assert more.earlier_digest() == warm.earlier_digest() and more.digest() != warm.digest()
    dropped = replace(warm, weights={**warm.weights, "which_image": 0})  # the held-out curves ask one family fewer
    assert dropped.earlier_digest() != warm.earlier_digest()
    reordered = replace(warm, weights=dict(reversed(list(warm.weights.items()))))  # a record sorts them
    assert reordered.earlier_digest() == warm.earlier_digest()
    # without warm_weights every phase trains on weights' shares
    assert replace(RECIPE, weights={**RECIPE.weights, "which_image": 16}).earlier_digest() != RECIPE.earlier_digest()


def test_the_donors_warm_and_grow_phases_are_copied_never_its_main_phase(tmp_path, si_dir):
    sha = organism_ov.weights_sha256(si_dir)
    source = donor(tmp_path, RECIPE, sha, {"ov-warm": 3, "ov-grow-2-3": 2, "ov-grow-2-4": 1, "ov": 5})
    mine = replace(RECIPE, lr=3e-4, steps=8)
    out = tmp_path / "mine" / "ov"
    copied, named = borrow.borrow_phases(mine, si_dir, out, source)
    work = out / "checkpoints" / mine.digest()
    assert copied == ["ov-warm", "ov-grow-2-3", "ov-grow-2-4"]  # a phase stopped early resumes from its step
    assert checkpoint_progress(work / "ov-grow-2-4.pt") == (1, 60.0) and not (work / "ov.pt").exists()
    assert "same recipe but the main phase" in named and str(source) in named
    (work / "ov-warm.pt").write_bytes(b"kept")  # a phase already here is kept as it is
    assert borrow.borrow_phases(mine, si_dir, out, source)[0] == []
    assert (work / "ov-warm.pt").read_bytes() == b"kept"


def test_a_donor_with_other_phases_or_another_si_is_refused_naming_what_differs(tmp_path, si_dir):
    sha = organism_ov.weights_sha256(si_dir)
    source = donor(tmp_path, RECIPE, sha, {"ov-warm": 3})
    with pytest.raises(ValueError, match=r"differs in \['warm_lr'\]"):
        borrow.borrow_phases(replace(RECIPE, warm_lr=3e-4), si_dir, tmp_path / "mine", source)
    with pytest.raises(ValueError, match=r"no checkpoint of .*ov-grow-2-3\.pt"):  # an adopted organism keeps none
        borrow.borrow_phases(RECIPE, si_dir, tmp_path / "mine", source)
    (si_dir / "model.safetensors").write_bytes(b"other si weights")
    with pytest.raises(ValueError, match="other si weights"):
        borrow.borrow_phases(RECIPE, si_dir, tmp_path / "mine", source)
    with pytest.raises(ValueError, match="no trained ov run"):
        borrow.borrow_phases(RECIPE, si_dir, tmp_path / "mine", tmp_path / "nowhere")
    assert not (tmp_path / "mine").exists()  # refused before anything is written


def test_the_cli_takes_the_phases_then_trains_and_names_the_donor_on_the_card(tmp_path, si_dir, monkeypatch):
    sha = organism_ov.weights_sha256(si_dir)
    source = donor(tmp_path, RECIPE, sha, {"ov-warm": 3, "ov-grow-2-3": 2, "ov-grow-2-4": 2})
    recipe = tmp_path / "organism_ov.yaml"
    recipe.write_text(json.dumps({**asdict(RECIPE), "lr": 3e-4}))
    trained = []
    monkeypatch.setattr(organism_ov, "run", lambda ov, si, out, command, resumed_from=None:
                        trained.append((ov.lr, command, resumed_from)))
    assert cli.ensure_ov(recipe, si_dir, tmp_path / "mine", "cpu", False, "cmd", source) == 0
    assert trained[0][0] == 3e-4 and "the warm and grow phases of" in trained[0][2]
    # a donor that is not this recipe's stops before training, naming the key
    recipe.write_text(json.dumps({**asdict(RECIPE), "warm_lr": 3e-4}))
    assert cli.ensure_ov(recipe, si_dir, tmp_path / "mine", "cpu", False, "cmd", source) == 2 and len(trained) == 1
    with pytest.raises(SystemExit):
        cli.main(["--stage", "all", "--phases-from", str(source)])


@pytest.mark.slow
def test_a_main_phase_variant_resumes_the_donors_phases_and_trains_only_its_own(tmp_path):
    """Two tiny ov stages from one si: the second changes only the main phase's keys (and a share of
    ``weights``, which with ``warm_weights`` set only the main phase trains on) and takes the
    first's warm and grow phases, so their curves up to the main phase are the first run's, only the main
    phase is trained, and the weights are those the second recipe trains from scratch."""
    from mimic_utils.organism import recipe as organism
    from tests.unit.test_organism import SMALL

    si_dir = tmp_path / "si"
    organism.train_organism(replace(SMALL, pool_images=64), si_dir, progress=False)
    (si_dir / "training.json").write_text(json.dumps({"config": asdict(replace(SMALL, pool_images=64))}))
    first = organism_ov.OvConfig(pool_images=64, conversations=60, images=[1, 3], steps=2, warm_steps=2,
                                 warm_conversations=30, warm_images=[2, 2], eval_every=2, batch_tokens=1024,
                                 heldout_questions=12, eval_questions=8, format_questions=3, format_images=0,
                                 grow=[[2, 3, 1]], warm_weights={"which_image": 2, "counting": 1})
    done = organism_ov.train_ov(first, si_dir, tmp_path / "a" / "ov", progress=False)
    (tmp_path / "a" / "ov" / "model.safetensors").write_bytes(b"stand-in")  # trained_ov needs weights and record
    (tmp_path / "a" / "ov" / "training.json").write_text(json.dumps(
        {"config": asdict(first), "si": {"sha256": organism_ov.weights_sha256(si_dir)}}))
    # with warm_weights set, the shares of weights are the main phase's too
    second = replace(first, lr=3e-4, steps=3, conversations=50, images=[1, 4],
                     weights={**first.weights, "which_image": first.weights["which_image"] * 2})
    copied, _ = borrow.borrow_phases(second, si_dir, tmp_path / "b" / "ov", tmp_path / "a" / "ov")
    assert copied == ["ov-warm", "ov-grow-2-3"]
    again = organism_ov.train_ov(second, si_dir, tmp_path / "b" / "ov", progress=False)
    assert again["resumed"] == {"ov-warm": 2, "ov-grow-2-3": 1}
    earlier = [row for row in done["log"] if row["stage"] != "ov"]
    assert [row for row in again["log"] if row["stage"] != "ov"] == earlier
    assert [row["step"] for row in again["log"] if row["stage"] == "ov"] == [1, 2, 3]
    # ... and it ends where the same recipe trained from scratch ends
    scratch = organism_ov.train_ov(second, si_dir, tmp_path / "c" / "ov", progress=False)
    assert scratch["resumed"] == {} and scratch["log"] == again["log"]
    assert (tmp_path / "c" / "ov" / "model.safetensors").read_bytes() == (tmp_path / "b" / "ov" / "model.safetensors").read_bytes()
