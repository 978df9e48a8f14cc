"""The scene world written to disk in the real datasets' formats, and a contact sheet to look at it.

:func:`write_coco_split` writes a genuine COCO ``instances_<split>.json`` with its PNG images, and
:func:`write_openimages_split` the OpenImages V7 box CSV, class descriptions, hierarchy and image list, so
that :mod:`mimic_utils.data.annotations` reads the embedded world through the same readers as real COCO and
OpenImages. Files carry OpenMoji's attribution and how they were drawn, contain no timestamps (the same seed
gives byte-identical files) and are written atomically, annotation files last, so their presence means
the split is complete (see docs/design.md, *The scene world*).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from mimic_utils.artifacts import write_bytes
from mimic_utils.data.scenes import (
    ATTRIBUTION,
    CATEGORY_BY_NAME,
    COCO_STREAM,
    FIXED_DATE,
    LICENSE_NAME,
    LICENSE_URL,
    OPENIMAGES_STREAM,
    Category,
    SceneObject,
    SceneParams,
    draw_scenes,
)
from mimic_utils.data.annotations import AnnotationIndex, ImageAnnotation, read_coco

def save_png(path: Path, image: np.ndarray) -> None:
    """Encode an RGB array as PNG (deterministic bytes: no timestamps) and write it atomically."""
    buffer = io.BytesIO()
    Image.fromarray(image, "RGB").save(buffer, format="PNG")
    write_bytes(path, buffer.getvalue())


def _json_bytes(data: object) -> bytes:
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _provenance(seed: int, params: SceneParams, stream: int) -> dict:
    return {"generator": "mimic_utils.scenes", "seed": seed, "stream": stream, "params": asdict(params)}


def coco_info(seed: int, params: SceneParams) -> tuple[dict, list[dict]]:
    """The ``info`` and ``licenses`` blocks of a COCO file: credit OpenMoji and record how it was drawn."""
    info = {
        "description": f"MIMIC scene world (procedural COCO-format images). {ATTRIBUTION}",
        "url": LICENSE_URL,
        "version": "1.0",
        "year": int(FIXED_DATE[:4]),
        "contributor": "OpenMoji (https://openmoji.org); MIMIC study scene generator",
        "date_created": FIXED_DATE,
        "mimic_scenes": _provenance(seed, params, COCO_STREAM),
    }
    licenses = [{"id": 1, "name": f"{LICENSE_NAME} ({ATTRIBUTION})", "url": LICENSE_URL}]
    return info, licenses


def write_coco_split(
    out_dir: Path,
    n_images: int,
    seed: int,
    params: SceneParams = SceneParams(),
    split: str = "train2017",
    progress: bool = True,
) -> Path:
    """Draw ``n_images`` scenes and write a genuine COCO split: ``out_dir/instances_<split>.json`` and
    ``out_dir/images/<split>_<id:06d>.png``. Image and annotation ids start at 1. Returns the JSON path.

    The segmentation of each object is its box polygon and ``area`` is the box area, consistently.
    """
    out_dir = Path(out_dir)
    info, licenses = coco_info(seed, params)
    images, annotations = [], []
    for index, scene in draw_scenes(n_images, seed, COCO_STREAM, params, f"coco {split}", progress):
        image_id = index + 1
        file_name = f"{split}_{image_id:06d}.png"
        save_png(out_dir / "images" / file_name, scene.image)
        images.append(
            {
                "id": image_id,
                "file_name": file_name,
                "width": params.image_size,
                "height": params.image_size,
                "license": 1,
                "date_captured": FIXED_DATE,
            }
        )
        first_id = len(annotations) + 1
        annotations.extend([_coco_annotation(first_id + k, image_id, o) for k, o in enumerate(scene.objects)])
    categories = [{"id": c.id, "name": c.name, "supercategory": c.supercategory} for c in params.category_table()]
    data = {"info": info, "licenses": licenses, "images": images, "annotations": annotations, "categories": categories}
    path = out_dir / f"instances_{split}.json"
    write_bytes(path, _json_bytes(data))
    return path


def _coco_annotation(annotation_id: int, image_id: int, obj: SceneObject) -> dict:
    x, y, w, h = obj.bbox
    polygon = [x, y, x + w, y, x + w, y + h, x, y + h]
    return {
        "id": annotation_id,
        "image_id": image_id,
        "category_id": obj.category_id,
        "bbox": [x, y, w, h],
        "area": w * h,
        "iscrowd": 0,
        "segmentation": [polygon],
    }


# OpenImages V7 formats ------------------------------------------------------------------------------

OPENIMAGES_BOX_HEADER = [
    "ImageID",
    "Source",
    "LabelName",
    "Confidence",
    "XMin",
    "XMax",
    "YMin",
    "YMax",
    "IsOccluded",
    "IsTruncated",
    "IsGroupOf",
    "IsDepiction",
    "IsInside",
]
OPENIMAGES_ROOT_MID = "/m/0bl9f"  # "Entity", the root of the official hierarchy


def class_mid(category: Category) -> str:
    """Stable fake MID of a category, derived from its COCO id (e.g. dog -> ``/m/mimic_018``)."""
    return f"/m/mimic_{category.id:03d}"


def supercategory_mid(supercategory: str) -> str:
    """Stable fake MID of a supercategory, derived from its name (e.g. ``/m/mimic_sc_animal``)."""
    return "/m/mimic_sc_" + supercategory.replace(" ", "_")


def openimages_image_id(seed: int, index: int) -> str:
    """A 16-hex-digit ImageID like the official ones, a hash of (seed, index): disjoint from COCO's ids."""
    return hashlib.sha256(f"mimic-openimages:{seed}:{index}".encode()).hexdigest()[:16]


