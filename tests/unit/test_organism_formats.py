"""The ov stage's format checks (mimic_utils.organism.formats): MIMIC's answer formats at 1 image and over
several held-out images."""
import json

import pytest

from mimic_utils.data import tasks
from mimic_utils.organism import card, compare, formats
from mimic_utils.organism import ov as organism_ov
from mimic_utils.organism import recipe


@pytest.fixture(scope="module")
def pool(organism_pool):
    return organism_pool


def test_format_kept_tells_mimic_answers_from_image_references_and_yes_no():
    categories = ["dog", "cat"]
    assert formats.format_kept("counting", "3", categories)
    assert not formats.format_kept("counting", "image 3", categories)
    assert formats.format_kept("listing", "dog, cat", categories) and formats.format_kept("listing", "none", categories)
    assert not formats.format_kept("listing", "1, 3, 4", categories)
    assert formats.format_kept("naming", "dog", categories) and not formats.format_kept("naming", "2", categories)
    # odd-one and common answer one category name: the stage's yes/no and image numbers are not that format
    for family in ("oddone", "common"):
        assert formats.format_kept(family, "cat.", categories)
        assert not formats.format_kept(family, "no", categories)
        assert not formats.format_kept(family, "image 2", categories)
        assert not formats.format_kept(family, "dog, cat", categories)


def test_multi_image_questions_are_mimics_four_questions_over_n_held_out_images(pool):
    records = formats.multi_image_questions(pool, 10, seed=3, n_images=4)
    assert [r["family"] for r in records].count("counting") == 3 and [r["family"] for r in records].count("oddone") == 2
    assert {r["family"] for r in records} == set(tasks.FAMILIES)
    assert all(len(r["image_ids"]) == 4 and r["knobs"]["n_images"] == 4 for r in records)
    assert all(r["task"] == "counting_unbalanced" for r in records if r["family"] == "counting")
    assert len({r["id"] for r in records}) == 10
    for r in records:  # the benchmark's own wording and ground truth
        assert r["question"] == tasks.question_for(r["family"], r["targets"])
    assert formats.multi_image_questions(pool, 10, seed=3, n_images=4) == records  # drawn the same again


def test_a_pool_too_small_for_the_multi_image_check_is_refused_naming_the_key():
    from mimic_utils.data import scenes

    tiny_pool = recipe.render_pool(3, 0, recipe.HELDOUT_STREAM, scenes.SceneParams(), 28, progress=False)
    with pytest.raises(tasks.KnobError, match="format_images=4"):
        formats.multi_image_questions(tiny_pool, 4, seed=0, n_images=4)


def test_format_cells_count_the_answers_in_their_familys_format():
    rows = [{"family": "oddone", "output": "no"}, {"family": "oddone", "output": "dog"},
            {"family": "counting", "output": "7"}]
    cells = formats.format_cells(rows, ("oddone", "counting", "common"), ["dog", "cat"])
    assert cells["oddone"]["n"] == 2 and cells["oddone"]["score"] == 0.5 and cells["oddone"]["lo"] < 0.5 < cells["oddone"]["hi"]
    assert cells["counting"]["score"] == 1.0 and "common" not in cells  # no answers, no cell


def multi_scores() -> dict:
    cell = {"n": 50, "score": 0.0, "lo": 0.0, "hi": 0.07}
    return {"n_images": 4, "format": {f: {**cell, "score": 1.0 if f != "oddone" else 0.0} for f in tasks.FAMILIES},
            "score": {f: {**cell, "blind": 0.1} for f in tasks.FAMILIES}}


def test_the_card_shows_the_multi_image_check_and_a_card_scored_before_it_shows_none(tmp_path):
    lines = formats.multi_format_lines(multi_scores())
    assert lines[0].startswith("## MIMIC's questions over 4 held-out images") and "| oddone | 50 | 0.000 |" in "\n".join(lines)
    assert formats.multi_format_lines(None) == []
    cell = {"n": 200, "lo": 0.6, "hi": 0.8, "blind": 0.4}
    (tmp_path / "eval.json").write_text(json.dumps({
        "ov": {"image_count": {**cell, "score": 0.72, "target": 0.7}}, "single": {},
        "format_1img": {"counting": {**cell, "score": 1.0}}, "format_multi": multi_scores()}))
    (tmp_path / "training.json").write_text(json.dumps({"seconds": {"ov": 1800, "total": 2400}}))
    table = card.card_table(tmp_path).set_index("question")
    odd = table.loc["MIMIC format kept at 4 images: oddone"]
    assert odd["score"] == 0.0 and odd.isna()["target"]  # shown, not a target
    assert table.loc["MIMIC oddone at 4 images (never trained)", "blind"] == 0.1


def test_compare_reads_the_multi_image_answers_apart_from_the_single_image_families(tmp_path):
    for name, output in (("a", "no"), ("b", "dog")):
        folder = tmp_path / name / "heldout"
        folder.mkdir(parents=True)
        rows = [{"id": "oddone-format-n4-sr-k1-00000", "family": "oddone", "knobs": {"n_images": 4},
                 "score": float(output == "dog"), "output": output},
                ]
        (folder / formats.ANSWERS_FILE).write_text("".join(json.dumps(r) + "\n" for r in rows))
        (folder / "predictions.jsonl").write_text(json.dumps({"id": "heldout-counting-00000", "family": "counting",
                                                              "score": 1.0, "output": "2"}) + "\n")
    table = compare.compare(tmp_path / "a", tmp_path / "b", ("a", "b")).set_index("family")
    assert set(table.index) == {"counting", "mimic_oddone_4img"}
    assert table.loc["mimic_oddone_4img", "difference"] == 1.0


def test_the_recipe_refuses_a_format_images_out_of_range_naming_the_file_and_key(tmp_path):
    path = tmp_path / "organism_ov.yaml"
    for bad in (11, -1, True, "4"):
        path.write_text(json.dumps({"format_images": bad}))
        with pytest.raises(ValueError, match=r"organism_ov\.yaml: format_images"):
            organism_ov.OvConfig.from_yaml(path)
    path.write_text(json.dumps({"format_images": 0}))
    assert organism_ov.OvConfig.from_yaml(path).format_images == 0
    path.write_text(json.dumps({"format_questions": 0}))  # the curves' shares would divide by zero
    with pytest.raises(ValueError, match=r"organism_ov\.yaml: format_questions"):
        organism_ov.OvConfig.from_yaml(path)
