"""Typed schemas of the notebooks' parameters, checked before anything runs.

The runner (``python -m mimic_utils.runner --profile P [--check]``) reads every selected notebook's
``params/<profile>/NN_<name>.yaml`` and validates it here before the first notebook starts, so a bad value
stops the run with the file, the key, the value and what is allowed — not an hour later, deep inside a
notebook, as an error about a ``TaskSpec``. The schemas check what the notebook will receive (pydantic in
strict mode: ``"2"`` is not an int, ``1e-3`` — a string to YAML, which wants ``1.0e-3`` — is not a number):

    check_parameters("02_zero_shot_diagnosis", {"pool_factors": [1, "two", 4]}, "params/cpu/02_….yaml")
    # ParameterValueError: params/cpu/02_….yaml: pool_factors[1] = 'two': Input should be a valid integer

**Adding a parameter** to a notebook's ``parameters`` cell is one line in its class below (e.g.
``blank_images: bool = False`` in :class:`DataBuild`); a test fails while the cell and the class disagree on
the key set. A key of a model entry is one line in :class:`ModelSpec` (kept equal to
``evaluation.harness.MODEL_SPEC_KEYS`` by a test), a preprocessing key one line in :class:`Preprocessing`.

Ranges the package already enforces when it builds something (a spread sweep that cannot hold its image
count, a scene whose objects do not fit) are checked by building that object here (``BenchmarkPlan``,
``SceneParams``, ``TrainMix``), so the rule lives in one place and fails before the run.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

MAX_IMAGES = 10  # tasks.MAX_IMAGES (a test keeps them equal; tasks is not imported for a parameter check)

PositiveInt = Annotated[int, Field(ge=1)]
NonNegativeInt = Annotated[int, Field(ge=0)]
Fraction = Annotated[float, Field(ge=0.0, le=1.0)]
ImageCount = Annotated[int, Field(ge=1, le=MAX_IMAGES)]
MultiImageCount = Annotated[int, Field(ge=2, le=MAX_IMAGES)]
Name = Annotated[str, Field(min_length=1)]
Pair = Annotated[list[int], Field(min_length=2, max_length=2)]

#: The default of a key a sub-mapping may leave out: the package's own default then applies (the dataclass
#: or function the mapping is passed to), so it is not repeated here. Defaults are never validated, so an
#: explicit ``null`` is still refused wherever the type does not include ``None``.
OMITTED: Any = None

#: Choices, each kept equal to the package's own list by a test (tests/test_param_schema.py).
Family = Literal["llava_onevision", "qwen2_vl", "qwen2_5_vl", "internvl"]  # models.vlm.FAMILIES
DType = Literal["auto", "float32", "bfloat16", "float16"]
Quantization = Literal["4bit", "8bit"]  # models.vlm.quantization_config
ImageBackend = Literal["pil", "torchvision"]  # models.vlm.IMAGE_BACKENDS
Background = Literal["studio", "landscape", "texture"]  # data.scenes.BACKGROUNDS
Experiment = Literal["images", "spread", "distractors", "k", "blank"]  # data.mimic_benchmark.SWEEPS
PublicBenchmark = Literal["muirbench", "blink", "nlvr2", "mantis", "mmiu", "qbench2"]  # evaluation.external_benchmarks.BENCHMARKS


class ParameterValueError(ValueError):
    """A parameter file holds a value its notebook cannot use; the message names file, key, value and rule."""


class Strict(BaseModel):
    """Unknown keys are refused and values are not coerced: the notebook gets exactly what the file says."""

    model_config = ConfigDict(extra="forbid", strict=True)


def _unique(values: list) -> list:
    repeated = sorted({repr(v) for v in values if values.count(v) > 1})
    if repeated:
        raise ValueError(f"values must be distinct; repeated: {', '.join(repeated)}")
    return values


def _layer_spec(spec: Any) -> Any:
    """A mask's layers as ``models.masking.resolve_layers`` reads them (checked against the model's depth later)."""
    from mimic_utils.models.masking import check_layer_spec

    check_layer_spec(spec)
    return spec


LayerSpec = Annotated[str | NonNegativeInt | list[NonNegativeInt] | None, AfterValidator(_layer_spec)]
Distinct = AfterValidator(_unique)


# --- shared pieces -----------------------------------------------------------------------------------


class Preprocessing(Strict):
    """``preprocessing:`` of a model entry: the union of ``models.vlm.PREPROCESSING_KEYS`` (which of them a
    family accepts is checked when the model is loaded and its family known) and the image backend."""

    image_backend: ImageBackend = OMITTED  # default: the backend the model was saved with (models.load_adapter)
    multi_image: Literal["pad", "anyres"] = OMITTED  # llava_onevision
    vision_aspect_ratio: Name = OMITTED
    image_grid_pinpoints: list[Pair] = OMITTED
    min_pixels: PositiveInt = OMITTED  # qwen2_vl, qwen2_5_vl
    max_pixels: PositiveInt = OMITTED
    crop_to_patches: bool = OMITTED  # internvl
    min_patches: PositiveInt = OMITTED
    max_patches: PositiveInt = OMITTED

    @model_validator(mode="after")
    def _ordered(self) -> "Preprocessing":
        for low, high in (("min_pixels", "max_pixels"), ("min_patches", "max_patches")):
            a, b = getattr(self, low), getattr(self, high)
            if a is not None and b is not None and a > b:
                raise ValueError(f"{low} ({a}) must not exceed {high} ({b})")
        return self


class ModelSpec(Strict):
    """One model entry (``evaluation.harness.load_under_study``): a hub id or a folder relative to the checkout."""

    name: Name | None = OMITTED
    source: Name
    family: Family | None = OMITTED
    dtype: DType = OMITTED
    device: Annotated[str, Field(pattern=r"^(cpu|mps|auto|cuda(:\d+)?)$")] = OMITTED
    attn_implementation: Name | dict[str, Name] | None = OMITTED
    quantization: Quantization | None = OMITTED
    revision: Name | None = OMITTED
    trust_remote_code: bool = OMITTED
    preprocessing: Preprocessing | None = OMITTED


class NamedModelSpec(ModelSpec):
    """A model entry whose ``name`` labels its results (and its predictions' file)."""

    name: Name


class FinetuneSpec(Strict):
    """``finetune_config``: the fields of ``training.finetune.FinetuneConfig`` a parameter file may set (``lora`` is
    notebook 05's own parameter)."""

    steps: PositiveInt = OMITTED
    lr: Annotated[float, Field(gt=0.0, le=1.0)] = OMITTED
    batch: PositiveInt = OMITTED
    accumulate: PositiveInt = OMITTED
    warmup_ratio: Fraction = OMITTED
    weight_decay: Annotated[float, Field(ge=0.0)] = OMITTED
    clip: Annotated[float, Field(gt=0.0)] = OMITTED
    single_ratio: Fraction = OMITTED
    max_images: ImageCount = OMITTED
    train: Annotated[list[Name], Field(min_length=1)] = OMITTED
    checkpoint_every: PositiveInt = OMITTED
    seed: NonNegativeInt = OMITTED
    group_by_images: bool = OMITTED


MaxPerCell = PositiveInt | None
BatchSize = Annotated[int, Field(ge=1, le=4096)]


# --- 01 -------------------------------------------------------------------------------------------


class SceneSpec(Strict):
    """``scene``: the fields of ``data.scenes.SceneParams``; their joint rules are the dataclass's own."""

    image_size: Annotated[int, Field(ge=16, le=4096)] = OMITTED
    min_objects: NonNegativeInt = OMITTED
    max_objects: PositiveInt = OMITTED
    min_object_px: PositiveInt = OMITTED
    max_object_px: PositiveInt = OMITTED
    max_covered: Fraction = OMITTED
    background: Background = OMITTED
    categories: Annotated[list[Name], Field(min_length=1)] | None = OMITTED
    same_category_prob: Fraction = OMITTED
    placement_tries: PositiveInt = OMITTED
    scene_retries: PositiveInt = OMITTED

    @model_validator(mode="after")
    def _buildable(self) -> "SceneSpec":
        from mimic_utils.data.scenes import SceneParams

        SceneParams(**self.model_dump(exclude_unset=True))  # ValueError names every broken rule
        return self


class OpenImagesSpec(Strict):
    """``openimages``: the arguments of ``data.annotations.read_openimages``."""

    boxes_csv: Name
    class_descriptions_csv: Name
    hierarchy_json: Name
    image_dir: Name
    image_list_csv: Name | None = OMITTED
    include_group: bool = OMITTED
    include_depiction: bool = OMITTED
    classes: list[Name] | None = OMITTED
    sizes: dict[str, Pair] | None = OMITTED


class BenchmarkSpec(Strict):
    """``benchmark``: ``data.mimic_benchmark.BenchmarkPlan`` without its seed (notebook 01 passes ``seed``)."""

    per_value: PositiveInt = OMITTED
    answer_range: Pair = OMITTED
    images: Annotated[list[ImageCount], Field(min_length=1), Distinct] = OMITTED
    spread: Annotated[list[ImageCount], Distinct] = OMITTED
    spread_images: ImageCount = OMITTED
    spread_answer_range: Pair = OMITTED
    distractors: Annotated[list[Annotated[int, Field(ge=0, le=MAX_IMAGES - 1)]], Distinct] = OMITTED
    k: Annotated[list[PositiveInt], Distinct] = OMITTED
    k_images: Annotated[list[ImageCount], Distinct] = OMITTED
    k_answer_range: Pair = OMITTED
    blank: Annotated[list[ImageCount], Distinct] = OMITTED

    @model_validator(mode="after")
    def _plan(self) -> "BenchmarkSpec":
        if self.answer_range is not None and not 1 <= self.answer_range[0] <= self.answer_range[1]:
            raise ValueError(f"answer_range {self.answer_range} must satisfy 1 <= low <= high")
        from mimic_utils.data.mimic_benchmark import BenchmarkPlan

        BenchmarkPlan(**self.model_dump(exclude_unset=True))  # the spread sweep's own rules (check_spread)
        return self


class TrainMixSpec(Strict):
    """``train_mix``: ``data.traindata.TrainMix`` without its seed."""

    mimic: NonNegativeInt = OMITTED
    minor: NonNegativeInt = OMITTED
    single: NonNegativeInt = OMITTED
    min_images: ImageCount = OMITTED
    max_images: ImageCount = OMITTED
    max_count: PositiveInt = OMITTED
    #: the organism's ov-stage data (data.traindata.ov_questions): count, images per sample, family weights
    ov: NonNegativeInt = OMITTED
    ov_images: Pair = OMITTED
    ov_weights: dict[str, NonNegativeInt] | None = OMITTED  # names checked by TrainMix against OV_FAMILIES
    ov_image_labels: Fraction = OMITTED  # share asked with "Image k: " before each image
    ov_echo: bool = OMITTED  # which-image answers as "dog 3", as the ov stage's echo
    ov_echo_count: bool = OMITTED  # count-in-image-i answers as "dog 3 2", as the ov stage's echo_count

    @model_validator(mode="after")
    def _mix(self) -> "TrainMixSpec":
        from mimic_utils.data.traindata import TrainMix

        TrainMix(**self.model_dump(exclude_unset=True))
        return self


class DataBuild(Strict):
    """Notebook 01."""

    seed: NonNegativeInt
    scene: SceneSpec
    coco_images: PositiveInt
    openimages_images: PositiveInt
    coco_json: Name | None
    coco_image_dir: Name | None
    openimages: OpenImagesSpec | None
    include_crowd: bool
    min_area_frac: Annotated[float, Field(ge=0.0, lt=1.0)]
    benchmark: BenchmarkSpec
    train_mix: TrainMixSpec
    export_hf: bool

    @model_validator(mode="after")
    def _real_data_together(self) -> "DataBuild":
        if (self.coco_json is None) != (self.openimages is None):
            raise ValueError("coco_json and openimages go together: both given (real COCO and OpenImages "
                             "files) or both null (the embedded scene world, which replaces openimages)")
        return self


# --- 02 -------------------------------------------------------------------------------------------


def _distinct_names(models: list[NamedModelSpec]) -> list[NamedModelSpec]:
    _unique([m.name for m in models])  # a name labels a model's results and its predictions' file
    return models


def _with_control(factors: list[int]) -> list[int]:
    if 1 not in factors:
        raise ValueError("must include 1: every pooling gain is measured against the unpooled model (r = 1) "
                         "on the same questions")
    return factors


class ZeroShotDiagnosis(Strict):
    """Notebook 02."""

    models_under_study: Annotated[list[NamedModelSpec], Field(min_length=1), AfterValidator(_distinct_names)]
    batch_size: BatchSize
    pool_factors: Annotated[list[PositiveInt], Field(min_length=1), Distinct, AfterValidator(_with_control)]
    pool_n_images: Annotated[list[ImageCount], Field(min_length=1), Distinct]
    max_per_cell: MaxPerCell
    answer_n_images: Annotated[list[ImageCount], Field(min_length=1), Distinct]


# --- 03 -------------------------------------------------------------------------------------------


class AttentionAnalysis(Strict):
    """Notebook 03."""

    model: NamedModelSpec
    n_samples: PositiveInt
    n_images: Annotated[list[MultiImageCount], Field(min_length=1), Distinct]
    batch_size: BatchSize
    low_cross_threshold: Annotated[float, Field(gt=0.0, le=1.0)]


# --- 04 -------------------------------------------------------------------------------------------


class HubDataset(Strict):
    """One ``hub_datasets`` entry (``data.traindata.HUB_KEYS``), in the Mantis-Instruct schema."""

    name: Name
    config: Name | None = OMITTED
    split: Name = OMITTED
    limit: PositiveInt | None = OMITTED
    revision: Name | None = OMITTED
    image_root: Name | None = OMITTED


class DataCentricFinetune(Strict):
    """Notebook 04."""

    base_model: NamedModelSpec
    compared_with: NamedModelSpec | None
    finetune_config: FinetuneSpec
    hub_datasets: list[HubDataset]
    max_per_cell: MaxPerCell
    batch_size: BatchSize


# --- 05 -------------------------------------------------------------------------------------------


class LoraSpec(Strict):
    """``lora``: the arguments of ``training.finetune.apply_lora``."""

    r: Annotated[int, Field(ge=1, le=4096)] = OMITTED
    alpha: Annotated[float, Field(gt=0.0)] = OMITTED
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = OMITTED


CLAIM_PAIR = ("no mask", "late")  # notebook 05's CLAIM_PAIR: the variants claim 8 compares


def _with_claim_pair(ablation: dict) -> dict:
    missing = [name for name in CLAIM_PAIR if name not in ablation]
    if missing:
        raise ValueError(f"lacks the variant(s) {missing}: claim 8 compares {list(CLAIM_PAIR)}, trained with every seed")
    return ablation


def _with_images(experiments: list[str]) -> list[str]:
    if "images" not in experiments:
        raise ValueError("must include 'images': the images sweep gives the MIMIC average over tasks")
    return experiments


class MaskedFinetune(Strict):
    """Notebook 05."""

    base_model: NamedModelSpec
    data_centric_model: NamedModelSpec
    quantize_4bit: bool
    lora: LoraSpec
    finetune_config: FinetuneSpec
    ablation: Annotated[dict[Name, LayerSpec], AfterValidator(_with_claim_pair)]
    seeds: Annotated[list[NonNegativeInt], Field(min_length=1), Distinct]
    from_data_centric: LayerSpec
    experiments: Annotated[list[Experiment], Field(min_length=1), Distinct, AfterValidator(_with_images)]
    max_per_cell: MaxPerCell
    batch_size: BatchSize
    attention_batch_size: BatchSize
    compute_images: Annotated[list[ImageCount], Field(min_length=1), Distinct]


# --- 06 -------------------------------------------------------------------------------------------


class SceneBenchmarkSpec(Strict):
    """``scene_benchmark``: the arguments of ``data.scene_ood.write_scene_muirbench`` (``{}``: none)."""

    n_source_images: PositiveInt = OMITTED
    per_task: PositiveInt = OMITTED
    n_images: Annotated[list[MultiImageCount], Field(min_length=1), Distinct] = OMITTED
    seed: NonNegativeInt = OMITTED


class PublicBenchmarkOptions(Strict):
    """One ``public_benchmarks`` entry's options (``evaluation.external_benchmarks.load_benchmark``)."""

    source: Name | None = OMITTED
    split: Name | None = OMITTED
    revision: Name | None = OMITTED
    limit: PositiveInt | None = OMITTED
    image_root: Name | None = OMITTED


class CrossBenchmarkEval(Strict):
    """Notebook 06."""

    models_compared: Annotated[dict[Name, ModelSpec], Field(min_length=1)]
    mimic_max_per_cell: MaxPerCell
    scene_benchmark: SceneBenchmarkSpec | None
    public_benchmarks: dict[PublicBenchmark, PublicBenchmarkOptions | None]
    skip_missing: bool
    batch_size: BatchSize


#: Notebook stem → the schema of its parameter file. A notebook without one gets only the key check.
SCHEMAS: dict[str, type[Strict]] = {
    "01_data_build": DataBuild,
    "02_zero_shot_diagnosis": ZeroShotDiagnosis,
    "03_attention_analysis": AttentionAnalysis,
    "04_data_centric_finetune": DataCentricFinetune,
    "05_masked_qlora_finetune": MaskedFinetune,
    "06_cross_benchmark_eval": CrossBenchmarkEval,
}


# --- checking and messages -------------------------------------------------------------------------


def check_parameters(stem: str, values: Mapping[str, Any], where: str | Path,
                     defaults: Mapping[str, Any] | None = None) -> None:
    """Validate what notebook ``stem`` will run with: its ``parameters`` cell's ``defaults`` overridden by
    the file's ``values``. :class:`ParameterValueError` lists every problem, one line each,
    ``<file>: <key path> = <value>: <what is allowed>`` (a bad default names the notebook's cell instead).
    A notebook without a schema passes (the runner still refuses keys its cell does not declare)."""
    schema = SCHEMAS.get(stem)
    if schema is None:
        return
    merged = {**(defaults or {}), **values}
    try:
        schema.model_validate(merged)
    except ValidationError as err:
        lines = []
        for key, line in problems(err, merged, schema):
            origin = where if key in values or key is None else f"the parameters cell of {stem}.ipynb"
            lines.append(f"{origin}: {line}")
        raise ParameterValueError("\n".join(lines)) from None


def problems(err: ValidationError, values: Mapping[str, Any], schema: type[BaseModel]) -> list[tuple[str | None, str]]:
    """``(top-level key, line)`` per offending key: its path in the file, its value, what is allowed.

    Pydantic reports a union's members separately (``int`` and ``None`` of ``max_per_cell``) and tags them
    in the location; the path kept is the part that exists in the file, and a key's messages are joined.
    """
    merged: dict[str, list[str]] = {}
    shown: dict[str, str] = {}
    tops: dict[str, str | None] = {}
    for error in err.errors(include_url=False):
        path, value, found = _located(values, error["loc"])
        label = _label(path) or "(the file as a whole)"
        tops[label] = path[0] if path else None
        if error["type"] == "extra_forbidden":
            allowed = _allowed_keys(schema, path[:-1])
            message = "unknown key" + (f"; allowed: {', '.join(allowed)}" if allowed else "")
        elif error["type"] == "missing":
            message = "required key is missing"
        else:
            message = error["msg"].removeprefix("Value error, ")
        if found and path and error["type"] != "missing":
            shown.setdefault(label, _short(value))
        if message not in merged.setdefault(label, []):
            merged[label].append(message)
    return [(tops[label], f"{label}{f' = {shown[label]}' if label in shown else ''}: {'; or '.join(messages)}")
            for label, messages in merged.items()]


def _located(values: Any, loc: tuple) -> tuple[list, Any, bool]:
    """Walk ``loc`` through the file's values, skipping pydantic's union tags (``int``, ``list[int]``,
    ``function-after[...]``): the path that exists in the file, the value there, and whether it exists."""
    path, current, found = [], values, True
    for step in loc:
        if step == "[key]" and path:  # a mapping's key was refused: show the key, not its value
            current = path[-1]
        elif isinstance(current, Mapping) and step in current:
            path.append(step)
            current = current[step]
        elif isinstance(current, list) and isinstance(step, int) and 0 <= step < len(current):
            path.append(step)
            current = current[step]
        elif isinstance(current, Mapping) and isinstance(step, str) and not _is_tag(step):
            path.append(step)  # a missing key, or a mapping's key check ("[key]")
            found = False
            break
    return path, current, found


def _is_tag(step: str) -> bool:
    return any(mark in step for mark in ("[", "]")) or step in {"int", "str", "float", "bool", "none", "list", "dict"}


def _label(path: list) -> str:
    text = ""
    for step in path:
        text += f"[{step}]" if isinstance(step, int) else (f".{step}" if text else str(step))
    return text


def _short(value: Any, limit: int = 100) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _allowed_keys(schema: type[BaseModel], path: list) -> list[str]:
    """The keys a mapping at ``path`` may hold (the fields of the schema class found there)."""
    model = _model_at(schema, path)
    return list(model.model_fields) if model is not None else []


def _model_at(annotation: Any, path: list) -> type[BaseModel] | None:
    """The schema class reached by following ``path`` (keys, list indices) from ``annotation``."""
    current = annotation
    for step in path:
        current = _step(current, step)
        if current is None:
            return None
    return _as_model(current)


def _step(annotation: Any, step: Any) -> Any:
    model = _as_model(annotation)
    if model is not None:
        field = model.model_fields.get(step) if isinstance(step, str) else None
        return field.annotation if field is not None else None
    for member in _members(annotation):
        origin = get_origin(member)
        if origin is list and isinstance(step, int):
            return get_args(member)[0]
        if origin is dict:
            return get_args(member)[1]
    return None


def _members(annotation: Any) -> list:
    """An annotation's alternatives, ``Annotated`` and unions unwrapped."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return _members(get_args(annotation)[0])
    if origin is not None and origin not in (list, dict) and get_args(annotation) and origin is not Literal:
        return [m for arg in get_args(annotation) for m in _members(arg)]
    return [annotation]


def _as_model(annotation: Any) -> type[BaseModel] | None:
    for member in _members(annotation):
        if isinstance(member, type) and issubclass(member, BaseModel):
            return member
    return None


__all__ = ["SCHEMAS", "ParameterValueError", "check_parameters", "problems"]
