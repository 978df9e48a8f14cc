"""Annotation readers: real COCO and OpenImages V7 files, read into one in-memory index.

Every builder in the study (``tasks``, ``traindata``, the organism's training data) consumes an
:class:`AnnotationIndex` and nothing else, so that the embedded scene world and the real datasets go
through exactly the same code path.

Objects a reader does not keep (COCO crowd regions, boxes below ``min_area_frac``, OpenImages group-of
boxes, boxes labelled with a non-leaf class, ...) are still *there* on the image. They are recorded per
image in ``meta["dropped"]`` (see :meth:`AnnotationIndex.dropped_categories`) so that builders never use such
an image as evidence that a category is absent, or count it as holding an exact number of instances.

Bad input raises :class:`SourceError` naming the file and the record (annotation id, CSV line, ...).
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, UnidentifiedImageError
from pycocotools.coco import COCO


@dataclass(frozen=True)
class ObjectAnnotation:
    """One kept object instance: its category name, supercategory and pixel box ``(x, y, w, h)``."""

    category: str
    supercategory: str
    bbox: tuple[float, float, float, float]


@dataclass(frozen=True)
class ImageAnnotation:
    """One image and the objects kept on it. ``path`` is absolute so records can be loaded anywhere."""

    image_id: str
    path: Path
    width: int
    height: int
    objects: tuple[ObjectAnnotation, ...]

    def counts(self) -> Counter[str]:
        """Instances per category name on this image (categories absent from the image are absent)."""
        return Counter(obj.category for obj in self.objects)


@dataclass
class AnnotationIndex:
    """What the builders consume: images with their objects, the category list and the supercategory map.

    ``categories`` keeps the source's order; ``supercategory_of`` maps every category name to its
    supercategory. ``source_hash`` is the sha256 of the annotation files read, recorded in every manifest.
    """

    images: dict[str, ImageAnnotation]
    categories: list[str]
    supercategory_of: dict[str, str]
    source_hash: str
    source_format: str
    meta: dict = field(default_factory=dict)

    def members(self, supercategory: str) -> list[str]:
        """Categories of one supercategory, in source order."""
        return [c for c in self.categories if self.supercategory_of[c] == supercategory]

    @property
    def supercategories(self) -> list[str]:
        """Supercategories in order of first appearance in ``categories``."""
        return list(dict.fromkeys(self.supercategory_of[c] for c in self.categories))

    def dropped_categories(self, image_id: str) -> set[str]:
        """Categories with instances on this image that the reader did not keep (crowd, group-of, too small,
        non-leaf label, ...). A builder must not treat the image as holding none, or an exact count, of these."""
        return set(self.meta.get("dropped", {}).get(image_id, {}))


def summarize(index: AnnotationIndex) -> dict:
    """One row of facts about a source: sizes, objects per image, and its hash (a notebook table row)."""
    objects = [len(image.objects) for image in index.images.values()]
    return {
        "format": index.source_format,
        "images": len(index.images),
        "categories": len(index.categories),
        "supercategories": len(index.supercategories),
        "objects": sum(objects),
        "objects_per_image": round(sum(objects) / max(len(objects), 1), 3),
        "empty_images": sum(n == 0 for n in objects),
        "sha256": index.source_hash[:12],
    }


class SourceError(ValueError):
    """Annotation input that cannot be read: the message names the file and the offending record."""


def _error(path: Path | str, where: str, problem: str) -> SourceError:
    return SourceError(f"{path}: {where}: {problem}" if where else f"{path}: {problem}")


def _read_bytes(path: Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise _error(path, "", f"cannot read annotation file ({exc.strerror or exc})") from exc


def source_hash(paths: Iterable[Path]) -> str:
    """sha256 over the bytes of the annotation files, in the given order (recorded in every manifest)."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(_read_bytes(path))
    return digest.hexdigest()