def _csv_bytes(rows: list[list[str]]) -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue().encode("utf-8")


def _box_row(image_id: str, obj: SceneObject, size: int) -> list[str]:
    x, y, w, h = obj.bbox
    coords = [x / size, (x + w) / size, y / size, (y + h) / size]
    truncated = x == 0 or y == 0 or x + w == size or y + h == size
    flags = [int(obj.occluded > 0), int(truncated), 0, 0, 0]  # occluded, truncated, group-of, depiction, inside
    return [
        image_id,
        "xclick",
        class_mid(CATEGORY_BY_NAME[obj.category]),
        "1",
        *(f"{v:.6f}" for v in coords),
        *map(str, flags),
    ]


def _hierarchy(categories: list[Category]) -> dict:
    groups: dict[str, list[dict]] = {}
    for c in categories:
        groups.setdefault(c.supercategory, []).append({"LabelName": class_mid(c)})
    subcategories = [{"LabelName": supercategory_mid(s), "Subcategory": members} for s, members in groups.items()]
    return {"LabelName": OPENIMAGES_ROOT_MID, "Subcategory": subcategories}


def write_openimages_split(
    out_dir: Path,
    n_images: int,
    seed: int,
    params: SceneParams = SceneParams(background="landscape"),
    subset: str = "train",
    progress: bool = True,
) -> dict[str, Path]:
    """Draw ``n_images`` scenes and write them in OpenImages V7 format under ``out_dir``.

    Files: ``<subset>-annotations-bbox.csv`` (official box header, normalised coordinates, rows sorted by
    ImageID as in the official files), ``oidv7-class-descriptions-boxable.csv`` (``LabelName,DisplayName``,
    no header; supercategory MIDs included), ``bbox_labels_hierarchy.json`` (official shape),
    ``<subset>-images-boxable.csv`` (``ImageID,Subset``: lists every image, also those without boxes, which
    the box file cannot express) and ``images/<ImageID>.png`` (PNG, not JPEG: no compression artefacts).
    The returned dict's keys are the parameter names of :func:`mimic_utils.data.annotations.read_openimages`, so
    ``read_openimages(**write_openimages_split(...))`` reads the split back.
    """
    out_dir = Path(out_dir)
    rows, image_ids = [], []
    for index, scene in draw_scenes(n_images, seed, OPENIMAGES_STREAM, params, f"openimages {subset}", progress):
        image_id = openimages_image_id(seed, index)
        save_png(out_dir / "images" / f"{image_id}.png", scene.image)
        image_ids.append(image_id)
        rows.extend(_box_row(image_id, o, params.image_size) for o in scene.objects)
    categories = params.category_table()
    supercategories = list(dict.fromkeys(c.supercategory for c in categories))
    descriptions = [[class_mid(c), c.name] for c in categories] + [[supercategory_mid(s), s] for s in supercategories]
    paths = {
        "boxes_csv": out_dir / f"{subset}-annotations-bbox.csv",
        "class_descriptions_csv": out_dir / "oidv7-class-descriptions-boxable.csv",
        "hierarchy_json": out_dir / "bbox_labels_hierarchy.json",
        "image_list_csv": out_dir / f"{subset}-images-boxable.csv",
        "image_dir": out_dir / "images",
    }
    write_bytes(paths["class_descriptions_csv"], _csv_bytes(descriptions))
    write_bytes(paths["hierarchy_json"], json.dumps(_hierarchy(categories), indent=1).encode("utf-8"))
    write_bytes(paths["image_list_csv"], _csv_bytes([["ImageID", "Subset"]] + [[i, subset] for i in sorted(image_ids)]))
    write_bytes(paths["boxes_csv"], _csv_bytes([OPENIMAGES_BOX_HEADER] + sorted(rows, key=lambda r: r[0])))
    return paths


# --------------------------------------------------------------------------------------------------
# Contact sheet
# --------------------------------------------------------------------------------------------------


def contact_sheet(
    index_or_json: AnnotationIndex | Path | str, out_png: Path, n: int = 16, cols: int = 4, tile: int = 224
) -> Path:
    """Draw the first ``n`` images of an index (or of a COCO ``instances_*.json``) with boxes and labels.

    Tiles are upscaled to at least ``tile`` pixels so that labels stay readable. Written atomically.
    """
    index = index_or_json if isinstance(index_or_json, AnnotationIndex) else read_coco(Path(index_or_json))
    chosen = list(index.images.values())[:n]
    rows = max(1, -(-len(chosen) // cols))
    sheet = Image.new("RGB", (cols * tile, rows * tile), (255, 255, 255))
    font = ImageFont.load_default(size=max(9, tile // 20))
    for k, record in enumerate(chosen):
        sheet.paste(_annotated_tile(record, tile, font), ((k % cols) * tile, (k // cols) * tile))
    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG")
    write_bytes(Path(out_png), buffer.getvalue())
    return Path(out_png)


def _annotated_tile(record: ImageAnnotation, tile: int, font: ImageFont.ImageFont) -> Image.Image:
    with Image.open(record.path) as im:
        scale = (tile - 2) / max(im.size)
        image = im.convert("RGB").resize((round(im.width * scale), round(im.height * scale)), Image.Resampling.NEAREST)
    draw = ImageDraw.Draw(image)
    for obj in record.objects:
        x, y, w, h = (v * scale for v in obj.bbox)
        draw.rectangle([x, y, x + w - 1, y + h - 1], outline=(255, 0, 0), width=2)
        draw.text((x + 2, y + 1), obj.category, fill=(255, 255, 255), font=font, stroke_width=2, stroke_fill=(0, 0, 0))
    out = Image.new("RGB", (tile, tile), (255, 255, 255))
    out.paste(image, (1, 1))
    return out
