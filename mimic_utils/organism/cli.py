"""``python -m mimic_utils.organism``: train the organism (``make organism``), reuse it when its recorded recipe
matches (``--if-needed``), re-score it and rewrite its card (``--rewrite-card``), or compare language-model
shapes (``--probe``, :mod:`mimic_utils.organism.probe`), or make a tried si + ov the profile's (``--adopt``,
:mod:`mimic_utils.organism.adopt`). The recipe itself is :mod:`mimic_utils.organism.recipe`."""

from __future__ import annotations

import argparse
import json
import shlex
from dataclasses import asdict
from pathlib import Path

import torch

from mimic_utils.artifacts import profile_dir, repo_root, write_json
from mimic_utils.machine import machine_record
from mimic_utils.models.vlm import load_adapter
from mimic_utils.organism import recipe
from mimic_utils.organism.card import changed_keys, trained_config, write_card, write_curves
from mimic_utils.organism.config import CHOICE_FAMILY, OrganismConfig
from mimic_utils.organism.recipe import (choice_scores, evaluate_choice, evaluate_single_image, heldout_choice_records,
                                         heldout_records, train_organism)


def run_probe(args, config: OrganismConfig, params: Path, profile_root: Path, command: str) -> int:
    """``--probe``: :func:`mimic_utils.organism.probe.probe`, figures written to ``--out``."""
    from mimic_utils.organism import probe as organism_probe

    minutes = None if args.steps is not None else args.minutes
    base = Path(args.base) if args.base else profile_root / "models" / "si"
    out = Path(args.out) if args.out else profile_root / "models" / "probe.json"
    result = organism_probe.probe(config, base, out.parent / out.stem, minutes=minutes, steps=args.steps,
                                  pool_images=args.pool_images, conversations=args.conversations,
                                  heldout_questions=args.heldout_questions, choice_questions=args.choice_questions,
                                  progress=not args.quiet)
    result["params"] = str(params)
    json_path, md_path = organism_probe.write_probe(result, out, command)
    print(md_path.read_text(encoding="utf-8"))
    print(f"[organism] probe figures: {json_path}, {md_path}")
    return 0


