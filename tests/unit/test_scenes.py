"""The scene world (category table, scene drawing) and its files (COCO / OpenImages writers, determinism,
contact sheet)."""

from __future__ import annotations

import csv
import hashlib
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mimic_utils.data import scene_formats as F
from mimic_utils.data import scenes as S

FIXTURES = Path(__file__).parents[1] / "fixtures"
N_IMAGES = 20


@pytest.fixture(scope="module")
def coco_json(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return F.write_coco_split(tmp_path_factory.mktemp("coco"), N_IMAGES, seed=7, progress=False)


@pytest.fixture(scope="module")
def oi_paths(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return F.write_openimages_split(tmp_path_factory.mktemp("oi"), N_IMAGES, seed=8, progress=False)


def _pixel_hashes(paths: list[Path]) -> set[str]:
    return {hashlib.sha256(np.asarray(Image.open(p)).tobytes()).hexdigest() for p in paths}


# Category table ---------------------------------------------------------------------------------------


def test_categories_are_true_coco2017_categories() -> None:
    reference = {
        c["name"]: (c["id"], c["supercategory"])
        for c in json.loads((FIXTURES / "coco2017_categories.json").read_text())
    }
    for cat in S.CATEGORIES:
        assert reference[cat.name] == (cat.id, cat.supercategory), cat
    assert [c.id for c in S.CATEGORIES] == sorted({c.id for c in S.CATEGORIES})
    # Every COCO class is either drawn or its absence is explained.
    assert set(S.DROPPED_GLYPHS) | set(S.CATEGORY_BY_NAME) == set(reference)
    assert not set(S.DROPPED_GLYPHS) & set(S.CATEGORY_BY_NAME)


def test_category_table_is_rich_enough_for_listing() -> None:
    members = Counter(c.supercategory for c in S.CATEGORIES)
    assert len(S.CATEGORIES) >= 30 and len(members) >= 6 and min(members.values()) >= 3
    assert len({c.glyph for c in S.CATEGORIES}) == len(S.CATEGORIES), "one glyph may not stand for two classes"


def test_default_world_is_30_categories_in_6_supercategories_of_5() -> None:
    params = S.SceneParams()
    assert len(params.categories) == 30
    assert set(Counter(c.supercategory for c in params.category_table()).values()) == {5}
    assert [c.id for c in params.category_table()] == sorted(c.id for c in params.category_table())


@pytest.mark.parametrize("name", S.DEFAULT_CATEGORY_NAMES)
def test_sprites_are_cropped_to_their_visible_pixels(name: str) -> None:
    for px in (20, 36):
        alpha = S.sprite(name, px).alpha[..., 0] * 255
        assert max(alpha.shape) <= px and max(alpha.shape) >= px - 2
        visible = alpha >= S.ALPHA_THRESHOLD
        assert visible[0].any() and visible[-1].any() and visible[:, 0].any() and visible[:, -1].any()


# Scenes -----------------------------------------------------------------------------------------------


def test_render_scene_draws_exactly_the_prescribed_contents() -> None:
    params = S.SceneParams()
    contents = Counter({"dog": 3, "car": 2, "cup": 1})
    scene = S.render_scene(contents, np.random.default_rng(0), params)
    assert scene.counts() == contents
    assert scene.image.shape == (112, 112, 3) and scene.image.dtype == np.uint8
    for obj in scene.objects:
        x, y, w, h = obj.bbox
        assert 0 <= x and 0 <= y and x + w <= 112 and y + h <= 112
        assert params.min_object_px - 2 <= max(w, h) <= params.max_object_px
        assert obj.category_id == S.CATEGORY_BY_NAME[obj.category].id


def test_overlap_is_bounded_for_every_object() -> None:
    params = S.SceneParams(min_objects=4, max_objects=8, max_covered=0.15)
    for i in range(30):
        boxes = [o.bbox for o in S.random_scene(S.scene_rng(1, 0, i), params).objects]
        for k, (x, y, w, h) in enumerate(boxes):
            covered = sum(
                max(0, min(x + w, x2 + w2) - max(x, x2)) * max(0, min(y + h, y2 + h2) - max(y, y2))
                for j, (x2, y2, w2, h2) in enumerate(boxes)
                if j != k
            )
            assert covered <= 0.15 * w * h + 1e-9


def test_boxes_are_the_exact_extent_of_the_pasted_pixels(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(S.BACKGROUNDS, "flat", lambda rng, size: np.full((size, size, 3), 127.0, np.float32))
    params = S.SceneParams(background="flat")
    for seed in range(5):
        scene = S.render_scene({"apple": 1, "bus": 1, "knife": 1}, np.random.default_rng(seed), params)
        changed = np.abs(scene.image.astype(int) - 127).max(axis=2) > 2
        inside = np.zeros_like(changed)
        for obj in scene.objects:
            x, y, w, h = obj.bbox
            inside[y : y + h, x : x + w] = True
            box = changed[y : y + h, x : x + w]
            assert box[0].any() and box[-1].any() and box[:, 0].any() and box[:, -1].any(), obj
        assert not (changed & ~inside).any()


def test_impossible_contents_raise_a_clear_error() -> None:
    with pytest.raises(S.SceneError, match="cannot place"):
        S.render_scene({"dog": 40}, np.random.default_rng(0), S.SceneParams(scene_retries=3))
    with pytest.raises(S.SceneError, match="person"):
        S.render_scene({"person": 1}, np.random.default_rng(0))


def test_random_draw_respects_object_bounds() -> None:
    params = S.SceneParams(min_objects=2, max_objects=3)
    counts = [len(S.random_scene(S.scene_rng(0, 0, i), params).objects) for i in range(20)]
    assert set(counts) <= {2, 3} and len(set(counts)) == 2


@pytest.mark.parametrize(
    "changes, message",
    [({"min_objects": 3, "max_objects": 2}, "min_objects"), ({"max_object_px": 200}, "max_object_px"),
     ({"background": "marble"}, "background"), ({"categories": ("dog", "person")}, "person")],
)  # fmt: skip
def test_scene_params_are_validated(changes: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        S.SceneParams(**changes)


def test_scaled_params_scale_object_sizes() -> None:
    params = S.SceneParams().scaled(224)
    assert (params.image_size, params.min_object_px, params.max_object_px) == (224, 40, 72)


# COCO writer ------------------------------------------------------------------------------------------


def test_coco_split_is_genuine_coco(coco_json: Path) -> None:
    from pycocotools.coco import COCO

    coco = COCO(str(coco_json))
    data = json.loads(coco_json.read_text())
    assert len(coco.imgs) == N_IMAGES and len(coco.anns) == len(data["annotations"]) > 0
    assert [c["id"] for c in data["categories"]] == sorted(c.id for c in S.SceneParams().category_table())
    for ann in data["annotations"]:
        assert set(ann) >= {"id", "image_id", "bbox", "area", "iscrowd", "category_id", "segmentation"}
        assert ann["area"] == ann["bbox"][2] * ann["bbox"][3] and ann["iscrowd"] == 0
    for img in data["images"]:
        assert Image.open(coco_json.parent / "images" / img["file_name"]).size == (img["width"], img["height"])
    assert "OpenMoji" in data["info"]["description"] and "CC BY-SA 4.0" in data["licenses"][0]["name"]
    assert data["licenses"][0]["url"] == "https://creativecommons.org/licenses/by-sa/4.0/"
    assert data["info"]["date_created"] == S.FIXED_DATE and data["info"]["mimic_scenes"]["seed"] == 7


def test_same_seed_gives_identical_files_and_another_seed_does_not(tmp_path: Path, coco_json: Path) -> None:
    again = F.write_coco_split(tmp_path / "again", N_IMAGES, seed=7, progress=False)
    other = F.write_coco_split(tmp_path / "other", N_IMAGES, seed=9, progress=False)
    assert again.read_bytes() == coco_json.read_bytes()
    images = sorted((coco_json.parent / "images").iterdir())
    assert [p.read_bytes() for p in images] == [p.read_bytes() for p in sorted((again.parent / "images").iterdir())]
    assert other.read_bytes() != coco_json.read_bytes()
    assert not _pixel_hashes(images) & _pixel_hashes(sorted((other.parent / "images").iterdir()))
    assert not list(tmp_path.rglob("*.tmp*")), "atomic writes leave no temporary files"


# OpenImages writer ------------------------------------------------------------------------------------


def test_openimages_split_has_the_official_shapes(oi_paths: dict[str, Path]) -> None:
    with open(oi_paths["boxes_csv"], newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == F.OPENIMAGES_BOX_HEADER and len(rows) > 1
    assert all(0 <= float(v) <= 1 for row in rows[1:] for v in row[4:8])
    descriptions = dict(csv.reader(open(oi_paths["class_descriptions_csv"], newline="")))
    assert descriptions["/m/mimic_018"] == "dog" and descriptions["/m/mimic_sc_animal"] == "animal"
    tree = json.loads(oi_paths["hierarchy_json"].read_text())
    assert tree["LabelName"] == F.OPENIMAGES_ROOT_MID
    groups = {g["LabelName"]: [c["LabelName"] for c in g["Subcategory"]] for g in tree["Subcategory"]}
    assert groups["/m/mimic_sc_animal"] == [
        "/m/mimic_016",
        "/m/mimic_018",
        "/m/mimic_020",
        "/m/mimic_022",
        "/m/mimic_025",
    ]
    listed = [r[0] for r in csv.reader(open(oi_paths["image_list_csv"], newline=""))][1:]
    assert sorted(p.stem for p in oi_paths["image_dir"].glob("*.png")) == listed and len(listed) == N_IMAGES


def test_openimages_draw_is_disjoint_from_the_coco_draw(
    coco_json: Path, oi_paths: dict[str, Path], tmp_path: Path
) -> None:
    coco_images = sorted((coco_json.parent / "images").iterdir())
    oi_images = sorted(oi_paths["image_dir"].iterdir())
    assert not {p.stem for p in coco_images} & {p.stem for p in oi_images}
    assert not _pixel_hashes(coco_images) & _pixel_hashes(oi_images)
    # Even with the same seed and background the two formats draw from different streams.
    same = F.write_openimages_split(tmp_path, 5, seed=7, params=S.SceneParams(), progress=False)
    assert not _pixel_hashes(coco_images) & _pixel_hashes(sorted(same["image_dir"].iterdir()))


def test_background_families_look_different() -> None:
    def mean_vertical_change(family: str) -> float:
        params = S.SceneParams(background=family, max_objects=0)
        images = [S.random_scene(S.scene_rng(0, 0, i), params).image.astype(float) for i in range(10)]
        return float(np.mean([np.abs(np.diff(im, axis=1)).mean() for im in images]))

    # Textures change from pixel to pixel; studio and landscape backgrounds are smooth.
    assert mean_vertical_change("texture") > 5 * max(mean_vertical_change("studio"), mean_vertical_change("landscape"))


def test_contact_sheet_draws_a_grid(coco_json: Path, tmp_path: Path) -> None:
    out = F.contact_sheet(coco_json, tmp_path / "sheet.png", n=6, cols=3, tile=100)
    assert Image.open(out).size == (300, 200)


def test_no_default_category_name_contains_another():
    """Common / Odd-One are scored by substring match, so no answer may contain another class's name."""
    names = S.DEFAULT_CATEGORY_NAMES
    assert not [(a, b) for a in names for b in names if a != b and a in b]
