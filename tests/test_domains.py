"""Domain shift: the digit scenes' night and texture styles, and the main job's --eval-domains table."""
import numpy as np
import pytest

from agents.config import make_config
from agents.datasets import build_domains, parse_domains
from segbandit.data import DigitScenes, make_dataset

from conftest import load_example
from test_main_job import TINY

job = load_example("train_voc_bandit")


def test_night_scenes_are_the_day_scenes_darker_with_the_same_labels():
    day, night = DigitScenes("val", size=32, num_samples=3), DigitScenes("val", size=32, num_samples=3, style="night")
    for i in range(3):
        (d_img, d_mask), (n_img, n_mask) = day.scene(i), night.scene(i)
        assert np.array_equal(d_mask, n_mask)
        assert n_img.mean() < 0.6 * d_img.mean()
        assert n_img.std() < d_img.std()


def test_texture_scenes_keep_the_digits_and_change_the_background():
    day, tex = DigitScenes("val", size=32, num_samples=2), DigitScenes("val", size=32, num_samples=2, style="texture")
    (d_img, d_mask), (t_img, t_mask) = day.scene(0), tex.scene(0)
    assert np.array_equal(d_mask, t_mask)
    assert not np.array_equal(d_img[d_mask == 0], t_img[t_mask == 0])


def test_day_style_is_the_default_scene():
    a, b = DigitScenes("train", size=32, num_samples=2), DigitScenes("train", size=32, num_samples=2, style="day")
    assert np.array_equal(a.scene(1)[0], b.scene(1)[0])


def test_unknown_style_lists_valid_names():
    with pytest.raises(ValueError, match="day, night, texture"):
        DigitScenes("val", style="fog")


def test_raw_mask_is_the_scene_label_map_cached_or_not():
    ds, cached = DigitScenes("val", size=32, num_samples=2), DigitScenes("val", size=32, num_samples=2, cache=True)
    assert np.array_equal(ds.raw_mask(1), ds.scene(1)[1]) and np.array_equal(cached.raw_mask(1), ds.scene(1)[1])


def test_parse_domains_reads_names_and_roots():
    assert parse_domains("digits_night, dark_zurich=/data/dz,") == [("digits_night", None), ("dark_zurich", "/data/dz")]


def test_build_domains_refuses_a_domain_with_other_classes(tmp_path):
    cfg = make_config("digits", crop_size=32, val_size=4, eval_domains="digits_night")
    assert [name for name, _, _ in build_domains(cfg, 11)] == ["digits_night"]
    with pytest.raises(ValueError, match="11 classes, the run's model 7"):
        build_domains(cfg, 7)
    with pytest.raises(ValueError, match="valid names: .*digits_night"):
        build_domains(make_config("digits", eval_domains="fog"), 11)


def test_main_job_evaluates_each_domain_and_writes_the_table(tmp_path):
    out = tmp_path / "run"
    res = job.main([*TINY, "--eval-domains", "digits_night,digits_texture", "--out", str(out)])
    assert [r["domain"] for r in res["domains"]] == ["digits (source)", "digits_night", "digits_texture"]
    assert all(0.0 <= r["miou"] <= 1.0 and r["num_images"] == 4 for r in res["domains"])
    table = (out / "domains.md").read_text()
    assert "| digits_night | val | 4 |" in table and "vs source" in table


def test_main_job_unknown_domain_is_a_one_line_error_before_training(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        job.main([*TINY, "--eval-domains", "fog", "--out", str(tmp_path / "r")])
    assert exc.value.code == 2
    assert "unknown evaluation domain 'fog'" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_night_domain_dataset_is_built_by_name():
    ds = make_dataset("digits", "val", image_size=32, num_samples=2, style="night")
    image, mask = ds[0]
    assert image.shape == (3, 32, 32) and mask.shape == (32, 32)
