"""The ablation harness's machinery (benchmarks/ablations.py): planning, dedup, cache, report.  No timed tests."""
import json
import math

import pytest

from benchmarks import ablations as abl

TINY = dict(crop_size=32, batch_size=2, eval_batch_size=4, max_iters=2, train_size=8, val_size=4,
            model="fcn_resnet18", attn_dim=32, num_heads=4, policy_hidden=16, policy_blocks=1)  # fmt: skip


def _base():
    return abl.base_config(abl.HARNESS_DIGITS_PRESET, budget={**abl.DIGITS_BUDGET, **TINY})


def test_every_table_has_exactly_one_reference_row_and_known_overrides():
    fields = set(abl.to_dict(abl.make_config("digits")))
    for key, table in abl.TABLES.items():
        assert sum(r.reference for r in table.rows) == 1, key
        for row in table.rows:
            assert set(row.overrides) <= fields, (key, row.label)


def test_reference_rows_dedupe_to_one_run_per_seed():
    base = _base()
    tasks, keys = abl.plan(["1", "5a", "5b", "6", "7", "8"], [0, 1], base)
    refs = {keys[(t, r.label, 0)] for t in ("1", "5a", "5b", "6", "7", "8") for r in abl.TABLES[t].rows if r.reference}
    assert len(refs) == 1  # the full method is trained once per seed, whatever table lists it
    assert len({abl.config_key(c) for c in tasks}) == len(tasks)
    assert [c["seed"] for c in tasks] == sorted(c["seed"] for c in tasks)  # seed-major order


def test_config_key_ignores_output_fields_but_not_the_seed():
    cfg = abl.row_config(_base(), abl.TABLES["8"].rows[-1], 0)
    assert abl.config_key(cfg) == abl.config_key({**cfg, "out": "/elsewhere", "log_every": 7})
    assert abl.config_key(cfg) != abl.config_key({**cfg, "seed": 1})


def test_row_with_an_unknown_value_is_refused():
    with pytest.raises(ValueError, match="schedule"):
        abl.row_config(_base(), abl.Row("x", "bad", {"schedule": "nonsense"}), 0)


@pytest.fixture
def tiny_table():
    """A two-row copy of Table 8 (unbounded vs bounded log sigma) on a tiny model, registered as "tiny8"."""
    small = {k: v for k, v in TINY.items() if k != "crop_size"}
    abl.TABLES["tiny8"] = abl.Table("tiny8", "tiny Table 8", tuple(
        abl.Row("tiny8", r.label, {**r.overrides, **small}, r.paper, r.paper_std, r.reference)
        for r in abl.TABLES["8"].rows[1:]
    ))
    yield "tiny8"
    del abl.TABLES["tiny8"]


def test_two_iteration_one_seed_two_row_run_writes_table_json_and_plot(tmp_path, capsys, tiny_table):
    cache, out, img = tmp_path / "cache", tmp_path / "docs" / "ablations.md", tmp_path / "img"
    out.parent.mkdir()
    out.write_text("# Ablations\n\nprose before\n\n<!-- BEGIN ablation tables -->\nold\n<!-- END ablation tables -->\n\nprose after\n")
    argv = ["--seeds", "1", "--tables", tiny_table, "--jobs", "1", "--max-iters", "2", "--image-size", "32",
            "--batch-size", "2", "--train-size", "8", "--val-size", "4", "--cache", str(cache), "--out", str(out),
            "--img-dir", str(img), "--no-estimate"]  # fmt: skip
    result = abl.main(argv)
    rows = result["tables"][tiny_table]["rows"]
    assert [r["n"] for r in rows] == [1, 1]
    assert all(0.0 <= r["mean"] <= 100.0 for r in rows)
    ref = rows[1]
    assert ref["reference"] and ref["delta_mean"] == 0.0
    assert math.isclose(rows[0]["gap"], rows[0]["mean"] - 43.5)
    assert math.isclose(rows[0]["delta_mean"], rows[0]["mean"] - ref["mean"])

    text = out.read_text()
    assert "prose before" in text and "prose after" in text and "\nold\n" not in text
    assert "| unbounded log sigma | 43.5 ± 7.22 |" in text
    assert "![tiny Table 8](../img/abl_tiny8.png)" in text
    assert (img / "abl_tiny8.png").stat().st_size > 0

    summary = json.loads((cache / "summary.json").read_text())
    assert summary["tables"][tiny_table]["rows"][0]["per_seed"]["0"] == pytest.approx(rows[0]["mean"])
    assert len(list(cache.glob("*.json"))) == 4  # two runs, the summary, the chunk log
    chunks = json.loads((cache / "chunks.json").read_text())
    assert [(c["tables"], c["trained"]) for c in chunks] == [([tiny_table], 2)]  # how long each sitting took

    capsys.readouterr()
    again = abl.main(argv)  # a second invocation trains nothing: both runs come from the cache
    assert "0 to train" in capsys.readouterr().out
    assert len(json.loads((cache / "chunks.json").read_text())) == 1  # a sitting that trains nothing is not logged
    assert again["tables"][tiny_table]["rows"][0]["per_seed"] == rows[0]["per_seed"]


