"""The main job examples/train_voc_bandit.py, run in-process with tiny settings (32 px, batch 2, 2 iterations)."""
import csv
import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from agents.checkpoint import checkpoint_name, list_checkpoints, load_checkpoint
from agents.config import config_from_args
from agents.datasets import build_datasets
from agents.losses import LOSSES
from conftest import load_example

job = load_example("train_voc_bandit")

TINY = [
    "--crop-size", "32", "--batch-size", "2", "--max-iters", "2", "--train-size", "8", "--val-size", "4",
    "--policy-hidden", "16", "--attn-dim", "32", "--num-heads", "4", "--num-overlays", "2",
    "--device", "cpu", "--num-workers", "0", "--eval-every", "2", "--log-every", "1",
]  # fmt: skip


def rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.parametrize("algo", tuple(LOSSES))
def test_every_algo_runs_two_iterations_and_writes_its_reports(algo, tmp_path, capsys):
    out = tmp_path / algo
    result = job.main([*TINY, "--algo", algo, "--out", str(out)])
    printed = capsys.readouterr().out
    assert "No --data-root given: training on the embedded DigitScenes" in printed
    assert result["iterations"] == 2 and 0.0 <= result["miou"] <= 1.0 and not result["skipped_iterations"]
    assert set(result["per_class_iou"]) == {"background", *map(str, range(10))}
    metrics = rows(out / "metrics.csv")
    assert [r["iteration"] for r in metrics] == ["1", "2"]
    assert all(math.isfinite(float(r["loss"])) and math.isfinite(float(r["reward_total"])) for r in metrics)
    assert rows(out / "eval.csv")[-1]["iteration"] == "2"
    config = json.loads((out / "config.json").read_text())
    assert config["algo"] == algo and config["max_iters"] == 2 and config["crop_size"] == 32
    final = (out / "final.md").read_text()
    assert "val mIoU (%)" in final and "| 10 9 |" in final and "val mIoU (%)" in printed
    for png in ("curves.png", "overlays.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in list_checkpoints(out)] == [checkpoint_name(2)]


@pytest.mark.parametrize(
    "flag, valid", [("--algo", "latent_ppo"), ("--model", "fcn_resnet18"), ("--modulation", "attention"),
                    ("--baseline", "ema")]  # fmt: skip
)
def test_unknown_registry_value_is_an_argparse_error_listing_the_choices(flag, valid, capsys):
    with pytest.raises(SystemExit) as exc:
        job.main([flag, "no_such_thing"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'no_such_thing'" in err and valid in err


def test_bad_reward_weights_are_an_argparse_error(capsys):
    with pytest.raises(SystemExit):
        job.main(["--reward-weights", "1,1"])
    assert "4 comma-separated floats" in capsys.readouterr().err


def test_d_and_none_flags_set_the_paper_width_and_the_unbounded_log_sigma():
    parser = job.build_parser()
    default = config_from_args(parser.parse_args(["--preset", "voc-fcn-r50"]))
    paper = config_from_args(parser.parse_args(["--preset", "voc-fcn-r50", "--attn-dim", "d",
                                                    "--logstd-bound", "none"]))
    assert (default.attn_dim, default.logstd_bound) == (512, 4.0)
    assert (paper.attn_dim, paper.logstd_bound) == (None, None)  # None: attn_dim = d (Eq. 14), log sigma unbounded


def test_a_word_that_is_not_none_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit):
        job.main(["--logstd-bound", "wide"])
    assert "expected a number or one of none, got 'wide'" in capsys.readouterr().err


def test_nonfinite_loss_is_reported_with_its_iteration_and_not_applied(tmp_path, monkeypatch, capsys):
    import segbandit.rewards

    real_call = segbandit.rewards.CompositeReward.__call__

    def nan_total(self, logits, target):
        out = real_call(self, logits, target)
        out["total"] = torch.full_like(out["total"], float("nan"))
        return out

    monkeypatch.setattr(segbandit.rewards.CompositeReward, "__call__", nan_total)
    out = tmp_path / "nan"
    result = job.main([*TINY, "--out", str(out)])
    assert result["skipped_iterations"] == [1, 2]
    err = capsys.readouterr().err
    assert "iteration 1: non-finite reward" in err and "iteration 2: non-finite reward" in err
    assert [r["skipped"] for r in rows(out / "metrics.csv")] == ["1", "1"]
    # nothing was applied: the saved weights equal a fresh build of the same seed
    import agents.config
    from agents.trainer import CoTrainer

    cfg = agents.config.load_config(out / "config.json")
    fresh = CoTrainer.from_config(cfg, 11)
    saved = load_checkpoint(out / checkpoint_name(2))["segmentor"]
    for name, p in fresh.segmentor.named_parameters():
        assert torch.equal(saved[name], p.detach()), name


def test_resume_continues_from_the_newest_checkpoint_exactly(tmp_path, capsys):
    straight = tmp_path / "straight"
    job.main([*TINY, "--max-iters", "4", "--save-every", "2", "--eval-every", "4", "--out", str(straight)])
    assert [p.name for p in list_checkpoints(straight)] == [checkpoint_name(2), checkpoint_name(4)]

    resumed = tmp_path / "resumed"  # the same run stopped after its iteration-2 checkpoint
    resumed.mkdir()
    shutil.copy(straight / checkpoint_name(2), resumed / checkpoint_name(2))
    capsys.readouterr()
    result = job.main(["--resume", "--out", str(resumed)])
    captured = capsys.readouterr()
    assert f"resumed from {resumed / checkpoint_name(2)} at iteration 2" in captured.out + captured.err
    assert result["iterations"] == 4
    assert [r["iteration"] for r in rows(resumed / "metrics.csv")] == ["3", "4"]
    a = load_checkpoint(straight / checkpoint_name(4))
    b = load_checkpoint(resumed / checkpoint_name(4))
    for part in ("segmentor", "policy"):
        for name, tensor in a[part].items():
            assert torch.equal(tensor, b[part][name]), f"{part}.{name}"
    assert torch.equal(a["objective"]["advantage.baseline.b"], b["objective"]["advantage.baseline.b"])


def test_fresh_run_refuses_a_folder_with_checkpoints_and_resume_needs_one(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    with pytest.raises(SystemExit):
        job.main([*TINY, "--resume", "--out", str(out)])
    assert "no ckpt_*.pt" in capsys.readouterr().err
    (out / checkpoint_name(3)).write_bytes(b"")
    with pytest.raises(SystemExit):
        job.main([*TINY, "--out", str(out)])
    assert "already holds checkpoints" in capsys.readouterr().err


def test_voc_without_data_is_a_one_line_data_error(tmp_path):
    from segbandit.errors import DataError

    with pytest.raises(DataError, match="VOCdevkit") as exc:
        job.main(["--preset", "voc-fcn-r50", "--out", str(tmp_path / "voc")])
    assert "\n" not in str(exc.value)


def background_only_miou(val) -> float:
    """The val mIoU of predicting background (class 0) at every pixel, on the very scenes the job evaluates."""
    from segbandit.metrics import SegmentationMetric

    masks = torch.stack([torch.as_tensor(val[i][1]) for i in range(len(val))]).long()  # (N, H, W)
    metric = SegmentationMetric(11)
    metric.update(torch.zeros_like(masks), masks)
    return float(metric.compute()["miou"])


LEARNS = [
    "--crop-size", "48", "--max-iters", "450", "--train-size", "2400", "--val-size", "64",
    "--eval-every", "225", "--save-every", "450", "--warmup-iters", "30", "--num-overlays", "2",
    "--device", "cpu",
]  # fmt: skip


def test_a_short_main_job_learns_the_digits_beyond_three_times_background_only(tmp_path):
    result = job.main([*LEARNS, "--out", str(tmp_path / "run")])
    cfg = config_from_args(job.build_parser().parse_args(LEARNS))
    _, val, _, _ = build_datasets(cfg)
    floor = background_only_miou(val)
    assert 0.05 < floor < 0.12  # background is ~90% of the pixels: ~0.9 / 11
    assert result["miou"] >= 3 * floor, (result["miou"], floor)


def test_the_default_run_folder_holds_small_checkpoints(tmp_path):
    out = tmp_path / "run"
    job.main(["--crop-size", "32", "--batch-size", "2", "--max-iters", "3", "--train-size", "8", "--val-size", "4",
              "--eval-every", "3", "--save-every", "1", "--num-overlays", "2", "--out", str(out)])  # the preset's model
    assert len(list_checkpoints(out)) == 2  # keep_checkpoints of the preset
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    assert size < 50e6, size


def test_the_old_digits_budget_still_runs_with_fcn_resnet18(tmp_path):
    result = job.main(["--preset", "digits-fcn-r18", *TINY, "--out", str(tmp_path / "r18")])
    config = json.loads((tmp_path / "r18" / "config.json").read_text())
    assert config["model"] == "fcn_resnet18" and config["batch_size"] == 2 and result["iterations"] == 2


def test_non_finite_weights_are_skipped_then_stop_with_exit_code_3(tmp_path, capsys):
    code = job.cli([*TINY[:6], "--max-iters", "6", "--eval-every", "6", "--optimizer", "sgd", "--lr", "nan",
                    "--max-nonfinite", "2", "--out", str(tmp_path / "nan")])
    err = capsys.readouterr().err
    assert code == job.EXIT_NONFINITE
    assert "error:" in err and "consecutive non-finite steps" in err and "Traceback" not in err


@pytest.mark.parametrize("flags", [["--batch-size", "0"], ["--max-iters", "-1"], ["--keep-checkpoints", "0"],
                                   ["--warmup-iters", "-5"], ["--crop-size", "7"]])  # fmt: skip
def test_an_invalid_value_is_one_argparse_line_and_exit_2_before_any_work(flags, tmp_path, capsys):
    out = tmp_path / "never"
    with pytest.raises(SystemExit) as exc:
        job.main([*flags, "--out", str(out)])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "must be >= " in err and "Traceback" not in err
    assert not out.exists()


def test_resuming_a_finished_run_reports_it_without_a_second_eval_row(tmp_path):
    out = tmp_path / "done"
    first = job.main([*TINY, "--out", str(out)])
    again = job.main(["--resume", "--out", str(out)])
    assert [r["iteration"] for r in rows(out / "eval.csv")] == ["2"]
    assert again["iterations"] == 2 and again["miou"] == pytest.approx(first["miou"])


def test_resume_with_a_larger_max_iters_continues_the_schedule_over_the_new_length(tmp_path):
    out = tmp_path / "longer"
    base = [*TINY, "--warmup-iters", "0", "--poly-power", "1.0"]
    job.main([*base, "--max-iters", "4", "--eval-every", "4", "--out", str(out)])
    job.main(["--resume", "--max-iters", "6", "--out", str(out)])
    lrs = {int(r["iteration"]): float(r["lr"]) for r in rows(out / "metrics.csv")}
    lr0 = lrs[1]
    assert lrs[5] == pytest.approx(lr0 * (1 - 4 / 6)) and lrs[6] == pytest.approx(lr0 * (1 - 5 / 6))
    assert json.loads((out / "config.json").read_text())["max_iters"] == 6


@pytest.mark.parametrize("flags, field", [(["--lr", "0.01"], "lr"), (["--model", "fcn_resnet18"], "model"),
                                          (["--data-root", "/nowhere"], "data_root")])  # fmt: skip
def test_resume_refuses_a_flag_that_would_change_the_saved_run_in_one_line(flags, field, tmp_path, capsys):
    out = tmp_path / "run"
    job.main([*TINY, "--out", str(out)])
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        job.main(["--resume", *flags, "--out", str(out)])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and f"--resume: {field} = " in err and "may change on resume" in err
    assert [r["iteration"] for r in rows(out / "metrics.csv")] == ["1", "2"]  # nothing trained or rewritten


def _argparse_line(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exc:
        job.main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "Traceback" not in err
    return err.strip().splitlines()[-1]


def test_out_naming_an_existing_file_is_one_line_and_exit_2(tmp_path, capsys):
    target = tmp_path / "a_file"
    target.write_text("keep me")
    line = _argparse_line([*TINY, "--out", str(target)], capsys)
    assert f"--out {target}: exists and is not a folder" in line and target.read_text() == "keep me"


def test_out_where_no_folder_can_be_made_is_one_line_and_exit_2_leaving_nothing(capsys):
    line = _argparse_line([*TINY, "--out", "/proc/segbandit-run/out"], capsys)  # procfs refuses new folders
    assert "--out /proc/segbandit-run/out: cannot write there" in line


def test_device_cuda_without_one_is_one_line_and_exit_2_before_any_work(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a machine without CUDA, also on a GPU host
    out = tmp_path / "never"
    line = _argparse_line([*TINY, "--device", "cuda", "--out", str(out)], capsys)
    assert "--device cuda: CUDA is not available here" in line and not out.exists()
