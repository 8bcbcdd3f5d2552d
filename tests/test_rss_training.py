"""The main job's reward-only objective (``--objective rss``): config, trainer step, PSR schedule, warm start, resume."""
import csv
import importlib.util
import math
import shutil
from pathlib import Path

import pytest
import torch

from agents.checkpoint import checkpoint_name, load_checkpoint
from agents.config import make_config
from agents.trainer import CoTrainer
from conftest import toy_batch

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("train_voc_bandit", ROOT / "examples" / "train_voc_bandit.py")
job = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(job)

K = 11
TINY = [
    "--crop-size", "32", "--batch-size", "2", "--max-iters", "2", "--train-size", "8", "--val-size", "4",
    "--policy-hidden", "16", "--num-overlays", "2", "--device", "cpu", "--num-workers", "0", "--eval-every", "2",
    "--log-every", "1", "--psr-scales", "8,4,1", "--psr-milestones", "1,2",
]  # fmt: skip


def rss_cfg(**overrides):
    base = dict(objective="rss", crop_size=32, batch_size=2, max_iters=4, policy_hidden=16, device="cpu",
                num_workers=0, warmup_iters=0, psr_scales=(8, 4, 1), psr_milestones=(1, 2))  # fmt: skip
    base.update(overrides)
    return make_config("digits", **base)


def rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_an_rss_run_defaults_to_no_modulation_no_aux_head_and_no_sampled_evaluation():
    cfg = make_config("digits", objective="rss")
    assert (cfg.modulation, cfg.aux_weight, cfg.eval_stochastic) == ("none", 0.0, False)
    assert make_config("digits").modulation == "attention"  # the latent method keeps the paper's modulation


def test_rss_with_a_latent_modulation_is_a_value_error_naming_it():
    with pytest.raises(ValueError, match="needs modulation 'none', got 'attention'"):
        make_config("digits", objective="rss", modulation="attention")


def test_psr_scales_that_do_not_divide_the_crop_are_a_value_error():
    with pytest.raises(ValueError, match="divide the image size 32x32, got factor 12"):
        rss_cfg(psr_scales=(12, 4, 1), psr_milestones=(1, 2))


def test_image_level_psd_with_one_sample_is_a_value_error():
    with pytest.raises(ValueError, match="G >= 2"):
        rss_cfg(rss_samples=1)


def test_an_rss_step_trains_the_segmentor_alone_and_reports_its_sampled_reward():
    trainer = CoTrainer.from_config(rss_cfg(), K)
    seg = {n: p.detach().clone() for n, p in trainer.segmentor.named_parameters()}
    pol = {n: p.detach().clone() for n, p in trainer.policy.named_parameters()}
    stats = trainer.train_step(*toy_batch())
    assert stats["phase"] == "rss" and stats["skipped"] == 0.0
    assert math.isfinite(stats["loss"]) and stats["loss"] == stats["loss_policy"]
    assert 0.0 <= stats["reward_sampled"] <= 1.0 and stats["psr_scale"] == 8.0
    assert math.isnan(stats["loss_ce"]) and math.isnan(stats["kl"])  # no CE, no latent policy
    assert any(not torch.equal(p, seg[n]) for n, p in trainer.segmentor.named_parameters())
    assert all(torch.equal(p, pol[n]) for n, p in trainer.policy.named_parameters())


def test_an_rss_step_is_reproducible_from_the_seed():
    a, b = (CoTrainer.from_config(rss_cfg(), K) for _ in range(2))
    batch = toy_batch()
    a.train_step(*batch)
    b.train_step(*batch)
    for (name, p), q in zip(a.segmentor.named_parameters(), b.segmentor.parameters()):
        assert torch.equal(p, q), name


def test_psr_milestones_move_to_finer_scales_and_the_stage_is_checkpointed():
    trainer = CoTrainer.from_config(rss_cfg(), K)
    scales = [trainer.train_step(*toy_batch(seed=i))["psr_scale"] for i in range(3)]
    assert scales == [8.0, 4.0, 1.0]  # milestones 1, 2: the first step at 1/8, the second at 1/4, then full size
    assert trainer.scales.active() == (8, 4, 1)  # cumulative: the coarser scales keep their own reward
    fresh = CoTrainer.from_config(rss_cfg(), K)
    fresh.load_state_dict(trainer.state_dict())
    assert fresh.scales.stage == trainer.scales.stage == 2


def test_warm_start_loads_a_ce_runs_segmentor_and_skips_its_aux_head(tmp_path):
    ce = CoTrainer.from_config(rss_cfg(objective="latent_rl", modulation="none", aux_weight=0.4), K)
    assert any(k.startswith("aux_classifier.") for k in ce.segmentor.state_dict())
    path = tmp_path / "ce.pt"
    torch.save(ce.state_dict(), path)
    rss = CoTrainer.from_config(rss_cfg(seed=5), K)
    rss.warm_start(path)
    for name, tensor in rss.segmentor.state_dict().items():
        assert torch.equal(tensor, ce.segmentor.state_dict()[name]), name


