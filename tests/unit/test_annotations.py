"""Readers: generated data against an independent recount, hand-written official-format fixtures, bad input."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from mimic_utils.data import scene_formats as F
from mimic_utils.data import scenes as S
from mimic_utils.data.annotations import SourceError, read_coco, read_openimages, source_hash

FIXTURES = Path(__file__).parents[1] / "fixtures"
COCO_FIXTURE = FIXTURES / "coco" / "instances_fixture.json"
OI = FIXTURES / "openimages"
OI_ARGS = {
    "boxes_csv": OI / "train-annotations-bbox.csv",
    "class_descriptions_csv": OI / "oidv7-class-descriptions-boxable.csv",
    "hierarchy_json": OI / "bbox_labels_600_hierarchy.json",
    "image_dir": OI / "images",
    "image_list_csv": OI / "train-images-boxable-with-rotation.csv",
}
IMG_A, IMG_B, IMG_C = "000002b66c9c498e", "0a8f1a8ec2e3f6b4", "1c4d0b6e9e1f2a3b"


@pytest.fixture(scope="module")
def coco_json(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return F.write_coco_split(tmp_path_factory.mktemp("coco"), 20, seed=3, progress=False)


@pytest.fixture(scope="module")
def oi_paths(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return F.write_openimages_split(tmp_path_factory.mktemp("oi"), 20, seed=4, progress=False)


def _summary(index) -> dict[str, list[tuple[str, tuple[float, ...]]]]:
    return {
        i: sorted((o.category, tuple(round(v, 3) for v in o.bbox)) for o in r.objects) for i, r in index.images.items()
    }


# Generated data against an independent recount ----------------------------------------------------------


def test_read_coco_agrees_with_a_recount_of_the_json(coco_json: Path) -> None:
    data = json.loads(coco_json.read_text(encoding="utf-8"))
    names = {c["id"]: c["name"] for c in data["categories"]}
    expected = {str(img["id"]): [] for img in data["images"]}
    for ann in data["annotations"]:
        expected[str(ann["image_id"])].append((names[ann["category_id"]], tuple(float(v) for v in ann["bbox"])))
    index = read_coco(coco_json)
    assert _summary(index) == {i: sorted(v) for i, v in expected.items()}
    assert any(not r.objects for r in index.images.values()), "images without objects are kept"
    assert index.categories == [c.name for c in S.SceneParams().category_table()]
    assert all(r.path.is_absolute() and r.path.is_file() for r in index.images.values())
    assert index.source_hash == hashlib.sha256(coco_json.read_bytes()).hexdigest() and index.source_format == "coco"


def test_read_openimages_agrees_with_a_recount_of_the_csv(oi_paths: dict[str, Path]) -> None:
    mids = dict(csv.reader(open(oi_paths["class_descriptions_csv"], newline="", encoding="utf-8")))
    expected: dict[str, list] = defaultdict(list)
    for row in csv.DictReader(open(oi_paths["boxes_csv"], newline="", encoding="utf-8")):
        x0, x1, y0, y1 = (float(row[k]) * 112 for k in ("XMin", "XMax", "YMin", "YMax"))
        expected[row["ImageID"]].append(
            (mids[row["LabelName"]], (round(x0), round(y0), round(x1 - x0), round(y1 - y0)))
        )
    index = read_openimages(**oi_paths)
    got = {i: sorted((o.category, tuple(round(v) for v in o.bbox)) for o in r.objects) for i, r in index.images.items()}
    assert {i: v for i, v in got.items() if v} == {i: sorted(v) for i, v in expected.items()}
    assert len(index.images) == 20 and index.source_format == "openimages"
    assert index.supercategory_of["dog"] == "animal" and index.members("kitchen") == [
        "bottle",
        "wine glass",
        "cup",
        "knife",
        "spoon",
    ]


def test_both_readers_give_the_same_world(coco_json: Path, oi_paths: dict[str, Path]) -> None:
    coco, oi = read_coco(coco_json), read_openimages(**oi_paths)
    assert coco.categories == oi.categories and coco.supercategory_of == oi.supercategory_of
    assert not set(coco.images) & set(oi.images)


# Hand-written COCO fixture -------------------------------------------------------------------------------


def test_coco_fixture_defaults() -> None:
    index = read_coco(COCO_FIXTURE)
    assert index.categories == ["person", "dog", "bottle", "toothbrush", "crème brûlée"]  # COCO id order
    assert index.supercategory_of["crème brûlée"] == "dessert 🍮"
    assert list(index.images) == ["397133", "37777", "252219"]
    assert index.images["397133"].counts() == Counter({"dog": 2})  # the crowd region is not an instance
    assert index.images["397133"].objects[0].bbox == (1.5, 2.0, 20.0, 10.0)
    assert index.images["37777"].objects == ()
    assert index.images["252219"].counts() == Counter({"toothbrush": 1, "crème brûlée": 1})
    assert index.dropped_categories("397133") == {"person"} and index.dropped_categories("37777") == set()
    assert index.images["37777"].path == (COCO_FIXTURE.parent / "images" / "000000037777.png").resolve()


def test_coco_fixture_options() -> None:
    assert read_coco(COCO_FIXTURE, include_crowd=True).images["397133"].counts() == Counter({"dog": 2, "person": 1})
    small = read_coco(COCO_FIXTURE, min_area_frac=0.01)  # 6 px² of 1200 px² is below 1 %
    assert small.images["252219"].counts() == Counter({"crème brûlée": 1})
    assert small.dropped_categories("252219") == {"toothbrush"} and small.meta["dropped_reasons"] == {
        "crowd": 1,
        "small": 1,
    }


# Hand-written OpenImages fixture -------------------------------------------------------------------------


def test_openimages_fixture_defaults() -> None:
    index = read_openimages(**OI_ARGS)
    assert index.categories == ["Dog", "Cat", "Car", "Apple", "Crème brûlée, vanilla"]
    assert index.supercategory_of == {
        "Dog": "Animal",
        "Cat": "Animal",
        "Car": "Land vehicle",
        "Apple": "Entity",
        "Crème brûlée, vanilla": "Food",
    }
    assert list(index.images) == [IMG_A, IMG_B, IMG_C]
    a = index.images[IMG_A]
    assert (a.width, a.height) == (200, 100) and a.path.suffix == ".jpg"
    assert a.counts() == Counter({"Dog": 1, "Cat": 1})  # group-of dropped, depiction kept, inner node dropped
    assert a.objects[0].bbox == pytest.approx((20.0, 20.0, 40.0, 40.0))
    assert index.dropped_categories(IMG_A) == {"Dog", "Cat"}  # the "Animal" box may be either
    assert index.meta["dropped_reasons"] == {"group-of": 1, "not a leaf class": 2}
    b = index.images[IMG_B]
    assert (b.width, b.height) == (50, 40) and b.path.suffix == ".png"
    assert b.counts() == Counter({"Car": 1, "Crème brûlée, vanilla": 1, "Apple": 1})
    assert index.images[IMG_C].objects == ()


def test_openimages_fixture_options() -> None:
    grouped = read_openimages(**OI_ARGS, include_group=True, include_depiction=False)
    assert grouped.images[IMG_A].counts() == Counter({"Dog": 2})
    chosen = read_openimages(**OI_ARGS, classes=["Dog", "/m/0k4j"])
    assert chosen.categories == ["Dog", "Car"] and chosen.images[IMG_B].counts() == Counter({"Car": 1})
    without_list = read_openimages(**{**OI_ARGS, "image_list_csv": None})
    assert IMG_C not in without_list.images
    sized = read_openimages(**OI_ARGS, sizes={IMG_A: (400, 200)})
    assert sized.images[IMG_A].objects[0].bbox == pytest.approx((40.0, 40.0, 80.0, 80.0))


def test_source_hash_covers_every_annotation_file() -> None:
    files = [OI_ARGS[k] for k in ("boxes_csv", "class_descriptions_csv", "hierarchy_json", "image_list_csv")]
    assert read_openimages(**OI_ARGS).source_hash == hashlib.sha256(b"".join(f.read_bytes() for f in files)).hexdigest()
    assert source_hash(files) == read_openimages(**OI_ARGS).source_hash


# Bad input --------------------------------------------------------------------------------------------


def _broken_coco(tmp_path: Path, change) -> Path:
    data = json.loads(COCO_FIXTURE.read_text(encoding="utf-8"))
    change(data)
    shutil.copytree(COCO_FIXTURE.parent / "images", tmp_path / "images")
    path = tmp_path / "instances_broken.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d["annotations"][0].update(image_id=999), r"annotation id 101: points at unknown image id 999"),
        (lambda d: d["annotations"][1].update(category_id=3), r"annotation id 102: points at unknown category id 3"),
        (lambda d: d["annotations"][1].update(bbox=[1, 2, 3]), r"annotation id 102: bbox"),
        (lambda d: d["annotations"][1].update(id=101), r"annotation id 101: duplicate"),
        (lambda d: d["images"][1].update(file_name="missing.png"), r"image id 37777: image file not found"),
        (lambda d: d["categories"][0].pop("name"), r"category id 18: missing field 'name'"),
        (lambda d: d.pop("images"), r"missing list 'images'"),
    ],
)
def test_bad_coco_input_names_file_and_record(tmp_path: Path, change, message: str) -> None:
    path = _broken_coco(tmp_path, change)
    with pytest.raises(SourceError, match=message) as info:
        read_coco(path)
    assert str(path.resolve()) in str(info.value)


def test_missing_and_malformed_coco_files(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="nope.json.*cannot read"):
        read_coco(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"images": [', encoding="utf-8")
    with pytest.raises(SourceError, match="bad.json.*malformed JSON"):
        read_coco(bad)


def _broken_openimages(
    tmp_path: Path, name: str, text: str | None = None, image: tuple[str, bytes] | None = None
) -> dict:
    target = tmp_path / "oi"
    shutil.copytree(OI, target)
    if text is not None:
        (target / name).write_text(text, encoding="utf-8")
    if image is not None:
        (target / "images" / image[0]).write_bytes(image[1])
    return {k: target / Path(v).relative_to(OI) for k, v in OI_ARGS.items()}


BOXES = (OI / "train-annotations-bbox.csv").read_text(encoding="utf-8")


@pytest.mark.parametrize(
    "name, text, message",
    [
        (
            "train-annotations-bbox.csv",
            BOXES + "000002b66c9c498e,xclick,/m/0bt9lr,1,0.1\n",
            r"line 9: expected 13 fields",
        ),
        ("train-annotations-bbox.csv", BOXES.replace("0.1,0.3,0.2,0.6", "0.1,abc,0.2,0.6"), r"line 2: coordinates"),
        ("train-annotations-bbox.csv", BOXES.replace("0.1,0.3,0.2,0.6", "0.3,0.1,0.2,0.6"), r"line 2: normalised box"),
        ("train-annotations-bbox.csv", BOXES.replace("/m/0k4j", "/m/nothing"), r"line 6: unknown LabelName /m/nothing"),
        (
            "train-annotations-bbox.csv",
            BOXES.replace("0a8f1a8ec2e3f6b4", "ffffffffffffffff"),
            r"line 6: image ffffffffffffffff not found",
        ),
        (
            "train-annotations-bbox.csv",
            BOXES.replace("IsGroupOf", "Group"),
            r"line 1: header lacks columns \['IsGroupOf'\]",
        ),
        (
            "train-annotations-bbox.csv",
            BOXES.replace("0.2,0.6,0,0,0,0,0", "0.2,0.6,0,0,2,0,0"),
            r"line 2: IsGroupOf must be",
        ),
        ("oidv7-class-descriptions-boxable.csv", "/m/0bt9lr,Dog,extra\n", r"line 1: expected 'LabelName,DisplayName'"),
        ("bbox_labels_600_hierarchy.json", '{"LabelName": "/m/0bl9f", "Subcategory": [', r"malformed JSON"),
        (
            "bbox_labels_600_hierarchy.json",
            '{"LabelName": "/m/0bl9f", "Subcategory": [{"Label": 1}]}',
            r"missing field 'LabelName'",
        ),
        (
            "bbox_labels_600_hierarchy.json",
            '{"LabelName": "/m/0bl9f", "Subcategory": [{"LabelName": "/m/x"}]}',
            r"node /m/x: LabelName not in",
        ),
    ],
)
def test_bad_openimages_input_names_file_and_record(tmp_path: Path, name: str, text: str, message: str) -> None:
    args = _broken_openimages(tmp_path, name, text)
    with pytest.raises(SourceError, match=message) as info:
        read_openimages(**args)
    assert name in str(info.value)


def test_unreadable_and_missing_openimages_files(tmp_path: Path) -> None:
    args = _broken_openimages(tmp_path, "", image=(f"{IMG_A}.jpg", b"not a jpeg"))
    with pytest.raises(SourceError, match=rf"line 2: unreadable image .*{IMG_A}.jpg"):
        read_openimages(**args)
    with pytest.raises(SourceError, match="cannot read"):
        read_openimages(**{**OI_ARGS, "boxes_csv": tmp_path / "absent.csv"})
    with pytest.raises(SourceError, match=r"classes not among its leaf classes: \['Animal'\]"):
        read_openimages(**OI_ARGS, classes=["Animal"])
