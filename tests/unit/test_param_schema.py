"""Parameter values are checked before anything runs: types, ranges and choices, with file, key and value named."""

from __future__ import annotations

import dataclasses
import inspect
import shutil
from pathlib import Path
from typing import get_args

import pytest
import yaml

from mimic_utils import param_schema, runner
from mimic_utils.artifacts import repo_root

ROOT = repo_root(Path(__file__).parent)
NOTEBOOKS = {nb.stem: nb for nb in runner.discover("cpu", ROOT)}


def with_value(stem: str, path: tuple, value, tmp_path: Path, profile: str = "cpu") -> runner.Notebook:
    """Notebook ``stem`` paired with a temporary copy of its ``profile`` parameter file, one value changed."""
    nb = NOTEBOOKS[stem]
    values = yaml.safe_load((ROOT / "params" / profile / f"{stem}.yaml").read_text(encoding="utf-8"))
    target = values
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    copy = tmp_path / f"{stem}.yaml"
    copy.write_text(yaml.safe_dump(values, sort_keys=False), encoding="utf-8")
    return runner.Notebook(stem, nb.path, copy)


def refused(nb: runner.Notebook) -> str:
    with pytest.raises(runner.ParameterError) as caught:
        runner.load_parameters(nb, "cpu")
    message = str(caught.value)
    assert str(nb.params_file) in message  # the file is named
    return message


#: (notebook, key path, bad value, what the message must say): a wrong type, a value out of range and an
#: unknown choice in every notebook's file
BAD_VALUES = [
    ("01_data_build", ("seed",), "0", "seed = '0': Input should be a valid integer"),
    ("01_data_build", ("benchmark", "per_value"), -5, "benchmark.per_value = -5: Input should be greater than or equal to 1"),
    ("01_data_build", ("scene", "background"), "moon", "scene.background = 'moon': Input should be 'studio', 'landscape' or 'texture'"),
    ("01_data_build", ("train_mix", "ov_image_labels"), 1.5,
     "train_mix.ov_image_labels = 1.5: Input should be less than or equal to 1"),
    ("01_data_build", ("train_mix", "ov_echo"), "yes", "train_mix.ov_echo = 'yes': Input should be a valid boolean"),
    ("02_zero_shot_diagnosis", ("pool_factors",), [1, "two", 4], "pool_factors[1] = 'two': Input should be a valid integer"),
    ("02_zero_shot_diagnosis", ("pool_n_images",), [1, 11], "pool_n_images[1] = 11: Input should be less than or equal to 10"),
    ("02_zero_shot_diagnosis", ("models_under_study", 0, "dtype"), "bf16",
     "models_under_study[0].dtype = 'bf16': Input should be 'auto', 'float32', 'bfloat16' or 'float16'"),
    ("03_attention_analysis", ("n_samples",), "64", "n_samples = '64': Input should be a valid integer"),
    ("03_attention_analysis", ("low_cross_threshold",), 1.5, "low_cross_threshold = 1.5: Input should be less than or equal to 1"),
    ("03_attention_analysis", ("model", "quantization"), "3bit", "model.quantization = '3bit': Input should be '4bit' or '8bit'"),
    ("04_data_centric_finetune", ("finetune_config", "lr"), "1e-3", "finetune_config.lr = '1e-3': Input should be a valid number"),
    ("04_data_centric_finetune", ("finetune_config", "warmup_ratio"), 1.5,
     "finetune_config.warmup_ratio = 1.5: Input should be less than or equal to 1"),
    ("04_data_centric_finetune", ("base_model", "family"), "llava",
     "base_model.family = 'llava': Input should be 'llava_onevision', 'qwen2_vl', 'qwen2_5_vl' or 'internvl'"),
    ("05_masked_qlora_finetune", ("quantize_4bit",), "true", "quantize_4bit = 'true': Input should be a valid boolean"),
    ("05_masked_qlora_finetune", ("lora", "dropout"), 1.0, "lora.dropout = 1.0: Input should be less than 1"),
    ("05_masked_qlora_finetune", ("finetune_config", "group_by_images"), "yes",
     "finetune_config.group_by_images = 'yes': Input should be a valid boolean"),
    ("05_masked_qlora_finetune", ("experiments",), ["images", "sprad"],
     "experiments[1] = 'sprad': Input should be 'images', 'spread', 'distractors', 'k' or 'blank'"),
    ("06_cross_benchmark_eval", ("skip_missing",), 1, "skip_missing = 1: Input should be a valid boolean"),
    ("06_cross_benchmark_eval", ("mimic_max_per_cell",), 0, "mimic_max_per_cell = 0: Input should be greater than or equal to 1"),
    ("06_cross_benchmark_eval", ("public_benchmarks",), {"muirbnch": {}},
     "public_benchmarks.muirbnch = 'muirbnch': Input should be 'muirbench', 'blink', 'nlvr2', 'mantis', 'mmiu' or 'qbench2'"),
]