def test_warm_start_from_a_modulated_segmentor_is_a_value_error_naming_the_keys(tmp_path):
    latent = CoTrainer.from_config(rss_cfg(objective="latent_rl", modulation="attention", attn_dim=32, num_heads=4), K)
    path = tmp_path / "latent.pt"
    torch.save(latent.state_dict(), path)
    with pytest.raises(ValueError, match="unexpected \\['alpha'"):
        CoTrainer.from_config(rss_cfg(), K).warm_start(path)


@pytest.mark.parametrize("level, mode", [("pixel", "grid"), ("image", "grid"), ("image", "window")])
def test_the_main_job_runs_rss_and_writes_its_reports(level, mode, tmp_path):
    out = tmp_path / level
    result = job.main([*TINY, "--objective", "rss", "--reward-level", level, "--psr-mode", mode, "--out", str(out)])
    assert result["iterations"] == 2 and 0.0 <= result["miou"] <= 1.0 and "miou_sampled" not in result
    metrics = rows(out / "metrics.csv")
    assert [r["phase"] for r in metrics] == ["rss", "rss"]
    assert [float(r["psr_scale"]) for r in metrics] == [8.0, 4.0]
    assert all(0.0 <= float(r["reward_sampled"]) <= 1.0 for r in metrics)
    assert f"rss/{level}" in (out / "final.md").read_text()
    assert load_checkpoint(out / checkpoint_name(2))["psr"]["stage"] == 2


def test_the_main_job_warm_starts_from_a_ce_checkpoint(tmp_path):
    ce = tmp_path / "ce"
    job.main([*TINY, "--modulation", "none", "--lambda-policy", "0", "--lambda-kl", "0", "--out", str(ce)])
    out = tmp_path / "rss"
    result = job.main([*TINY, "--objective", "rss", "--max-iters", "1", "--lr", "0",
                       "--init-from", str(ce / checkpoint_name(2)), "--out", str(out)])  # fmt: skip
    assert result["iterations"] == 1
    a, b = load_checkpoint(ce / checkpoint_name(2))["segmentor"], load_checkpoint(out / checkpoint_name(1))["segmentor"]
    convs = [k for k, v in b.items() if v.dim() == 4]  # every conv weight (BatchNorm statistics move in a step)
    assert convs and all(torch.equal(a[k], b[k]) for k in convs)  # lr 0: the step kept the CE weights


def test_init_from_a_missing_file_is_one_line_and_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        job.main([*TINY, "--objective", "rss", "--init-from", str(tmp_path / "nope.pt"), "--out", str(tmp_path / "r")])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "--init-from" in err[-1] and "nope.pt" in err[-1]


def test_resuming_an_rss_run_continues_it_exactly(tmp_path):
    straight = tmp_path / "straight"
    flags = [*TINY, "--objective", "rss", "--max-iters", "4", "--save-every", "2", "--eval-every", "4",
             "--psr-milestones", "1,3"]  # fmt: skip
    job.main([*flags, "--out", str(straight)])
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copy(straight / checkpoint_name(2), resumed / checkpoint_name(2))
    job.main(["--resume", "--out", str(resumed)])
    a, b = load_checkpoint(straight / checkpoint_name(4)), load_checkpoint(resumed / checkpoint_name(4))
    for name, tensor in a["segmentor"].items():
        assert torch.equal(tensor, b["segmentor"][name]), name
    assert a["psr"] == b["psr"]
    assert [float(r["psr_scale"]) for r in rows(resumed / "metrics.csv")] == [4.0, 1.0]


def test_rss_benchmark_runs_only_the_chosen_rows_and_starts_with_the_set_fields(tmp_path):
    import json

    from benchmarks import rss_training as bench

    summary = bench.main(["--iters", "2", "--warm-iters", "2", "--seeds", "0", "--train-size", "16", "--val-size", "8",
                          "--rows", "image + PSD", "--starts", "warm", "--set", "rss_samples=2",
                          "--cache", str(tmp_path / "c"), "--out", str(tmp_path / "r.json")])
    assert list(summary) == ["warm"] and [r["row"] for r in summary["warm"]] == ["image + PSD"]
    configs = [json.loads(p.read_text())["config"] for p in (tmp_path / "c").glob("*.json")]
    # the warm start (CE) keeps its own config; only the chosen row gets --set
    assert sorted((c["objective"], c["rss_samples"]) for c in configs) == [("latent_rl", 4), ("rss", 2)]
    with pytest.raises(SystemExit):
        bench.build_parser().parse_args(["--rows", "no such row"])
