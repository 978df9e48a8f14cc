"""Focus runs (mimic_utils.organism.focus): phases parsed, configuration built, records written."""

import json
from dataclasses import replace

import pytest

from mimic_utils.organism.recipe import Conversations

from mimic_utils.organism import focus
from mimic_utils.organism import ov as organism_ov


def test_phases_are_parsed_in_order_with_one_count_or_a_range():
    assert focus.parse_phases("2:600, 3:300,4-10:600") == [(2, 2, 600), (3, 3, 300), (4, 10, 600)]
    assert focus.parse_images("4-10") == [4, 10] and focus.parse_images("3") == [3, 3]


@pytest.mark.parametrize("text, message", [
    ("2", "not IMAGES:STEPS"), ("2:0", "STEPS >= 1"), ("3-2:10", "1 <= LOW <= HIGH <= 10"),
    ("0:10", "1 <= LOW"), ("2-11:5", "HIGH <= 10"), ("a:5", "'a:5'")])
def test_a_bad_phase_is_refused_naming_it(text, message):
    with pytest.raises(ValueError, match=rf"--phases: .*{message}"):
        focus.parse_phases(text)


def test_the_configuration_keeps_the_families_and_grows_all_phases_but_the_last():
    config = focus.focus_config(["which_image"], [(2, 2, 600), (3, 3, 300), (4, 10, 500)], [2, 10], 5e-4, True)
    assert config.weights == {"which_image": 1} and config.echo
    assert config.phases() == [("ov-grow-2-2", [2, 2], 600, 5e-4, 20000), ("ov-grow-3-3", [3, 3], 300, 5e-4, 20000),
                               ("ov", [4, 10], 500, 5e-4, 20000)]
    assert config.eval_images == [2, 10] and config.warm_steps == 0 and config.curves_by_images
    single = focus.focus_config(["which_image", "image_count"], [(4, 10, 50)], [4, 10], 1e-3, False)
    assert single.phases() == [("ov", [4, 10], 50, 1e-3, 20000)] and set(single.ov_weights()) == {"which_image", "image_count"}
    with pytest.raises(ValueError, match="total_count"):
        focus.focus_config(["total_count"], [(2, 2, 10)], [2, 10], 1e-3, False)


def test_the_curve_keeps_phase_step_and_teacher_forced_scores_of_evaluated_steps():
    log = [{"stage": "ov-grow-2-2", "step": 1, "loss": 2.0},
           {"stage": "ov-grow-2-2", "step": 2, "loss": 1.5, "tf_which_image": 0.6, "gen_format_1img": 1.0}]
    assert focus.curve(log) == [{"stage": "ov-grow-2-2", "step": 2, "tf_which_image": 0.6}]


def test_each_image_count_is_read_against_its_own_blind_baseline():
    """Two images: the constant "image 1" is right on 3 of 4; four images: on 1 of 4 — the pooled blind
    baseline would hide that."""
    def row(n, gt, score):
        return {"family": "which_image", "knobs": {"n_images": n}, "gt": gt, "output": "image 1", "score": score}
    rows = ([row(2, "image 1", 1.0)] * 3 + [row(2, "image 2", 0.0)]
            + [row(4, f"image {k}", float(k == 1)) for k in (1, 2, 3, 4)] + [{**row(2, "x", 1.0), "family": "image_total"}])
    cells = organism_ov.per_image_scores(rows)["which_image"]["per_image_count"]
    assert list(cells) == ["2", "4"]
    assert (cells["2"]["n"], cells["2"]["score"], cells["2"]["blind"]) == (4, 0.75, 0.75)
    assert (cells["4"]["n"], cells["4"]["score"], cells["4"]["blind"]) == (4, 0.25, 0.25)