class _Dropped:
    """Bookkeeping of objects present on an image but not kept, per image and category, with reasons."""

    def __init__(self) -> None:
        self.by_image: dict[str, Counter[str]] = {}
        self.reasons: Counter[str] = Counter()

    def add(self, image_id: str, category: str, reason: str) -> None:
        self.by_image.setdefault(image_id, Counter())[category] += 1
        self.reasons[reason] += 1

    def meta(self) -> dict:
        return {"dropped": {i: dict(c) for i, c in self.by_image.items()}, "dropped_reasons": dict(self.reasons)}


# --------------------------------------------------------------------------------------------------
# COCO
# --------------------------------------------------------------------------------------------------


def _field(record: object, key: str, kinds: type | tuple[type, ...], path: Path, where: str) -> object:
    """``record[key]``, checked to be of ``kinds`` (bool is never accepted as a number)."""
    if not isinstance(record, dict) or key not in record:
        raise _error(path, where, f"missing field {key!r}")
    value = record[key]
    if isinstance(value, bool) or not isinstance(value, kinds):
        raise _error(path, where, f"field {key!r} has unexpected value {value!r}")
    return value


def _load_coco_json(path: Path) -> dict:
    try:
        data = json.loads(_read_bytes(path))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise _error(path, "", f"malformed JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise _error(path, "", "top level is not a JSON object")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise _error(path, "", f"missing list {key!r}")
    return data


def _check_coco(data: dict, path: Path) -> None:
    """Validate what pycocotools trusts blindly: ids, references, boxes. Raises :class:`SourceError`."""
    category_ids, names = set(), set()
    for k, cat in enumerate(data["categories"]):
        where = f"category #{k}"
        cid = _field(cat, "id", int, path, where)
        name = _field(cat, "name", str, path, f"category id {cid}")
        _field(cat, "supercategory", str, path, f"category id {cid}")
        if cid in category_ids or name in names:
            raise _error(path, f"category id {cid}", f"duplicate category id or name {name!r}")
        category_ids.add(cid)
        names.add(name)
    image_ids = set()
    for k, img in enumerate(data["images"]):
        iid = _field(img, "id", (int, str), path, f"image #{k}")
        for key in ("width", "height"):
            if _field(img, key, int, path, f"image id {iid}") <= 0:  # type: ignore[operator]
                raise _error(path, f"image id {iid}", f"{key} must be positive")
        _field(img, "file_name", str, path, f"image id {iid}")
        if iid in image_ids:
            raise _error(path, f"image id {iid}", "duplicate image id")
        image_ids.add(iid)
    annotation_ids = set()
    for k, ann in enumerate(data["annotations"]):
        where = f"annotation id {ann.get('id', f'#{k}') if isinstance(ann, dict) else f'#{k}'}"
        if _field(ann, "id", (int, str), path, where) in annotation_ids:
            raise _error(path, where, "duplicate annotation id")
        annotation_ids.add(ann["id"])
        if _field(ann, "image_id", (int, str), path, where) not in image_ids:
            raise _error(path, where, f"points at unknown image id {ann['image_id']!r}")
        if _field(ann, "category_id", int, path, where) not in category_ids:
            raise _error(path, where, f"points at unknown category id {ann['category_id']!r}")
        bbox = _field(ann, "bbox", list, path, where)
        if (
            len(bbox) != 4
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in bbox)
            or min(bbox[2:]) < 0
        ):
            raise _error(path, where, f"bbox must be [x, y, w, h] with w, h >= 0, got {bbox!r}")


