"""The lora_steps benchmark (mimic_utils.bench.convergence): its loss windows and its registration."""

import pytest

from mimic_utils.bench import convergence, perf


def test_window_means_average_consecutive_slices_the_last_one_shorter():
    assert convergence.window_means([1.0, 3.0, 2.0, 4.0, 6.0], window=2) == [2.0, 3.0, 6.0]
    assert convergence.window_means([], window=20) == []


def test_lora_steps_is_a_registered_benchmark_with_the_notebooks_profile_and_extra_steps():
    bench = perf.benchmarks["lora_steps"]
    assert bench.run is convergence.bench_lora_steps
    import argparse
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    args = parser.parse_args(["--steps", "120", "240"])
    assert (args.profile, args.steps, args.seed, args.variant, args.lr) == ("cpu", [120, 240], 0, "no mask", None)
    assert convergence.run_folder("no mask", 60, 0) == "steps60_seed0"  # where the first results were cached
    assert convergence.run_folder("late", 60, 0) == "late_steps60_seed0"
    # another learning rate is another run: its own folder and result file, the notebook's keep their names
    assert convergence.run_folder("no mask", 180, 0, 0.003) == "steps180_seed0_lr0.003"
    assert convergence.result_name("no mask") == "lora_steps"
    assert convergence.result_name("late", 0.003) == "lora_steps_late_lr0.003"
    # batches of one number of images too: their own result file, compared with the mixed run of the same steps
    assert convergence.result_name("no mask", grouped=True) == "lora_steps_grouped"
    assert parser.parse_args(["--group-by-images"]).group_by_images and not args.group_by_images


def test_a_learning_rate_that_is_not_positive_is_refused_before_a_model_loads(monkeypatch):
    import argparse
    from mimic_utils.evaluation import harness

    monkeypatch.setattr(harness, "load_under_study", lambda *_: pytest.fail("a model was loaded"))
    args = argparse.Namespace(profile="cpu", steps=[10_000], seed=0, threads=1, variant="no mask", lr=-0.01)
    with pytest.raises(ValueError, match=r"--lr must be positive, got -0.01"):
        convergence.bench_lora_steps(args)
    args.lr = float("nan")
    with pytest.raises(ValueError, match=r"--lr must be positive, got nan"):
        convergence.bench_lora_steps(args)


