"""``python -m mimic_utils.organism --adopt DIR --retire NAME``: a tried si + ov becomes the profile's organisms.

A recipe is tried beside the committed organisms with ``--models DIR`` (``DIR/si``, ``DIR/ov``), so that the
study keeps running on the committed ones while it trains. Adopting it is more than a copy: the records
must say how to retrain the organisms *as committed* (the profile's command, not the tried folder), the ov
must name the si folder it now sits beside, and the organisms they replace keep their records in
``models/tried/``. Everything is checked before a file is touched:

* ``DIR/si`` and ``DIR/ov`` are trained (weights and ``training.json``), and the ov started from ``DIR/si``'s
  weights (sha256);
* their recorded recipes are the profile's (``params/<profile>/organism.yaml`` and ``organism_ov.yaml``):
  edit those first, so that ``make study`` reuses the adopted organisms instead of retraining them;
* ``models/tried/NAME-si`` and ``NAME-ov`` do not exist yet.

Then the committed records move to ``models/tried/NAME-si`` and ``NAME-ov`` (with the recipe each was
trained with, as YAML; their weights stay in the repository's history), the tried folders' files are
copied over the committed ones (with their held-out answers, never their checkpoints), the commands and
the ov's si path are rewritten (the tried command kept as ``adopted_from``), and both cards are rewritten
by ``--rewrite-card``, which re-scores from the copied answers: an ``eval.json`` that does not come out
the same stops the adoption with the difference named.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path

import yaml

from mimic_utils.artifacts import write_json, write_text
from mimic_utils.organism.card import changed_keys, trained_config
from mimic_utils.organism.config import OrganismConfig

#: what a trained organism's folder leaves behind but does not hand on: phase checkpoints (large, and
#: keyed by recipe) stay in the tried folder
NOT_COPIED = ("checkpoints",)
#: the records of a committed organism that move to ``models/tried/`` when it is replaced
RETIRED_RECORDS = ("README.md", "eval.json", "training.json", "loss.csv", "loss.md", "curves.png")


def problems(candidate: Path, models: Path, params: Path, ov_params: Path, retire: str) -> list[str]:
    """Why ``candidate`` (holding si/ and ov/) cannot replace the organisms in ``models``; empty when it can."""
    from mimic_utils.organism import ov as organism_ov

    found = []
    si_dir, ov_dir = Path(candidate) / "si", Path(candidate) / "ov"
    for folder in (si_dir, ov_dir):
        for name in ("model.safetensors", "training.json", "eval.json"):
            if not (folder / name).is_file():
                found.append(f"{folder / name}: missing (train it with --models {candidate} first)")
    if found:
        return found
    recorded = trained_config(si_dir)
    wanted = asdict(OrganismConfig.from_yaml(params))
    keys = changed_keys(recorded, wanted)
    if keys:
        found.append(f"{params}: differs from the recipe {si_dir} was trained with in {keys} "
                     f"(e.g. {keys[0]}: {wanted.get(keys[0])!r} here, {recorded.get(keys[0])!r} there); set them first")
    recipe = organism_ov.OvConfig.from_yaml(ov_params)
    ok, why = organism_ov.reusable(ov_dir, recipe, si_dir)
    if not ok:
        found.append(f"{ov_dir}: {why} ({ov_params}, {si_dir})")
    scores = json.loads((ov_dir / "eval.json").read_text(encoding="utf-8"))
    if recipe.format_images and "format_multi" not in scores:
        found.append(f"{ov_dir}/eval.json: scored before the multi-image format check, which adopting would add "
                     f"while it re-scores; run `python -m mimic_utils.organism --stage ov --rewrite-card --models "
                     f"{candidate}` first")
    for stage in ("si", "ov"):
        target = Path(models) / "tried" / f"{retire}-{stage}"
        if target.exists():
            found.append(f"{target}: exists; pick another --retire name")
    return found


def retire(folder: Path, target: Path, recipe_name: str) -> None:
    """Move the committed organism's records to ``target`` with the recipe it was trained with (YAML)."""
    target.mkdir(parents=True)
    for name in RETIRED_RECORDS:
        if (folder / name).is_file():
            shutil.move(str(folder / name), target / name)
    config = json.loads((target / "training.json").read_text(encoding="utf-8"))["config"]
    write_text(target / recipe_name, yaml.safe_dump(config, sort_keys=True))


def replace_files(source: Path, folder: Path) -> None:
    """``folder``'s files (and its held-out answers) replaced by ``source``'s, checkpoints left out."""
    for old in folder.iterdir():
        if old.is_file():
            old.unlink()
        elif old.name == "heldout":
            shutil.rmtree(old)
    for new in source.iterdir():
        if new.name in NOT_COPIED:
            continue
        if new.is_dir():
            shutil.copytree(new, folder / new.name)
        else:
            shutil.copy2(new, folder / new.name)


def rewrite_record(folder: Path, command: str, tried: Path, **fields) -> None:
    """``training.json`` with the profile's ``command`` and ``fields``; the ``tried`` folder it was trained in
    and its command are kept as ``adopted_from``."""
    path = folder / "training.json"
    training = json.loads(path.read_text(encoding="utf-8"))
    adopted = {"path": str(Path(tried).resolve()), "command": training["command"]}  # written relative by write_json
    write_json(path, {**training, **fields, "command": command,
                      "adopted_from": training.get("adopted_from", adopted)})


def adopt_records(candidate: Path, models: Path, params: Path, ov_params: Path, profile: str,
                  retire_as: str) -> int:
    """Check, retire, copy and rewrite the records (not the cards: :func:`mimic_utils.organism.cli.run_adopt`
    rewrites them next); 2 with every problem printed, and nothing changed, when one is found."""
    from mimic_utils.organism import ov as organism_ov

    found = problems(candidate, models, params, ov_params, retire_as)
    if found:
        print("[organism] --adopt: nothing changed, because:\n  " + "\n  ".join(found))
        return 2
    models = Path(models)
    for stage, recipe_name in (("si", "organism.yaml"), ("ov", "organism_ov.yaml")):
        folder = models / stage
        if (folder / "training.json").is_file():
            retire(folder, models / "tried" / f"{retire_as}-{stage}", recipe_name)
        folder.mkdir(parents=True, exist_ok=True)
        replace_files(Path(candidate) / stage, folder)
    base = ["python", "-m", "mimic_utils.organism", "--profile", profile, "--stage"]
    rewrite_record(models / "si", " ".join(base + ["si"]), Path(candidate) / "si")
    rewrite_record(models / "ov", " ".join(base + ["ov"]), Path(candidate) / "ov",
                   si=organism_ov.si_record(models / "si"))
    return 0


def rescored_differently(candidate: Path, models: Path) -> list[str]:
    """After the cards were rewritten by re-scoring: each stage whose ``eval.json`` no longer equals the tried
    run's, with the keys that differ."""
    found = []
    for stage in ("si", "ov"):
        tried = json.loads((Path(candidate) / stage / "eval.json").read_text(encoding="utf-8"))
        now = json.loads((Path(models) / stage / "eval.json").read_text(encoding="utf-8"))
        changed = changed_keys(now, tried)
        if changed:
            found.append(f"{Path(models) / stage}/eval.json re-scored differently from {candidate}/{stage} in {changed}")
    return found