def read_coco(
    instances_json: Path | str,
    image_dir: Path | str | None = None,
    include_crowd: bool = False,
    min_area_frac: float = 0.0,
    check_files: bool = True,
) -> AnnotationIndex:
    """Read a COCO ``instances_*.json`` (through pycocotools) into an :class:`AnnotationIndex`.

    * ``image_dir`` defaults to ``images/`` next to the JSON (the scene world's layout); for real COCO pass
      e.g. ``coco/train2017``. Paths in the index are absolute.
    * ``include_crowd=False`` (default) drops ``iscrowd=1`` regions: one crowd box holds an unknown number of
      instances, so it can be neither counted nor ignored; the image records it under ``dropped``.
    * ``min_area_frac`` drops boxes whose area (``w*h``, not the segmentation area: the question is whether
      an object is large enough to see) is below that fraction of the image; default 0.0 keeps every box.
    * ``check_files`` verifies that every image file exists (cheap: one ``stat`` per image).

    Image ids become strings; categories are listed in COCO id order; images without annotations are kept.
    """
    path = Path(instances_json).resolve()
    data = _load_coco_json(path)
    _check_coco(data, path)
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress lines
        coco.createIndex()
    root = Path(image_dir).resolve() if image_dir is not None else path.parent / "images"
    cats = {cid: coco.cats[cid] for cid in sorted(coco.cats)}
    dropped = _Dropped()
    images = {}
    for img in coco.dataset["images"]:
        record = _coco_image(img, coco.imgToAnns[img["id"]], cats, root, include_crowd, min_area_frac, dropped)
        if check_files and not record.path.is_file():
            raise _error(path, f"image id {img['id']}", f"image file not found: {record.path}")
        images[record.image_id] = record
    meta = {
        "instances_json": str(path),
        "image_dir": str(root),
        "include_crowd": include_crowd,
        "min_area_frac": min_area_frac,
        "n_annotations": len(coco.anns),
        **dropped.meta(),
    }
    return AnnotationIndex(
        images=images,
        categories=[c["name"] for c in cats.values()],
        supercategory_of={c["name"]: c["supercategory"] for c in cats.values()},
        source_hash=source_hash([path]),
        source_format="coco",
        meta=meta,
    )


def _coco_image(
    img: dict,
    anns: list[dict],
    cats: dict[int, dict],
    root: Path,
    include_crowd: bool,
    min_area_frac: float,
    dropped: _Dropped,
) -> ImageAnnotation:
    image_id, width, height = str(img["id"]), img["width"], img["height"]
    objects = []
    for ann in anns:
        cat = cats[ann["category_id"]]
        x, y, w, h = (float(v) for v in ann["bbox"])
        if ann.get("iscrowd", 0) and not include_crowd:
            dropped.add(image_id, cat["name"], "crowd")
        elif w * h < min_area_frac * width * height:
            dropped.add(image_id, cat["name"], "small")
        else:
            objects.append(ObjectAnnotation(cat["name"], cat["supercategory"], (x, y, w, h)))
    return ImageAnnotation(image_id, root / img["file_name"], width, height, tuple(objects))


# --------------------------------------------------------------------------------------------------
# OpenImages V7
# --------------------------------------------------------------------------------------------------

OPENIMAGES_ROOT_NAME = "Entity"  # display name of the hierarchy root /m/0bl9f, absent from the descriptions
_BOX_COLUMNS = ("ImageID", "LabelName", "XMin", "XMax", "YMin", "YMax", "IsGroupOf", "IsDepiction")
_IMAGE_SUFFIXES = (".jpg", ".png")


def _csv_rows(path: Path) -> list[tuple[int, list[str]]]:
    """Rows of a CSV file with their 1-based line numbers (UTF-8, optional BOM)."""
    try:
        text = _read_bytes(path).decode("utf-8-sig")
        reader = csv.reader(io.StringIO(text, newline=""), strict=True)
        return [(reader.line_num, row) for row in reader if row]
    except (UnicodeDecodeError, csv.Error) as exc:
        raise _error(path, "", f"malformed CSV ({exc})") from exc


def _read_descriptions(path: Path) -> dict[str, str]:
    """``LabelName,DisplayName`` rows (no header, as in ``oidv7-class-descriptions-boxable.csv``)."""
    names: dict[str, str] = {}
    for line, row in _csv_rows(path):
        if len(row) != 2 or not row[0].startswith("/"):
            raise _error(path, f"line {line}", f"expected 'LabelName,DisplayName', got {row!r}")
        if row[0] in names:
            raise _error(path, f"line {line}", f"duplicate LabelName {row[0]}")
        names[row[0]] = row[1]
    return names