def test_step_counts_no_longer_than_the_notebooks_are_refused_naming_the_file_before_a_model_loads(monkeypatch):
    """Whether the notebook's steps converged needs a longer run; without one the gain would compare the
    notebook's run with itself."""
    import argparse
    from mimic_utils import runner
    from mimic_utils.evaluation import harness

    monkeypatch.setattr(harness, "load_under_study", lambda *_: pytest.fail("a model was loaded"))
    notebook = next(nb for nb in runner.discover("cpu") if nb.stem == convergence.NOTEBOOK)
    notebook_steps = runner.load_parameters(notebook, "cpu")["finetune_config"]["steps"]
    args = argparse.Namespace(profile="cpu", steps=[notebook_steps // 2, notebook_steps], seed=0, threads=1,
                              variant="no mask", lr=None)
    with pytest.raises(ValueError, match=r"05_masked_qlora_finetune\.yaml, finetune_config\.steps"):
        convergence.bench_lora_steps(args)


def test_cached_runs_are_kept_apart_by_the_notebooks_settings_but_not_its_steps():
    from mimic_utils import runner

    params = runner.load_parameters(next(nb for nb in runner.discover("cpu") if nb.stem == convergence.NOTEBOOK), "cpu")
    same = convergence.settings_digest({**params, "finetune_config": {**params["finetune_config"], "steps": 7}})
    other = convergence.settings_digest({**params, "lora": {**params["lora"], "dropout": 0.05 + params["lora"]["dropout"]}})
    base = convergence.settings_digest({**params, "base_model": {**params["base_model"], "source": "elsewhere"}})
    rate = convergence.settings_digest({**params, "finetune_config": {**params["finetune_config"], "lr": 0.5}})
    layers = convergence.settings_digest({**params, "ablation": {**params["ablation"], "late": "first_half"}})
    quantized = convergence.settings_digest(params, base={**params["base_model"], "quantization": "4bit"})
    from mimic_utils.training.finetune import data_digest

    data = convergence.settings_digest(params, data=data_digest([{"id": "a"}, {"id": "b"}]))
    assert convergence.settings_digest(params) == same
    assert len({convergence.settings_digest(params), other, base, rate, layers, quantized, data}) == 7
    assert data_digest([{"id": "b"}, {"id": "a"}]) == data_digest([{"id": "a"}, {"id": "b"}])


def test_a_variant_notebook_05_does_not_define_is_refused_naming_the_file_before_a_model_loads(monkeypatch):
    import argparse
    from mimic_utils.evaluation import harness

    monkeypatch.setattr(harness, "load_under_study", lambda *_: pytest.fail("a model was loaded"))
    for variant in ("middle", "auto"):
        args = argparse.Namespace(profile="cpu", steps=[120], seed=0, threads=1, variant=variant, lr=None)
        with pytest.raises(ValueError, match=rf"05_masked_qlora_finetune\.yaml: ablation has no variant '{variant}'"):
            convergence.bench_lora_steps(args)


def test_a_bad_notebook_05_parameter_is_refused_naming_the_file_before_anything_trains(tmp_path, monkeypatch):
    """The benchmark reads notebook 05's validated parameters: a bad value stops it at once, naming the file
    and key, before a model is loaded."""
    import argparse
    import yaml
    from mimic_utils import runner
    from mimic_utils.evaluation import harness

    real = runner.discover("cpu")
    params = tmp_path / "05_masked_qlora_finetune.yaml"
    values = yaml.safe_load(next(nb for nb in real if nb.stem == convergence.NOTEBOOK).params_file.read_text())
    values["finetune_config"]["steps"] = "sixty"
    params.write_text(yaml.safe_dump(values))
    monkeypatch.setattr(runner, "discover", lambda *_: [runner.Notebook(nb.stem, nb.path, params) if nb.stem ==
                                                        convergence.NOTEBOOK else nb for nb in real])
    monkeypatch.setattr(harness, "load_under_study", lambda *_: pytest.fail("a model was loaded"))
    args = argparse.Namespace(profile="cpu", steps=[120], seed=0, threads=1, variant="no mask", lr=None)
    with pytest.raises(runner.ParameterError, match=r"05_masked_qlora_finetune\.yaml.*steps"):
        convergence.bench_lora_steps(args)


def test_a_benchmark_names_its_result_file_through_result_name_in_its_figures(tmp_path, monkeypatch):
    """A benchmark writing several result files (lora_steps per variant) names each with ``result_name``,
    which goes into the file name, not into the figures."""
    import json

    def fake(args) -> dict:
        """A benchmark of one figure."""
        return {"result_name": "lora_steps_late", "score": 0.5}

    monkeypatch.setitem(perf.benchmarks, "fake", perf.Benchmark(fake))
    path = perf.main(["--out-dir", str(tmp_path), "fake"])
    assert path == tmp_path / "lora_steps_late.json"
    written = json.loads(path.read_text())
    assert written["figures"] == {"score": 0.5} and written["name"] == "lora_steps_late"


def test_lora_dropout_is_a_registered_benchmark_and_refuses_bad_options_before_a_model_loads(monkeypatch):
    import argparse
    from mimic_utils.evaluation import harness

    assert perf.benchmarks["lora_dropout"].run is convergence.bench_lora_dropout
    monkeypatch.setattr(harness, "load_under_study", lambda *_: pytest.fail("a model was loaded"))
    for steps, dropout in ((0, 0.05), (6, 0.0), (6, 1.5)):
        args = argparse.Namespace(profile="cpu", steps=steps, dropout=dropout, seed=0, threads=1)
        with pytest.raises(ValueError, match=r"--steps must be at least 1 and --dropout in \(0, 1\)"):
            convergence.bench_lora_dropout(args)


def test_lora_grouped_is_a_registered_benchmark_and_refuses_bad_options_before_a_model_loads(monkeypatch):
    import argparse
    from mimic_utils.evaluation import harness

    assert perf.benchmarks["lora_grouped"].run is convergence.bench_lora_grouped
    monkeypatch.setattr(harness, "load_under_study", lambda *_: pytest.fail("a model was loaded"))
    with pytest.raises(ValueError, match=r"--steps must be at least 1, got 0"):
        convergence.bench_lora_grouped(argparse.Namespace(profile="cpu", steps=0, seed=0, threads=1))


def test_regrouped_batches_hold_the_same_rows_sorted_by_number_of_images():
    rows = [{"id": str(i), "images": ["x"] * n} for i, n in enumerate([3, 1, 10, 1, 3, 2, 10, 1])]
    batches = [rows[:4], rows[4:]]
    again = convergence.regrouped(batches)
    assert [len(b) for b in again] == [4, 4]
    assert sorted(r["id"] for b in again for r in b) == sorted(r["id"] for r in rows)
    assert [[len(r["images"]) for r in b] for b in again] == [[1, 1, 1, 2], [3, 3, 10, 10]]
