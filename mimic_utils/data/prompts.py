"""The official MIMIC prompt, as pure functions.

The official user turn is ``"<image> <image> … <image>\\nQuestion: {question}\\nAnswer:"`` (Listing appends
``". Please provide the list of category names directly."``), decoded greedily with 16 new tokens (32 for
Listing). Each family sees it through its own chat template, which decides what may stand between
images; :func:`build_messages` sends the official layout with the separator the template allows, and
:func:`prompt_settings` records that separator in every predictions file (docs/design.md, *Prompt*).
"""

from __future__ import annotations

MAX_NEW_TOKENS = 16
"""Official ``max_new_tokens`` for every task except Listing."""

MAX_NEW_TOKENS_LISTING = 32
"""Official ``max_new_tokens`` for Listing."""

LISTING_SUFFIX = ". Please provide the list of category names directly."
"""Appended verbatim to every Listing question (the official code does not strip a final "?")."""

TASK_FAMILIES = ("counting", "listing", "common", "oddone")
"""The four MIMIC task families (the HF configs of ``anurag4446/mimic``)."""

# How each model family's chat template lets us separate the images (see the module docstring).
# "interleaved": we insert the separator as text items between images, the question starts with "\n".
# "template": the template places its own separator; the question text starts directly with "Question:".
IMAGE_LAYOUT = {
    "qwen2_vl": ("interleaved", " "),
    "qwen2_5_vl": ("interleaved", " "),
    "llava_onevision": ("template", ""),
    "internvl": ("template", "\n"),
}

_TASK_ALIASES = {"odd-one": "oddone", "odd_one": "oddone", "odd-one-out": "oddone", "count": "counting"}


def normalize_task_family(task_family: str) -> str:
    """The canonical task family name (``counting``, ``listing``, ``common``, ``oddone``).

    Accepts the usual spellings (``Odd-One``, ``odd_one``, ``Counting`` …); raises ``ValueError`` on an
    unknown family so that a typo cannot silently get the wrong token budget.
    """
    name = task_family.strip().lower()
    name = _TASK_ALIASES.get(name, name)
    if name not in TASK_FAMILIES:
        raise ValueError(f"unknown MIMIC task family {task_family!r}; known: {', '.join(TASK_FAMILIES)}")
    return name


def is_mimic_task(task_family: str) -> bool:
    """True for the four MIMIC task families (any accepted spelling)."""
    try:
        normalize_task_family(task_family)
    except ValueError:
        return False
    return True


def mimic_question_text(question: str, task_family: str) -> str:
    """The question as the official prompt states it: Listing gets :data:`LISTING_SUFFIX`."""
    if normalize_task_family(task_family) == "listing":
        return question + LISTING_SUFFIX
    return question


def max_new_tokens_for(task_family: str) -> int:
    """Official generation budget: 32 new tokens for Listing, 16 otherwise."""
    if normalize_task_family(task_family) == "listing":
        return MAX_NEW_TOKENS_LISTING
    return MAX_NEW_TOKENS


def official_user_turn(question: str, n_images: int, task_family: str) -> str:
    """The official user turn as one string, ``"<image> <image>\\nQuestion: …\\nAnswer:"``."""
    images = " ".join(["<image>"] * n_images)
    return f"{images}\nQuestion: {mimic_question_text(question, task_family)}\nAnswer:"


def image_layout(model_family: str) -> tuple[str, str]:
    """``(layout, separator)`` for a model family; see the module docstring."""
    if model_family not in IMAGE_LAYOUT:
        raise ValueError(f"no prompt layout for model family {model_family!r}; known: {', '.join(IMAGE_LAYOUT)}")
    return IMAGE_LAYOUT[model_family]


IMAGE_LABEL = "Image {}: "
"""The text put before image *k* when a prompt labels its images (``image_labels``): our wording of what
Qwen2-VL's chat template writes with ``add_vision_id`` (``"Picture 1: "``), matching the "image 3" the
per-image training questions say. The MIMIC benchmark's prompt never labels its images."""


def build_messages(question: str, n_images: int, task_family: str, model_family: str,
                   image_labels: bool = False) -> list[dict]:
    """One user message in HF multimodal chat format carrying the official MIMIC prompt.

    Pass it to ``processor.apply_chat_template(messages, add_generation_prompt=True)``; the images
    themselves go to the processor call in the same order. For a task that is not one of the MIMIC
    families (a public benchmark), ``question`` is that benchmark's fully formatted prompt text and is
    placed after the images verbatim, with the same image layout. ``image_labels`` puts
    :data:`IMAGE_LABEL` before each image (the organism's ov stage trains part of its per-image questions
    so, to learn which image is image *k*; evaluation of the benchmark never does).
    """
    layout, separator = image_layout(model_family)
    if image_labels and layout != "interleaved":
        raise ValueError(f"image_labels: the {model_family} chat template renders all images before any text, "
                         "so a label cannot stand before its image")
    if is_mimic_task(task_family):
        text = f"Question: {mimic_question_text(question, task_family)}\nAnswer:"
    else:
        text = question
    content: list[dict] = []
    for index in range(n_images):
        if layout == "interleaved" and index > 0 and separator:
            content.append({"type": "text", "text": separator})
        if image_labels:
            content.append({"type": "text", "text": IMAGE_LABEL.format(index + 1)})
        content.append({"type": "image"})
    if layout == "interleaved":
        text = "\n" + text
    content.append({"type": "text", "text": text})
    return [{"role": "user", "content": content}]


#: The family of training conversations taken from a hub dataset as they are (not MIMIC questions).
HUB_FAMILY = "hub"


def prompt_family(family: str) -> str:
    """The MIMIC prompt family a training question is asked under: ``listing_minor`` and single-image
    listing get Listing's suffix and budget, the yes/no and naming questions Common's. Hub conversations
    are not MIMIC questions: their text goes after the images as it is."""
    if family == HUB_FAMILY:
        return HUB_FAMILY
    base = family.split("_")[0]
    return base if base in TASK_FAMILIES else "common"


def choice_letters(n: int) -> list[str]:
    """``["A", "B", …]`` for ``n`` options, as every reference task numbers them."""
    if not 0 <= n <= 26:
        raise ValueError(f"cannot letter {n} options (A-Z only)")
    return [chr(ord("A") + i) for i in range(n)]


def prompt_settings(model_family: str) -> dict:
    """The prompt facts recorded with every prediction: format, separator and token budgets."""
    layout, separator = image_layout(model_family)
    return {
        "format": "<image>{sep}…<image>\\nQuestion: {question}\\nAnswer:",
        "image_separator": separator,
        "image_layout": layout,
        "listing_suffix": LISTING_SUFFIX,
        "max_new_tokens": MAX_NEW_TOKENS,
        "max_new_tokens_listing": MAX_NEW_TOKENS_LISTING,
        "decoding": "greedy",
    }