def test_tables_with_a_capacity_control_report_the_paired_delta_against_it():
    def row(label, per_seed, **kw):
        base = dict(label=label, reference=False, control=False, paper=None, paper_std=None, paper_delta=None,
                    n=len(per_seed), mean=sum(per_seed) / len(per_seed), std=0.0, gap=None, delta_mean=0.0,
                    delta_std=0.0, delta_t=None, control_delta_mean=None, control_delta_std=None,
                    control_delta_t=None, skipped_steps=0, failed_runs=0, train_tail={})
        return {**base, **kw}

    table = {"rows": [row("control", [60.0], control=True),
                      row("variant", [61.0], control_delta_mean=1.0, control_delta_std=0.5, control_delta_t=2.0),
                      row("full", [60.0], reference=True)]}
    lines = abl.markdown_table(table).splitlines()
    assert "Δ vs control" in lines[0]
    assert "(control)" in lines[2] and "+1.00 ± 0.50, t = +2.0" in lines[3]
    assert {r.label for t in ("6", "rl") for r in abl.TABLES[t].rows if r.control} == {
        "L_seg only, Eq. 14 -> MHA(z, z, z) (capacity control)", "capacity control: MHA(z, z, z), no policy terms"}


def test_rows_filter_plans_only_the_matching_rows():
    tasks, keys = abl.plan(["6"], [0, 1], _base(), rows="no modulation")
    assert len(tasks) == 2 and all(t["modulation"] == "none" for t in tasks)
    assert len(keys) == 2 * len(abl.TABLES["6"].rows)  # every row keeps its key for the report


@pytest.mark.parametrize("max_iters, cache", [(700, abl.DEFAULT_CACHE), (600, abl.DIGITS_600_CACHE)],
                         ids=["default-700", "first-run-600"])
def test_the_committed_cache_still_answers_every_run_of_the_default_harness(max_iters, cache):
    # a field added to TrainConfig must join LATER_FIELDS at its old value, or every cached run is retrained
    base = abl.base_config(abl.HARNESS_DIGITS_PRESET, max_iters=max_iters)
    tasks, _ = abl.plan(abl.TABLE_KEYS, list(range(5)), base, grid_seeds=3)
    missing = [(c["seed"], abl.config_key(c)) for c in tasks if abl.load_cached(cache, c) is None]
    assert len(tasks) > 100 and missing == []


def test_the_same_command_runs_a_table_at_voc_scale_on_a_tiny_vocdevkit(tmp_path):
    from test_continual import _voc_tree

    root = _voc_tree(tmp_path / "data")
    cache, out = tmp_path / "cache", tmp_path / "voc.md"
    result = abl.main(["--preset", "voc-fcn-r50", "--data-root", str(root), "--tables", "6", "--seeds", "1",
                       "--max-iters", "1", "--image-size", "32", "--batch-size", "2", "--val-size", "2", "--jobs", "1",
                       "--model", "fcn_resnet_tiny", "--set", "pretrained_backbone=false", "--set", "attn_dim=32",
                       "--set", "num_heads=4", "--set", "policy_hidden=16", "--set", "eval_batch_size=2",
                       "--set", "num_workers=0",
                       "--cache", str(cache), "--out", str(out), "--img-dir", str(tmp_path / "img"), "--no-estimate"])
    base = result["meta"]["base_config"]
    assert (base["dataset"], base["preset"], base["optimizer"], base["data_root"]) == ("voc", "voc-fcn-r50", "sgd",
                                                                                      str(root))
    rows = result["tables"]["6"]["rows"]
    assert [r["n"] for r in rows] == [1, 1, 1, 1] and all(0.0 <= r["mean"] <= 100.0 for r in rows)
    assert "Table 6 (left)" in out.read_text()


def test_set_reads_json_values_and_refuses_unknown_fields():
    assert abl.parse_sets(["lr=0.02", "pretrained_backbone=false", "model=fcn_resnet18"]) == {
        "lr": 0.02, "pretrained_backbone": False, "model": "fcn_resnet18"}
    with pytest.raises(SystemExit, match="TrainConfig field, got 'learning_rate=1'"):
        abl.parse_sets(["learning_rate=1"])