@dataclass(frozen=True)
class _Hierarchy:
    """The class tree: root MID, each node's children, each node's parent (first occurrence wins)."""

    root: str
    children: dict[str, list[str]]
    parent_of: dict[str, str]

    def leaves(self) -> list[str]:
        """Nodes without children, in depth-first order, each once."""
        return [m for m in self.parent_of if not self.children.get(m)]

    def leaves_under(self, mid: str) -> list[str]:
        kids = self.children.get(mid, [])
        return [leaf for kid in kids for leaf in self.leaves_under(kid)] if kids else [mid]


def _read_hierarchy(path: Path) -> _Hierarchy:
    """Parse ``bbox_labels_600_hierarchy.json``: nested ``{"LabelName": ..., "Subcategory": [...]}``."""
    try:
        tree = json.loads(_read_bytes(path))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise _error(path, "", f"malformed JSON ({exc})") from exc
    children: dict[str, list[str]] = {}
    parent_of: dict[str, str] = {}

    def walk(node: object, parent: str | None, trail: str) -> str:
        label = str(_field(node, "LabelName", str, path, trail))
        kids = node.get("Subcategory", [])  # type: ignore[union-attr]
        if not isinstance(kids, list):
            raise _error(path, f"{trail} {label}", "'Subcategory' is not a list")
        if parent is not None:
            parent_of.setdefault(label, parent)
        names = [walk(kid, label, f"{trail} {label} > Subcategory[{k}]") for k, kid in enumerate(kids)]
        children.setdefault(label, []).extend(n for n in names if n not in children[label])
        return label

    return _Hierarchy(walk(tree, None, "node"), children, parent_of)


@dataclass(frozen=True)
class _Classes:
    """What box rows are checked against: every MID's name, the tree, and the kept leaf MIDs' supercategory."""

    names: dict[str, str]
    tree: _Hierarchy
    supercategory: dict[str, str]  # kept leaf MID -> supercategory name, in the order categories are listed


def _openimages_classes(descriptions_csv: Path, hierarchy_json: Path, classes: Iterable[str] | None) -> _Classes:
    """Leaf classes in descriptions order, optionally restricted to ``classes`` (DisplayNames or MIDs)."""
    names = _read_descriptions(descriptions_csv)
    tree = _read_hierarchy(hierarchy_json)
    for mid in tree.parent_of:
        if mid not in names:
            raise _error(hierarchy_json, f"node {mid}", f"LabelName not in {descriptions_csv.name}")
    leaves = set(tree.leaves())
    kept = [mid for mid in names if mid in leaves]
    if classes is not None:
        wanted = set(classes)
        unknown = wanted - {names[m] for m in kept} - set(kept)
        if unknown:
            raise SourceError(f"{hierarchy_json}: classes not among its leaf classes: {sorted(unknown)}")
        kept = [m for m in kept if m in wanted or names[m] in wanted]
    shown = Counter(names[m] for m in kept)
    if any(n > 1 for n in shown.values()):
        raise _error(
            descriptions_csv, "", f"leaf DisplayNames are not unique: {sorted(k for k, n in shown.items() if n > 1)}"
        )
    parent_name = {tree.root: OPENIMAGES_ROOT_NAME, **names}
    return _Classes(names, tree, {m: parent_name[tree.parent_of[m]] for m in kept})


def _image_path(image_dir: Path, image_id: str) -> Path | None:
    for suffix in _IMAGE_SUFFIXES:
        candidate = image_dir / f"{image_id}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def _image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the image file's header: PIL reads the header only, not the pixels."""
    with Image.open(path) as im:
        return im.size


