"""The organism's recipe as data: every value that shapes it (``params/<profile>/organism.yaml``), recorded in its
model card and compared by ``--if-needed``. Apart from the recipe so that the card and the probe can name a
configuration without importing the training code."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import yaml

from mimic_utils.data import scenes
from mimic_utils.data.traindata import SINGLE_FAMILIES

CHOICE_FAMILY = "choice"
#: The public benchmark whose prompt and scorer multiple-choice questions use: MuirBench's layout,
#: ``{question}\nA. {option}\n…\nAnswer with the option's letter from the given choices directly.``,
#: which is also the scene-world OOD benchmark's (mimic_utils.data.scene_ood.write_scene_muirbench).
CHOICE_TASK = "muirbench"
#: Kinds of single-image multiple-choice questions. ``count`` and ``naming`` ask the MIMIC wording of
#: Counting and Common (the OOD benchmark's questions) of one image; ``category`` and ``supercategory``
#: offer exactly one option that appears in the image.
CHOICE_KINDS = ("count", "category", "naming", "supercategory")


@dataclass(frozen=True)
class OrganismConfig:
    """Every value that shapes the organism; recorded in its model card and compared by ``--if-needed``.

    The defaults of the keys added after the first organism (language-model shape, ``count_weights``,
    multiple choice) reproduce that organism's recipe, so a configuration recorded before they existed
    reads back as what was trained; ``params/<profile>/organism.yaml`` sets the current recipe.
    """

    seed: int = 0
    image_size: int = 112
    max_objects: int = 5
    same_category_prob: float = 0.5
    pool_images: int = 20000
    heldout_images: int = 1000
    cell_px: int = 28
    cell_weight: float = 5.0
    vision_steps: int = 4500
    vision_lr: float = 2e-3
    align_steps: int = 600
    instruct_steps: int = 2400
    instruct_conversations: int = 60000
    #: stage-2 questions per family, relative (the lookups by category name, counting and presence, are
    #: the hard ones); keys are the families of mimic_utils.data.traindata.SINGLE_FAMILIES and "choice"
    #: (single-image multiple choice, :func:`choice_questions`)
    instruct_weights: dict = field(default_factory=lambda: dict.fromkeys(SINGLE_FAMILIES, 1))
    lm_lr: float = 1e-3
    batch: int = 64
    max_count: int = 5
    heldout_questions: int = 1200
    #: the language model's shape (mimic_utils.models.tiny.organism_config); the merger's output width follows it
    text_hidden: int = 256
    text_layers: int = 4
    text_heads: int = 4
    text_intermediate: int = 768
    #: relative weight of each true count 0..max_count in the training counting questions (single-image and
    #: multiple choice); None draws them evenly. Held-out questions stay balanced.
    count_weights: list | None = None
    #: multiple-choice kinds (CHOICE_KINDS), relative, and the range of the number of options
    choice_kinds: dict = field(default_factory=lambda: dict.fromkeys(CHOICE_KINDS, 1))
    choice_options: list = field(default_factory=lambda: [2, 5])
    #: held-out multiple-choice questions, generated and scored with MuirBench's scorer
    heldout_choice_questions: int = 400
    #: share of training listing questions about a supercategory the image holds (None: drawn uniformly,
    #: so "none" is the answer of about three in four, the first organisms' recipe); held-out listing asks
    #: half and half, and its target is read on the questions whose answer is not "none"
    listing_present: float | None = None
    #: tokens per batch of stages 1 and 2 (conversations drawn uniformly while they fit, padded to the
    #: longest: mimic_utils.organism.recipe.TokenBudget); None: ``batch`` conversations (the first recipes)
    batch_tokens: int | None = None

    @classmethod
    def from_yaml(cls, path: Path) -> "OrganismConfig":
        """Read ``params/<profile>/organism.yaml``; unknown keys are refused with the file and key named."""
        values = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        known = {f.name for f in fields(cls)}
        for key in values:
            if key not in known:
                raise ValueError(f"{path}: unknown key {key!r}; known: {sorted(known)}")
        config = cls(**values)
        families = (*SINGLE_FAMILIES, CHOICE_FAMILY)
        unknown = set(config.instruct_weights) - set(families)
        if unknown or any(not isinstance(w, int) or w < 0 for w in config.instruct_weights.values()):
            raise ValueError(f"{path}: instruct_weights must map families of {list(families)} to "
                             f"non-negative integers, got {config.instruct_weights}")
        if set(config.choice_kinds) - set(CHOICE_KINDS) or any(
                not isinstance(w, int) or w < 0 for w in config.choice_kinds.values()):
            raise ValueError(f"{path}: choice_kinds must map kinds of {list(CHOICE_KINDS)} to non-negative "
                             f"integers, got {config.choice_kinds}")
        low_high = list(config.choice_options)
        if len(low_high) != 2 or not 2 <= low_high[0] <= low_high[1] <= 26:
            raise ValueError(f"{path}: choice_options must be [low, high] with 2 <= low <= high <= 26, "
                             f"got {config.choice_options}")
        if config.listing_present is not None and not 0.0 <= config.listing_present <= 1.0:
            raise ValueError(f"{path}: listing_present must lie in [0, 1] (or be null), got {config.listing_present}")
        if config.batch_tokens is not None and (not isinstance(config.batch_tokens, int) or config.batch_tokens < 256):
            raise ValueError(f"{path}: batch_tokens must be an integer >= 256 (or null), got {config.batch_tokens}")
        weights = config.count_weights
        if weights is not None and (not valid_count_weights(weights) or len(weights) != config.max_count + 1):
            raise ValueError(f"{path}: count_weights must hold {config.max_count + 1} non-negative weights (true "
                             f"counts 0..{config.max_count}), not all zero, got {weights}")
        from mimic_utils.models.tiny import check_text_shape

        try:
            check_text_shape(**config.text_shape())
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from None
        return config

    def text_shape(self) -> dict:
        """The language model's shape, as :func:`mimic_utils.models.tiny.build_organism` takes it."""
        return {"text_hidden": self.text_hidden, "text_layers": self.text_layers, "text_heads": self.text_heads,
                "text_intermediate": self.text_intermediate}

    def heldout_weights(self) -> dict[str, int]:
        """Held-out teacher-forced questions: every trained family evenly."""
        return {family: 1 for family, weight in self.instruct_weights.items() if weight > 0}

    def scene_params(self) -> scenes.SceneParams:
        return scenes.SceneParams(image_size=self.image_size, max_objects=self.max_objects,
                                  same_category_prob=self.same_category_prob)

    def digest(self) -> str:
        """A short hash of the config: checkpoints of another config are never resumed."""
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]


def valid_count_weights(weights) -> bool:
    """Whether ``weights`` can tilt the drawn true counts (si's and the ov stage's ``count_weights``): a
    non-empty list of non-negative numbers (not true/false), not all zero. Each recipe checks the length
    against the counts its si asks."""
    return (isinstance(weights, list) and bool(weights)
            and all(isinstance(w, (int, float)) and not isinstance(w, bool) and w >= 0 for w in weights)
            and sum(weights) > 0)