def test_the_command_writes_its_record_and_curves_and_refuses_bad_input(tmp_path, monkeypatch, capsys):
    models = tmp_path / "models"
    (models / "si").mkdir(parents=True)
    argv = ["--name", "grown", "--phases", "2:3,4-6:2", "--eval-images", "4-6", "--echo", "--models", str(models)]
    with pytest.raises(SystemExit):
        focus.main(argv)  # no si weights yet
    assert "no si checkpoint" in capsys.readouterr().err
    (models / "si" / "model.safetensors").write_bytes(b"w")
    seen = {}

    def fake_run(config, si_dir, work, progress=True):
        seen.update(config=config, si=si_dir, work=work)
        work.mkdir(parents=True)
        (work / "curves.png").write_bytes(b"png")
        cell = {"n": 4, "score": 0.5, "lo": 0.2, "hi": 0.8, "blind": 0.25}
        total = {**cell, "score": 1.0, "blind": 1.0}  # one answer per count: its per-count blind is always 1
        return {"curve": [], "generated": {"which_image": {**cell, "per_image_count": {"4": cell}},
                                           "image_total": {**cell, "per_image_count": {"4": total}}}}

    monkeypatch.setattr(focus, "run", fake_run)
    assert focus.main(argv) == 0
    record = json.loads((models / "tried" / "focus" / "grown.json").read_text())
    assert record["command"].startswith("python -m mimic_utils.organism.focus --name grown --phases 2:3,4-6:2")
    assert (models / "tried" / "focus" / "grown_curves.png").read_bytes() == b"png"
    assert seen["work"] == models / "focus" / "grown" and seen["config"].grow == [[2, 2, 3]]
    assert seen["config"].images == [4, 6] and seen["config"].echo
    out = capsys.readouterr().out
    assert "which_image 0.500 [0.200, 0.800] (blind 0.250); per image count 4: 0.50 (blind 0.25)" in out
    assert "image_total 0.500 [0.200, 0.800] (blind 0.250); per image count 4: 1.00\n" in out
    for bad, message in ((["--phases", "2:0"], "STEPS >= 1"), (["--eval-images", "0-3"], "--eval-images"),
                         (["--families", "common"], "common"), (["--name", "a/b"], "--name names a file"),
                         (["--lr", "0"], "--lr must be > 0")):
        with pytest.raises(SystemExit):
            focus.main([*argv, *bad])
        assert message in capsys.readouterr().err


def test_held_out_curves_can_be_read_per_image_count():
    convs = Conversations([[1], [2], [3]], [[1], [2], [3]], [[0, 1], [0, 1, 2], [0]], ["which_image", "which_image", "counting"],
                          ["a", "b", "c"])
    assert organism_ov.by_image_count(convs).family == ["which_image_2img", "which_image_3img", "counting"]
    assert organism_ov.by_image_count(convs).ids == convs.ids


def test_only_the_trained_per_image_families_are_asked_held_out(tmp_path):
    from tests.unit.test_organism import SMALL

    config = focus.focus_config(["which_image"], [(2, 3, 10)], [2, 3], 1e-3, False)
    records = organism_ov.heldout_ov_records(SMALL, replace(config, eval_questions=12), tmp_path, progress=False)
    assert len(records) == 12 and {r["family"] for r in records} == {"which_image"}
    assert {len(r["images"]) for r in records} <= {2, 3}


def test_per_image_scores_read_the_ov_stages_own_exact_scorer():
    assert organism_ov.per_image_scores([]) == {}
    assert organism_ov.exact_scorer("which_image", "Image 2.", "image 2") == {"score": 1.0}


def test_naming_answers_are_split_by_how_many_images_hold_a_single_class():
    """The shortcut check: a sample whose only single-class image is the named one against a sample with
    several; other families are left out."""
    classes = {"a": frozenset({"dog"}), "b": frozenset({"cat", "bus"}), "c": frozenset({"car"})}
    records = [{"id": "q1", "image_ids": ["a", "b"]}, {"id": "q2", "image_ids": ["a", "c"]},
               {"id": "q3", "image_ids": ["a", "c", "b"]}, {"id": "q4", "image_ids": ["b", "a"]}]
    rows = [{"id": "q1", "family": "naming_in_image", "score": 1.0},
            {"id": "q2", "family": "naming_in_image", "score": 0.0},
            {"id": "q3", "family": "naming_in_image", "score": 1.0},
            {"id": "q4", "family": "image_count", "score": 0.0}]
    assert focus.single_class_split(records, rows, classes) == {
        "one single-class image": {"n": 1, "score": 1.0}, "several single-class images": {"n": 2, "score": 0.5}}
    assert focus.single_class_split(records, rows[3:], classes)["one single-class image"] == {"n": 0, "score": None}


def test_the_single_class_check_needs_an_earlier_run_and_a_training_run_needs_phases(tmp_path, capsys):
    models = tmp_path / "models"
    with pytest.raises(SystemExit):
        focus.main(["--name", "missing", "--check-single-class", "--models", str(models)])
    assert "--check-single-class: needs" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        focus.main(["--name", "grown", "--models", str(models)])
    assert "--phases is needed" in capsys.readouterr().err