@pytest.mark.parametrize("stem, path, value, expected", BAD_VALUES, ids=[f"{s[:2]}-{'.'.join(map(str, p))}" for s, p, *_ in BAD_VALUES])
def test_a_bad_value_is_refused_naming_file_key_value_and_what_is_allowed(tmp_path, stem, path, value, expected):
    assert expected in refused(with_value(stem, path, value, tmp_path))


def test_the_issues_examples_are_refused_by_runner_check_before_anything_runs(tmp_path):
    """``pool_factors: [1, "two", 4]`` and ``benchmark: {per_value: -5}`` used to pass ``--check``; the second
    failed only in notebook 01's cell 10, after 10,000 images were rendered, without naming file or key."""
    (tmp_path / "mimic_utils").mkdir()
    (tmp_path / "pyproject.toml").write_text("")
    shutil.copytree(ROOT / "notebooks", tmp_path / "notebooks", ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    shutil.copytree(ROOT / "params" / "smoke", tmp_path / "params" / "bad")
    params = tmp_path / "params" / "bad"
    first = yaml.safe_load((params / "01_data_build.yaml").read_text())
    (params / "01_data_build.yaml").write_text(yaml.safe_dump({**first, "benchmark": {"per_value": -5}}))
    second = yaml.safe_load((params / "02_zero_shot_diagnosis.yaml").read_text())
    (params / "02_zero_shot_diagnosis.yaml").write_text(yaml.safe_dump({**second, "pool_factors": [1, "two", 4]}))
    with pytest.raises(runner.ParameterError, match=r"01_data_build.yaml: benchmark.per_value = -5: .*greater than or equal to 1"):
        runner.run("bad", check=True, root=tmp_path)
    (params / "01_data_build.yaml").write_text(yaml.safe_dump(first))
    with pytest.raises(runner.ParameterError, match=r"02_zero_shot_diagnosis.yaml: pool_factors\[1\] = 'two': .*valid integer"):
        runner.run("bad", root=tmp_path)  # a real run checks first
    assert not (tmp_path / "outputs").exists()  # nothing ran


def test_every_problem_of_a_file_is_listed_once_with_unknown_keys_and_their_allowed_set(tmp_path):
    nb = with_value("02_zero_shot_diagnosis", ("max_per_cell",), "all", tmp_path)
    values = yaml.safe_load(nb.params_file.read_text())
    values["models_under_study"][0]["preprocesing"] = {}
    values["batch_size"] = 2.5
    nb.params_file.write_text(yaml.safe_dump(values))
    lines = refused(nb).splitlines()
    assert len(lines) == 3 and all(line.startswith(f"{nb.params_file}: ") for line in lines)
    assert any("max_per_cell = 'all': Input should be a valid integer" in line for line in lines)  # no union tag
    assert any("batch_size = 2.5: Input should be a valid integer" in line for line in lines)
    unknown = next(line for line in lines if "preprocesing" in line)
    assert "models_under_study[0].preprocesing = {}: unknown key; allowed: name, source, family" in unknown


def test_rules_spanning_keys_are_checked_by_the_packages_own_objects(tmp_path):
    spread = with_value("01_data_build", ("benchmark",), {"spread": [1, 5], "spread_images": 4}, tmp_path)
    assert "spread [1, 5] must lie in 1..spread_images" in refused(spread)  # mimic_benchmark.check_spread
    scene = with_value("01_data_build", ("scene",), {"image_size": 32, "max_object_px": 40}, tmp_path)
    assert "min_object_px <= max_object_px <= image_size" in refused(scene)  # scenes.SceneParams
    control = with_value("02_zero_shot_diagnosis", ("pool_factors",), [2, 4], tmp_path)
    assert "pool_factors = [2, 4]: must include 1" in refused(control)
    pair = with_value("05_masked_qlora_finetune", ("ablation",), {"no mask": "none", "late": "12-2x"}, tmp_path)
    assert "ablation.late = '12-2x': cannot read layer spec" in refused(pair)
    claim = with_value("05_masked_qlora_finetune", ("ablation",), {"late": "second_half"}, tmp_path)
    assert "lacks the variant(s) ['no mask']" in refused(claim)
    real = with_value("01_data_build", ("coco_json",), "coco.json", tmp_path)
    assert "coco_json and openimages go together" in refused(real)


def test_a_key_left_out_of_the_file_is_checked_with_the_cells_default(tmp_path):
    nb = with_value("03_attention_analysis", ("n_samples",), 8, tmp_path)
    values = yaml.safe_load(nb.params_file.read_text())
    del values["n_images"]
    nb.params_file.write_text(yaml.safe_dump(values))
    assert runner.load_parameters(nb, "cpu")["n_samples"] == 8
    with pytest.raises(param_schema.ParameterValueError, match=r"the parameters cell of 03_attention_analysis.ipynb: n_images"):
        param_schema.check_parameters("03_attention_analysis", values, "f.yaml", {"n_images": [1]})


@pytest.mark.parametrize("stem", sorted(NOTEBOOKS))
def test_each_schema_has_exactly_the_keys_of_its_notebooks_parameters_cell(stem):
    """Adding a parameter to a cell without its schema line (or the reverse) fails here."""
    declared = set(runner.declared_parameters(NOTEBOOKS[stem].path)) - set(runner.INJECTED)
    assert stem in param_schema.SCHEMAS, f"notebook {stem} has no schema in mimic_utils/param_schema.py"
    assert set(param_schema.SCHEMAS[stem].model_fields) == declared
    defaults = runner.cell_defaults(NOTEBOOKS[stem].path)
    assert set(defaults) == declared  # every default is a literal, so a left-out key is checked too
    param_schema.check_parameters(stem, {}, "cell", defaults)  # the cell's own values are valid


def test_every_committed_parameter_file_validates():
    for profile in ("smoke", "cpu", "paper"):
        for nb in runner.discover(profile, ROOT):
            runner.load_parameters(nb, profile)


def test_choices_and_key_sets_are_the_packages_own():
    from mimic_utils.data import annotations, mimic_benchmark, scene_ood, scenes, tasks, traindata
    from mimic_utils.data.mimic_benchmark import BenchmarkPlan
    from mimic_utils.evaluation import external_benchmarks, harness
    from mimic_utils.models import vlm
    from mimic_utils.training import finetune

    def keys(model) -> set[str]:
        return set(model.model_fields)

    def parameters(function, *dropped) -> set[str]:
        return set(inspect.signature(function).parameters) - set(dropped)

    ps = param_schema
    assert ps.MAX_IMAGES == tasks.MAX_IMAGES
    assert set(get_args(ps.Family)) == set(vlm.FAMILIES)
    assert set(get_args(ps.ImageBackend)) == set(vlm.IMAGE_BACKENDS)
    assert set(get_args(ps.Background)) == set(scenes.BACKGROUNDS)
    assert set(get_args(ps.Experiment)) == set(mimic_benchmark.SWEEPS)
    assert set(get_args(ps.PublicBenchmark)) == set(external_benchmarks.BENCHMARKS)
    assert keys(ps.ModelSpec) == harness.MODEL_SPEC_KEYS
    assert keys(ps.Preprocessing) == {k for ks in vlm.PREPROCESSING_KEYS.values() for k in ks} | {"image_backend"}
    assert keys(ps.FinetuneSpec) == {f.name for f in dataclasses.fields(finetune.FinetuneConfig)} - {"lora"}
    assert keys(ps.LoraSpec) == parameters(finetune.apply_lora, "adapter", "kbit")
    assert keys(ps.HubDataset) == traindata.HUB_KEYS
    assert keys(ps.SceneSpec) == {f.name for f in dataclasses.fields(scenes.SceneParams)}
    assert keys(ps.BenchmarkSpec) == {f.name for f in dataclasses.fields(BenchmarkPlan)} - {"seed"}
    assert keys(ps.TrainMixSpec) == {f.name for f in dataclasses.fields(traindata.TrainMix)} - {"seed"}
    assert keys(ps.OpenImagesSpec) == parameters(annotations.read_openimages)
    assert keys(ps.SceneBenchmarkSpec) == parameters(scene_ood.write_scene_muirbench, "out_dir", "progress")
    assert keys(ps.PublicBenchmarkOptions) == parameters(external_benchmarks.load_benchmark, "name", "skip_missing")