def run_compare(args) -> int:
    """``--compare A B``: :func:`mimic_utils.organism.compare.compare`, the table printed."""
    from mimic_utils.analysis.plots import show_table
    from mimic_utils.organism import compare

    try:
        table = compare.compare(Path(args.compare[0]), Path(args.compare[1]), tuple(args.names) if args.names else None,
                                Path(args.answers) if args.answers else None)
    except (FileNotFoundError, ValueError) as err:
        print(f"[organism] --compare: {err}")
        return 2
    show_table(table)
    left_out = {name: n for name, n in table.attrs["unshared"].items() if n}
    if left_out:
        print("[organism] left out, answered by one side only: "
              + ", ".join(f"{n} questions of {name}" for name, n in left_out.items()))
    if args.answers:
        print(f"[organism] per-question answers: {args.answers}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mimic_utils.organism", description=recipe.__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--params", help="the recipe (default: params/<profile>/organism.yaml)")
    parser.add_argument("--if-needed", action="store_true",
                        help="reuse the committed checkpoints when their recorded configurations match the profile's; "
                             "never retrains a committed si (it stops and says why)")
    parser.add_argument("--stage", choices=("si", "ov", "all"), default="all",
                        help="si: the single-image organism (stages 0-2); ov: its multi-image stage, from the "
                             "committed si (mimic_utils.organism.ov); all: both (default)")
    parser.add_argument("--ov-params", help="the ov stage's recipe (default: params/<profile>/organism_ov.yaml)")
    parser.add_argument("--phases-from", metavar="OV_DIR",
                        help="with --stage ov: take the warm and grow phases from this trained ov run when the recipe "
                             "differs from its recipe only in the main phase (mimic_utils.organism.borrow)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--models", help="the folder holding si/ and ov/ (default: outputs/<profile>/models); "
                                         "another folder trains a tried recipe beside the committed organisms")
    parser.add_argument("--adopt", metavar="DIR",
                        help="make the si and ov trained with --models DIR the profile's organisms (their recipes "
                             "must be the profile's; mimic_utils.organism.adopt); needs --retire")
    parser.add_argument("--retire", metavar="NAME",
                        help="with --adopt: the replaced organisms' records go to models/tried/NAME-si and NAME-ov")
    parser.add_argument("--rewrite-card", action="store_true",
                        help="re-score the trained si (--stage si) or ov checkpoint and rewrite eval.json and its model card")
    compare = parser.add_argument_group("compare (--compare): two scored ov checkpoints on the same held-out "
                                        "questions, paired (mimic_utils.organism.compare)")
    compare.add_argument("--compare", nargs=2, metavar=("A", "B"), help="their folders; prints B - A per family")
    compare.add_argument("--names", nargs=2, metavar=("NAME_A", "NAME_B"), help="their names (default: the folders')")
    compare.add_argument("--answers", help="write the per-question answers of both here (CSV)")
    probe = parser.add_argument_group("probe (--probe): language-model shapes at equal wall time, see "
                                      "mimic_utils.organism.probe")
    probe.add_argument("--probe", action="store_true", help="compare shapes instead of training the organism")
    probe.add_argument("--minutes", type=float, default=6.0, help="stage 1+2 training wall time per shape")
    probe.add_argument("--steps", type=int, help="steps per stage instead of --minutes (tests)")
    probe.add_argument("--pool-images", type=int, default=20000, help="training scenes rendered for the probe")
    probe.add_argument("--conversations", type=int, default=40000, help="stage-2 conversations built for the probe")
    probe.add_argument("--heldout-questions", type=int, default=600, help="held-out single-image questions")
    probe.add_argument("--choice-questions", type=int, default=400, help="held-out multiple-choice questions")
    probe.add_argument("--base", help="organism whose vision tower is reused (default: <profile>/models/si)")
    probe.add_argument("--out", help="figures file (default: outputs/<profile>/models/probe.json, and .md)")
    probe.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    if args.phases_from and args.stage != "ov":
        parser.error("--phases-from needs --stage ov (the phases are the ov stage's, taken for an si already trained)")
    torch.set_num_threads(args.threads)
    if args.compare:
        return run_compare(args)
    root = repo_root()
    params = Path(args.params) if args.params else root / "params" / args.profile / "organism.yaml"
    if not params.is_file():
        print(f"[organism] {params}: missing; the {args.profile} profile has no organism of its own")
        return 2
    config = OrganismConfig.from_yaml(params)
    if args.probe:
        import sys

        command = shlex.join(["python", "-m", "mimic_utils.organism", *(sys.argv[1:] if argv is None else argv)])
        return run_probe(args, config, params, profile_dir(args.profile, root), command)
    models = Path(args.models) if args.models else profile_dir(args.profile, root) / "models"
    si_dir, ov_dir = models / "si", models / "ov"
    ov_params = Path(args.ov_params) if args.ov_params else root / "params" / args.profile / "organism_ov.yaml"
    if args.adopt:
        if not args.retire:
            parser.error("--adopt needs --retire NAME (where the replaced organisms' records go)")
        return run_adopt(Path(args.adopt), models, params, ov_params, args.profile, args.retire)
    if args.rewrite_card:  # the recorded organism, whatever the profile's recipe says now
        codes = ([rewrite_card(si_dir)] if args.stage in ("si", "all") else []) + (
            [rewrite_ov_card(ov_dir, si_dir)] if args.stage in ("ov", "all") else [])
        return max(codes)
    if args.stage in ("si", "all"):
        code = ensure_si(config, si_dir, params, args.profile, args.if_needed, stage_command(args, "si"))
        if code:
            return code
    if args.stage in ("ov", "all"):
        return ensure_ov(ov_params, si_dir, ov_dir, args.profile, args.if_needed, stage_command(args, "ov"),
                         Path(args.phases_from) if args.phases_from else None)
    return 0


def run_adopt(candidate: Path, models: Path, params: Path, ov_params: Path, profile: str, retire_as: str) -> int:
    """``--adopt``: :func:`mimic_utils.organism.adopt.adopt_records`, then both cards rewritten by re-scoring
    from the copied held-out answers, which must give the tried run's ``eval.json`` again."""
    from mimic_utils.organism import adopt

    code = adopt.adopt_records(candidate, models, params, ov_params, profile, retire_as)
    if code:
        return code
    codes = [rewrite_card(models / "si"), rewrite_ov_card(models / "ov", models / "si")]
    differ = adopt.rescored_differently(candidate, models)
    if differ:
        print("[organism] --adopt: the adopted records are in place, but read the difference before committing:\n  "
              + "\n  ".join(differ))
        return 2
    print(f"[organism] adopted {candidate} as {models / 'si'} and {models / 'ov'}; the replaced records are in "
          f"{models / 'tried'}/{retire_as}-si and -ov")
    return max(codes)


def stage_command(args, stage: str) -> str:
    """The command that retrains one stage as this call did, for its card: the profile and stage, plus the
    recipe and models folder when they are not the profile's (a tried recipe trained beside the committed one)."""
    words = ["python", "-m", "mimic_utils.organism", "--profile", args.profile, "--stage", stage]
    recipe = ("--params", args.params) if stage == "si" else ("--ov-params", args.ov_params)
    extra = [("--phases-from", args.phases_from)] if stage == "ov" else []
    for flag, value in (recipe, ("--models", args.models), *extra):
        if value:
            words += [flag, value]
    return shlex.join(words)


def ensure_si(config: OrganismConfig, si_dir: Path, params: Path, profile: str, if_needed: bool,
              command: str | None = None) -> int:
    """Train the si checkpoint, or with ``if_needed`` reuse it when its recorded recipe is ``config``.

    ``--if-needed`` never retrains a committed si checkpoint (about 55 minutes, and every notebook's
    results with it): when its recorded recipe differs from the profile's it stops, naming the keys."""
    recorded = trained_config(si_dir)
    if if_needed and recorded == asdict(config):
        print(f"[organism] reusing the si checkpoint in {si_dir} (its training configuration matches {params})")
        return 0
    if if_needed and recorded is not None:
        changed = changed_keys(recorded, asdict(config))
        print(f"[organism] the si checkpoint in {si_dir} was trained with another recipe than {params} (keys "
              f"{changed}); --if-needed does not retrain si: run `python -m mimic_utils.organism --profile {profile} "
              "--stage si` (about 55 minutes on 2 cores, then the ov stage again), or restore the recipe")
        return 2
    if if_needed:
        print("[organism] training the si checkpoint first: none found (about 55 minutes on 2 cores)")
    machine = machine_record()  # before training: the cores are this run's alone then
    summary = {**train_organism(config, si_dir), "machine": machine}
    write_curves(si_dir, summary["log"])
    command = command or f"python -m mimic_utils.organism --profile {profile} --stage si"
    write_json(si_dir / "training.json", {"config": asdict(config), "seconds": summary["seconds"],
                                          "parameters": summary["parameters"], "command": command,
                                          "machine": machine})
    score_and_card(si_dir, config, summary, command)
    return 0


def ensure_ov(ov_params: Path, si_dir: Path, ov_dir: Path, profile: str, if_needed: bool,
              command: str | None = None, phases_from: Path | None = None) -> int:
    """Train the ov stage from the si checkpoint, or with ``if_needed`` reuse it when its recorded recipe is
    the profile's and it started from the si weights now committed (:func:`mimic_utils.organism.ov.reusable`).
    ``phases_from``: a trained ov run whose warm and grow phases this recipe shares (organism/borrow.py)."""
    from mimic_utils.organism import ov as organism_ov

    if not ov_params.is_file():
        print(f"[organism] {ov_params}: missing; the {profile} profile has no ov stage")
        return 0
    ov = organism_ov.OvConfig.from_yaml(ov_params)
    ok, why = organism_ov.reusable(ov_dir, ov, si_dir)
    if if_needed and ok:
        print(f"[organism] reusing the ov checkpoint in {ov_dir} ({why})")
        return 0
    if if_needed:
        print(f"[organism] training the ov stage: {why} (about 91 minutes on 2 cores)")
    resumed_from = None
    if phases_from is not None:
        from mimic_utils.organism.borrow import borrow_phases

        try:
            copied, resumed_from = borrow_phases(ov, si_dir, ov_dir, phases_from)
        except ValueError as error:
            print(f"[organism] {error}")
            return 2
        print(f"[organism] phases taken from {phases_from}: {copied or 'none (already here)'}")
    organism_ov.run(ov, si_dir, ov_dir, command or f"python -m mimic_utils.organism --profile {profile} --stage ov",
                    resumed_from)
    return 0


def rewrite_ov_card(ov_dir: Path, si_dir: Path) -> int:
    """``--rewrite-card --stage ov``: re-score the ov checkpoint and rewrite its ``eval.json`` and card."""
    import pandas as pd

    from mimic_utils.organism import ov as organism_ov

    training = organism_ov.trained_ov(ov_dir)
    if training is None:
        print(f"[organism] {ov_dir}: no trained ov checkpoint; train it first (make organism-ov)")
        return 2
    frame = pd.read_csv(Path(ov_dir) / "loss.csv")
    log = [{k: v for k, v in row.items() if v == v} for row in frame.to_dict("records")]
    summary = {**training, "log": log}
    organism_ov.score_and_card(ov_dir, si_dir, organism_ov.OvConfig(**training["config"]), summary,
                               training["command"])
    return 0


def score_and_card(out_dir: Path, config: OrganismConfig, summary: dict, command: str) -> dict:
    """Held-out scores of the saved organism (``eval.json``) and its model card. Answers already in
    ``heldout/*.jsonl`` from the same model are reused (:func:`mimic_utils.evaluation.harness.run` resumes)."""
    adapter = load_adapter(out_dir, family="qwen2_vl", dtype="float32")
    records = heldout_records(config, out_dir / "heldout")
    scores = evaluate_single_image(adapter, records, out_dir / "heldout" / "predictions.jsonl")
    if config.instruct_weights.get(CHOICE_FAMILY):
        choice = evaluate_choice(adapter, heldout_choice_records(config, out_dir / "heldout"),
                                 out_dir / "heldout" / "choice.jsonl")
        scores.update(choice_scores(choice))
    write_json(out_dir / "eval.json", scores)
    write_card(out_dir, config, summary, scores, command)
    print(json.dumps(scores, indent=1))
    print(f"[organism] saved to {out_dir} (model card: {out_dir / 'README.md'})")
    return scores


def rewrite_card(out_dir: Path) -> int:
    """``--rewrite-card``: re-score a trained organism and rewrite ``eval.json`` and its card from what
    training recorded (``training.json``, ``loss.csv``), without training."""
    import pandas as pd

    recorded = Path(out_dir) / "training.json"
    if not recorded.is_file():
        print(f"[organism] {recorded}: missing; train the organism first (make organism)")
        return 2
    training = json.loads(recorded.read_text(encoding="utf-8"))
    frame = pd.read_csv(Path(out_dir) / "loss.csv")
    log = [{k: v for k, v in row.items() if v == v} for row in frame.to_dict("records")]  # NaN: not evaluated
    summary = {"seconds": training["seconds"], "parameters": training["parameters"], "log": log,
               "machine": training.get("machine"), "vision_note": training.get("vision_note")}
    score_and_card(out_dir, OrganismConfig(**training["config"]), summary, training["command"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