class _ImageTable:
    """Images met in the image list and the box file: absolute path and size, resolved once per image."""

    def __init__(self, image_dir: Path, sizes: Mapping[str, tuple[int, int]] | None) -> None:
        self.image_dir, self.sizes = image_dir, sizes
        self.info: dict[str, tuple[Path, int, int]] = {}
        self.objects: dict[str, list[ObjectAnnotation]] = {}

    def add(self, image_id: str, source: Path, where: str) -> tuple[Path, int, int]:
        if image_id not in self.info:
            path = _image_path(self.image_dir, image_id)
            if path is None:
                raise _error(
                    source,
                    where,
                    f"image {image_id} not found in {self.image_dir} (tried {', '.join(_IMAGE_SUFFIXES)})",
                )
            try:
                width, height = (
                    self.sizes[image_id] if self.sizes is not None and image_id in self.sizes else _image_size(path)
                )
            except (OSError, UnidentifiedImageError) as exc:
                raise _error(source, where, f"unreadable image {path} ({exc})") from exc
            self.info[image_id] = (path, width, height)
            self.objects[image_id] = []
        return self.info[image_id]

    def records(self) -> dict[str, ImageAnnotation]:
        return {i: ImageAnnotation(i, p, w, h, tuple(self.objects[i])) for i, (p, w, h) in self.info.items()}


def _flag(value: str, path: Path, where: str, column: str) -> bool:
    """OpenImages flags are 1 (yes), 0 (no) or -1 / empty (unknown, read as no)."""
    if value not in ("1", "0", "-1", ""):
        raise _error(path, where, f"{column} must be 1, 0 or -1, got {value!r}")
    return value == "1"


def _box(row: dict[str, str], path: Path, where: str) -> tuple[float, float, float, float]:
    try:
        x0, x1, y0, y1 = (float(row[k]) for k in ("XMin", "XMax", "YMin", "YMax"))
    except (TypeError, ValueError) as exc:
        raise _error(path, where, f"coordinates must be numbers ({exc})") from exc
    if not (0.0 <= x0 <= x1 <= 1.0 and 0.0 <= y0 <= y1 <= 1.0):
        raise _error(path, where, f"normalised box must satisfy 0 <= min <= max <= 1, got x {x0}..{x1}, y {y0}..{y1}")
    return x0, x1, y0, y1


def _drop_reason(
    label: str, group: bool, depiction: bool, classes: _Classes, include_group: bool, include_depiction: bool
) -> str | None:
    if label not in classes.supercategory:
        return "not a leaf class" if classes.tree.children.get(label) else "not selected"
    if group and not include_group:
        return "group-of"
    if depiction and not include_depiction:
        return "depiction"
    return None


def _read_boxes(
    path: Path, classes: _Classes, table: _ImageTable, include_group: bool, include_depiction: bool, dropped: _Dropped
) -> None:
    """Read the box CSV into ``table``; objects not kept go to ``dropped`` (see :func:`read_openimages`)."""
    rows = _csv_rows(path)
    header = rows[0][1] if rows else []
    missing = [c for c in _BOX_COLUMNS if c not in header]
    if missing:
        raise _error(path, "line 1", f"header lacks columns {missing}")
    for line, values in rows[1:]:
        where = f"line {line}"
        if len(values) != len(header):
            raise _error(path, where, f"expected {len(header)} fields, got {len(values)}")
        row = dict(zip(header, values, strict=True))
        label, image_id = row["LabelName"], row["ImageID"]
        if label not in classes.names or label not in classes.tree.parent_of:
            raise _error(path, where, f"unknown LabelName {label} (not in the class descriptions and hierarchy)")
        x0, x1, y0, y1 = _box(row, path, where)
        group, depiction = (_flag(row[c], path, where, c) for c in ("IsGroupOf", "IsDepiction"))
        _, width, height = table.add(image_id, path, where)
        reason = _drop_reason(label, group, depiction, classes, include_group, include_depiction)
        if reason is None:
            box = (x0 * width, y0 * height, (x1 - x0) * width, (y1 - y0) * height)
            table.objects[image_id].append(ObjectAnnotation(classes.names[label], classes.supercategory[label], box))
        elif reason != "not selected":
            # An inner-node box ("Animal") may be any kept leaf below it: all of them become uncertain.
            for leaf in classes.tree.leaves_under(label):
                if leaf in classes.supercategory:
                    dropped.add(image_id, classes.names[leaf], reason)


