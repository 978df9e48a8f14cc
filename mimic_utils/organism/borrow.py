"""An ov recipe that changes only the main phase starts from another run's finished warm and grow phases.

    python -m mimic_utils.organism --profile cpu --stage ov --ov-params RECIPE.yaml --models DIR \\
        --phases-from outputs/cpu/cache/tried/ov-v15-warm-lr/ov

The ov stage trains its warm phase and grow phases (3,400 steps in the committed recipe, about half of its
time on this machine) before the main phase. A recipe that differs from a trained run only in the main
phase's keys (:data:`mimic_utils.organism.ov.MAIN_PHASE_KEYS`: steps, lr, conversations, images; and the
shares of ``weights`` when ``warm_weights`` gives the earlier phases their own, the same families kept) trains
exactly those phases again, from the same si, on the same conversations and seeds. Here their checkpoints
are copied from that run into this one's checkpoint folder instead, and the stage resumes them as it resumes
any interrupted phase (their earlier time read from the checkpoints and counted in the card's training
time; their curves are the donor's, so a curve added to the stage after the donor was trained, such as
``gen_format_4img``, starts at the main phase). Anything else that differs — the si weights, another key — is refused before a scene is rendered,
naming what differs: the phases would not be the ones this recipe trains.
"""

from __future__ import annotations

import shutil
from dataclasses import asdict
from pathlib import Path

from mimic_utils.artifacts import relative_to_root
from mimic_utils.organism.card import changed_keys
from mimic_utils.organism.ov import MAIN_PHASE_KEYS, OvConfig, trained_ov, weights_sha256
from mimic_utils.training.finetune import checkpoint_progress


def donor_recipe(donor_dir: Path, ov: OvConfig, si_dir: Path) -> OvConfig:
    """The recipe of the trained ov run in ``donor_dir``, checked to train the same earlier phases as ``ov``
    from the same si weights; a :class:`ValueError` naming the folder and what differs otherwise."""
    donor_dir = Path(donor_dir)
    record = trained_ov(donor_dir)
    if record is None:
        raise ValueError(f"--phases-from {donor_dir}: no trained ov run there (training.json beside model.safetensors)")
    theirs_sha, ours_sha = record.get("si", {}).get("sha256"), weights_sha256(si_dir)
    if theirs_sha != ours_sha:
        raise ValueError(f"--phases-from {donor_dir}: it started from other si weights (sha256 {theirs_sha}) than "
                         f"{si_dir} ({ours_sha}), so its phases are not this run's")
    theirs = OvConfig(**record["config"])
    if theirs.earlier_digest() != ov.earlier_digest():
        mine = {k: v for k, v in asdict(ov).items() if k not in MAIN_PHASE_KEYS}
        other = {k: v for k, v in asdict(theirs).items() if k not in MAIN_PHASE_KEYS}
        raise ValueError(f"--phases-from {donor_dir}: its recipe differs in {changed_keys(other, mine)}, not only in "
                         f"the main phase's keys {list(MAIN_PHASE_KEYS)} (or, with warm_weights set, in the shares "
                         "of weights among the same families), so its warm and grow phases are not this recipe's")
    return theirs


def borrow_phases(ov: OvConfig, si_dir: Path, out_dir: Path, donor_dir: Path) -> tuple[list[str], str]:
    """Copy the donor run's warm and grow phase checkpoints into ``out_dir``'s checkpoint folder for ``ov``
    (:func:`donor_recipe` checks they are this recipe's); phases already there are kept. Returns the phases
    copied and the donor as the card names it (its folder, relative to the checkout where it can be)."""
    theirs = donor_recipe(donor_dir, ov, si_dir)
    source = Path(donor_dir) / "checkpoints" / theirs.digest()
    work = Path(out_dir) / "checkpoints" / ov.digest()
    # never the main phase: that is what differs; phases already here are kept
    wanted = [name for name, *_ in ov.phases()[:-1] if not (work / f"{name}.pt").exists()]
    missing = [str(source / f"{name}.pt") for name in wanted if not (source / f"{name}.pt").is_file()]
    if missing:
        raise ValueError(f"--phases-from {donor_dir}: no checkpoint of {missing} there (an adopted organism keeps "
                         "none), so those phases would be trained again; take them from the run that trained them")
    for name in wanted:  # every file read as a checkpoint (refused, naming it, if it is none) before one is copied
        checkpoint_progress(source / f"{name}.pt")
    if wanted:
        work.mkdir(parents=True, exist_ok=True)
    for name in wanted:
        shutil.copy(source / f"{name}.pt", work / f"{name}.pt")
    named = relative_to_root(str(Path(donor_dir).resolve()))
    return wanted, f"the warm and grow phases of {named}: the same recipe but the main phase, from the same si"
