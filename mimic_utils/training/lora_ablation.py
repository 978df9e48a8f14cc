"""Notebook 05's masked-LoRA ablation as a plan: which variants train with which layers and seeds, where each
run's model is saved, how it is trained, loaded back and scored, and how seeds are averaged.

Every variant's layer spec is resolved to its layer tuple before anything trains (:func:`resolve_ablation`);
two specs with the same layers train once and are reported under both names. The two variants of claim 8
get every seed, the others the first seed only; the *data-centric + masked* model is paired with the
data-centric model trained as long without the mask (docs/design.md, *Masking*).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import NamedTuple

import pandas as pd
import torch

from mimic_utils.evaluation import harness
from mimic_utils.models.masking import Layers, LayerSpec, resolve_layers
from mimic_utils.training.finetune import FinetuneConfig, finetune

#: The two starting points of the runs: notebook 05's base model and notebook 04's data-centric model.
STARTS = ("base", "data-centric")
#: Labels of the data-centric pair (same total budget; only the mask differs).
DATA_CENTRIC_MASKED, DATA_CENTRIC_UNMASKED = "data-centric + masked", "data-centric + LoRA (no mask)"


def variant_label(name: str, layers: Layers) -> str:
    """How a variant is shown: ``LoRA (no mask)`` for an empty mask, else ``masked LoRA (<name>)``."""
    return f"masked LoRA ({name})" if layers else "LoRA (no mask)"


def path_safe(label: str) -> str:
    """A variant's label as a file or folder name: spaces to ``_``, parentheses dropped, ``+`` as ``plus``."""
    return label.replace(" ", "_").replace("(", "").replace(")", "").replace("+", "plus")


def model_folder(label: str, seed: int, first_seed: int) -> str:
    """A trained model's folder name under ``models/``: the label made path-safe, ``_seed<k>`` added after
    the first seed (the first keeps the plain name, the path later notebooks read)."""
    slug = path_safe(label)
    return slug if seed == first_seed else f"{slug}_seed{seed}"


def resolve_ablation(ablation: dict[str, str], num_layers: int,
                     auto_layer: int | None) -> tuple[dict[str, Layers], dict[str, str], list[str]]:
    """Every variant's layer spec resolved to its layer tuple before anything trains.

    Returns ``(distinct, aliases, notes)``: the variants to train (name → layers), the duplicates (name →
    the variant with the same layers, trained and evaluated once and reported under both names), and
    one sentence per variant that is dropped or merged — ``auto`` without a layer from notebook 03 is not
    trained at all, rather than silently becoming another variant.
    """
    distinct: dict[str, Layers] = {}
    aliases: dict[str, str] = {}
    notes: list[str] = []
    for name, spec in ablation.items():
        if str(spec).strip().lower() == "auto" and auto_layer is None:
            notes.append(f"'{name}' is not trained: notebook 03 found no layer from which cross-image attention "
                         "stays low, so the `auto` spec names no layers.")
            continue
        layers = resolve_layers(spec, num_layers, auto_layer)
        twin = next((other for other, chosen in distinct.items() if chosen == layers), None)
        if twin is None:
            distinct[name] = layers
        else:
            aliases[name] = twin
            notes.append(f"'{name}' ({spec}) masks the same layers as '{twin}' ({list(layers)}): trained and "
                         f"evaluated once, reported under both names.")
    return distinct, aliases, notes


def train_masked_lora(adapter, layers: Layers, records: list[dict], config: FinetuneConfig,
                      out_dir: Path, seed: int) -> dict:
    """One ablation run: the mask on ``layers``, then LoRA with ``config`` under ``seed``. The seed is set
    before LoRA wraps the model, so LoRA's random initial matrices belong to the seed too (the batches and
    dropout already follow ``config.seed``): two runs with one seed differ only in their mask."""
    adapter.set_mask(list(layers))
    torch.manual_seed(seed)
    return finetune(adapter, records, replace(config, seed=seed), out_dir, progress=False, name="masked_lora")