def _read_image_list(path: Path, table: _ImageTable) -> None:
    """Register every image of an image list (any CSV with an ``ImageID`` column, e.g. the official
    ``*-images-boxable-with-rotation.csv``), so that images without boxes are kept with no objects."""
    rows = _csv_rows(path)
    header = rows[0][1] if rows else []
    if "ImageID" not in header:
        raise _error(path, "line 1", "header lacks column 'ImageID'")
    column = header.index("ImageID")
    for line, values in rows[1:]:
        if len(values) != len(header):
            raise _error(path, f"line {line}", f"expected {len(header)} fields, got {len(values)}")
        table.add(values[column], path, f"line {line}")


def read_openimages(
    boxes_csv: Path | str,
    class_descriptions_csv: Path | str,
    hierarchy_json: Path | str,
    image_dir: Path | str,
    include_group: bool = False,
    include_depiction: bool = True,
    classes: Iterable[str] | None = None,
    image_list_csv: Path | str | None = None,
    sizes: Mapping[str, tuple[int, int]] | None = None,
) -> AnnotationIndex:
    """Read OpenImages V7 box annotations into an :class:`AnnotationIndex`.

    * Categories are the *leaf* classes of the hierarchy, named by DisplayName, in the order of the class
      descriptions file; ``classes`` (DisplayNames or MIDs) restricts them. The supercategory of a leaf is
      the node directly above it (``"Entity"`` for leaves directly under the root).
    * ``include_group=False`` (default) drops group-of boxes (one box around 5+ instances: no count is
      possible); with ``True`` each is kept as one object, so counts become lower bounds.
    * ``include_depiction=True`` (default) keeps depictions (drawings, toys): a drawn dog answers "is there
      a dog" for a VLM as well, and the scene world is all pictograms anyway; ``False`` drops them.
    * Boxes labelled with an inner node (e.g. "Animal") are dropped: they may be any leaf below it, so that
      every such leaf is recorded as uncertain for the image. Dropped objects go to ``meta["dropped"]``.
    * Normalised coordinates become pixels with the image size, read from the image file's header (PIL
      opens lazily: header only, about a millisecond per image) unless ``sizes`` (ImageID -> (width,
      height), e.g. from an image metadata table) provides it. Images are ``<image_dir>/<ImageID>.jpg``
      (official) or ``.png`` (the scene world).
    * ``image_list_csv`` (any CSV with an ``ImageID`` column) lists images to keep even without boxes.

    The source hash covers the box file, the descriptions, the hierarchy and the image list, in that order.
    """
    paths = [Path(p).resolve() for p in (boxes_csv, class_descriptions_csv, hierarchy_json)]
    image_list = Path(image_list_csv).resolve() if image_list_csv is not None else None
    class_table = _openimages_classes(paths[1], paths[2], classes)
    table, dropped = _ImageTable(Path(image_dir).resolve(), sizes), _Dropped()
    if image_list is not None:
        _read_image_list(image_list, table)
    _read_boxes(paths[0], class_table, table, include_group, include_depiction, dropped)
    kept = list(class_table.supercategory)
    meta = {
        "boxes_csv": str(paths[0]),
        "image_dir": str(table.image_dir),
        "include_group": include_group,
        "include_depiction": include_depiction,
        "mids": {class_table.names[m]: m for m in kept},
        **dropped.meta(),
    }
    return AnnotationIndex(
        images=table.records(),
        categories=[class_table.names[m] for m in kept],
        supercategory_of={class_table.names[m]: class_table.supercategory[m] for m in kept},
        source_hash=source_hash(paths + ([image_list] if image_list else [])),
        source_format="openimages",
        meta=meta,
    )
