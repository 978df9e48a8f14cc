r"""Which words of MIMIC odd-one's question draw "no" from the ov organisms? The card's 50 held-out odd-one
questions over 4 images (formats.card_questions, the ov stage's format seed), asked with variants of the
question text; per model and variant the share of answers that keep odd-one's format (a category name),
the share "no"/"yes", and the official score.
Run from the repository root (v16 and v17 weights are in the ignored cache, on the machine that trained them):
    python outputs/cpu/models/tried/ov-v17-which16/oddone_probe.py v12=outputs/cpu/models/ov:outputs/cpu/models/si \
        v16=outputs/cpu/cache/tried/ov-v16-lr3e-4/ov:outputs/cpu/cache/tried/si-stage2-3000/si \
        v17=outputs/cpu/cache/tried/ov-v17-which16/ov:outputs/cpu/cache/tried/si-stage2-3000/si
A third part, a phase checkpoint of that run (checkpoints/<digest>/ov-warm.pt …), asks the run as it was after
that phase; the si alone is NAME=SI_DIR:SI_DIR. Writes oddone_probe.json beside it (or the path in $PROBE_OUT) ("category": answers that keep odd-one's format; "right": official score summed)."""
import collections, json, os, sys

import torch
from pathlib import Path

from mimic_utils.data.prompts import prompt_family
from mimic_utils.evaluation.scoring import score_sample
from mimic_utils.models.vlm import load_adapter
from mimic_utils.organism import formats
from mimic_utils.organism.ov import OvConfig, heldout_pool, si_config

VARIANTS = {
    "official": "Which object category appears in only a minority of the images?",
    "no 'only'": "Which object category appears in a minority of the images?",
    "one image": "Which object category appears in only one image?",
    "fewest": "Which object category appears in the fewest images?",
    "common's": "Which object category appears in every image?",
}
out = {}
for arg in sys.argv[1:]:
    name, dirs = arg.split("=")
    ov_dir, si_dir, *phase = dirs.split(":")
    si = si_config(Path(si_dir))
    pool = heldout_pool(si, progress=False)
    records = [r for r in formats.card_questions(pool, OvConfig().format_seed, 4) if r["family"] == "oddone"]
    adapter = load_adapter(ov_dir, family="qwen2_vl", dtype="float32")
    if phase:  # a phase checkpoint of that run (training.finetune's: the model's state under "module")
        adapter.model.load_state_dict(torch.load(phase[0], map_location="cpu", weights_only=False)["module"])
    images = [[formats.pil_image(pool, int(i)) for i in r["image_ids"]] for r in records]
    out[name] = {}
    for label, text in VARIANTS.items():
        samples = [{"images": im, "question": text, "task_family": prompt_family("oddone")} for im in images]
        answers = adapter.answer(samples)
        kept = sum(formats.format_kept("oddone", a, pool.categories) for a in answers)
        words = collections.Counter(a.strip().lower() for a in answers)
        right = sum(score_sample("oddone", a, r["gt"])["score"] for a, r in zip(answers, records))
        out[name][label] = {"n": len(records), "category": kept, "no": words["no"], "yes": words["yes"],
                            "right": right, "top": words.most_common(3)}
        print(name, label, out[name][label], flush=True)
Path(os.environ.get("PROBE_OUT", Path(__file__).with_name("oddone_probe.json"))).write_text(json.dumps(out, indent=1))