#: Per-question fields that are averaged over seeds (Listing keeps its micro counts, so its F1 stays micro).
SEED_AVERAGED = ("score", "true_positive", "n_pred", "n_gt")


def seed_average(runs: list[list[dict]]) -> list[dict]:
    """Per question, the prediction rows of several seeds with their scores averaged: the seed-averaged
    model a paired comparison over questions reads. Every run must answer the same questions."""
    by_id = [{row["id"]: row for row in rows} for rows in runs]
    if any(set(ids) != set(by_id[0]) for ids in by_id):
        raise ValueError("seed_average: the runs answered different questions")
    averaged = []
    for question, first in by_id[0].items():
        means = {key: sum(float(ids[question][key]) for ids in by_id) / len(by_id)
                 for key in SEED_AVERAGED if key in first}
        averaged.append({**first, **means, "seeds": len(runs)})
    return averaged


@dataclass(frozen=True)
class Run:
    """One training run: the model label it is reported under, its masked layers, its seed and its start."""

    label: str
    layers: Layers
    seed: int
    start: str


@dataclass(frozen=True)
class AblationPlan:
    """What notebook 05 trains, decided before anything trains (see the module docstring)."""

    distinct: dict[str, Layers]
    aliases: dict[str, str]
    notes: list[str]
    labels: dict[str, str]
    runs: list[Run]
    claim_pair: tuple[str, str]
    seeds: list[int]

    @property
    def pair_labels(self) -> tuple[str, str]:
        """The labels of claim 8's two variants (unmasked, masked)."""
        return self.labels[self.claim_pair[0]], self.labels[self.claim_pair[1]]

    def alias_labels(self) -> dict[str, str]:
        """Each alias's label → its twin's label (reported with the twin's rows)."""
        return {self.labels[alias]: self.labels[twin] for alias, twin in self.aliases.items()}

    def recorded(self, folders: dict[tuple[str, int], Path], root: Path) -> dict[str, dict]:
        """What ``metrics.json`` records per model label: its run folders (relative to the checkout), masked
        layers and start."""
        return {run.label: {"folders": [str(folders[(name, s)].relative_to(root)) for name, s in folders if name == run.label],
                            "mask_layers": list(run.layers), "start": run.start} for run in self.runs}

    def describe(self) -> list[str]:
        """The plan in words: one line per run (label, start, masked layers, seed), then the notes."""
        return [f"{run.label}: from {run.start}, masked layers {list(run.layers)}, seed {run.seed}" for run in self.runs] + \
            [f"note: {note}" for note in self.notes]

    def comparisons(self) -> list[tuple[str, str, str]]:
        """The paired comparisons reported beside claim 8, as (model a, model b, why): the data-centric pair
        at the same total budget, LoRA alone, more steps alone, then each exploratory variant."""
        unmasked = self.pair_labels[0]
        pairs = [(DATA_CENTRIC_UNMASKED, DATA_CENTRIC_MASKED, "same total budget"), ("base", unmasked, "LoRA alone"),
                 ("data-centric", DATA_CENTRIC_UNMASKED, "more steps alone")]
        return pairs + [(unmasked, self.labels[name], "exploratory, one seed")
                        for name in self.distinct if name not in self.claim_pair]


def plan_runs(ablation: dict[str, str], from_data_centric: LayerSpec, seeds: list[int], claim_pair: tuple[str, str],
              num_layers: int, auto_layer: int | None) -> AblationPlan:
    """The runs of the ablation: each distinct variant from the base (every seed for ``claim_pair``, the
    first seed otherwise), then the data-centric pair with the first seed."""
    distinct, aliases, notes = resolve_ablation(ablation, num_layers, auto_layer)
    labels = {name: variant_label(name, layers) for name, layers in distinct.items()}
    labels.update({alias: variant_label(alias, distinct[twin]) for alias, twin in aliases.items()})
    runs = [Run(labels[name], layers, seed, "base") for name, layers in distinct.items()
            for seed in (seeds if name in claim_pair else seeds[:1])]
    runs += [Run(DATA_CENTRIC_MASKED, resolve_layers(from_data_centric, num_layers, auto_layer), seeds[0], "data-centric"),
             Run(DATA_CENTRIC_UNMASKED, (), seeds[0], "data-centric")]
    return AblationPlan(distinct, aliases, notes, labels, runs, tuple(claim_pair), list(seeds))


def train_runs(plan: AblationPlan, starts: dict[str, dict], conversations: list[dict], config: FinetuneConfig,
               models_dir: Path, root: Path, four_bit: bool = False) -> tuple[dict[tuple[str, int], Path], list[pd.DataFrame]]:
    """Train every run of the plan from its start (``starts``: model entries by :data:`STARTS`), in 4-bit
    when ``four_bit``; returns each run's folder by (label, seed) and its loss log (finished runs resume as
    done). One model is in memory at a time."""
    quantized = {"quantization": "4bit"} if four_bit else {}
    folders, losses = {}, []
    for run in plan.runs:
        folder = Path(models_dir) / model_folder(run.label, run.seed, plan.seeds[0])
        adapter = harness.load_under_study({**starts[run.start], **quantized}, root)
        result = train_masked_lora(adapter, run.layers, conversations, config, folder, run.seed)
        folders[(run.label, run.seed)] = folder
        losses.append(pd.DataFrame(result["log"]).assign(model=run.label, seed=run.seed))
        del adapter
    return folders, losses


def load_trained(base_model: dict, label: str, folder: Path, root: Path):
    """A trained model as saved: merged weights with their mask, same dtype and device as the base (never
    quantized: the merged weights are full precision)."""
    spec = {k: v for k, v in base_model.items() if k != "quantization"}
    return harness.load_under_study({**spec, "name": label, "source": str(Path(folder).relative_to(root))}, root)


def first_seed_models(plan: AblationPlan, folders: dict[tuple[str, int], Path], base_model: dict, root: Path) -> dict:
    """Each trained model of the plan's first seed, loaded as saved, by label (one per variant and pair)."""
    return {label: load_trained(base_model, label, folder, root)
            for (label, seed), folder in folders.items() if seed == plan.seeds[0]}


class Scored(NamedTuple):
    """Prediction rows of every model on the same questions: ``rows`` by model label (trained variants
    seed-averaged, aliases sharing their twin's rows), ``run_rows`` by (label, seed), ``settings`` by model
    (trained runs by folder name)."""

    rows: dict[str, list[dict]]
    run_rows: dict[tuple[str, int], list[dict]]
    settings: dict[str, dict]


def score_all(plan: AblationPlan, fixed: dict, folders: dict[tuple[str, int], Path], base_model: dict,
              records: list[dict], predictions_dir: Path, batch_size: int, root: Path) -> Scored:
    """Score the untrained models (``fixed``: adapters by label) and every trained run on ``records`` with
    the harness (answers resume from ``predictions_dir``), then average each variant's seeds."""
    def score(adapter, name: str) -> list[dict]:
        return harness.run(adapter, records, Path(predictions_dir) / f"{name}.jsonl", batch_size=batch_size,
                           desc=name, progress=False)

    rows, settings = {}, {}
    for name, adapter in fixed.items():
        settings[name], rows[name] = adapter.settings, score(adapter, name)
    run_rows = {}
    for (label, seed), folder in folders.items():
        adapter = load_trained(base_model, label, folder, root)
        settings[folder.name], run_rows[(label, seed)] = adapter.settings, score(adapter, folder.name)
    for label in dict.fromkeys(label for label, _ in run_rows):
        rows[label] = seed_average([r for (name, _), r in run_rows.items() if name == label])
    for alias, twin in plan.aliases.items():
        rows[plan.labels[alias]] = rows[plan.labels[twin]]
    return Scored(rows, run_rows, settings)
