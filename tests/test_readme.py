"""The README's Python examples run as written (each in a fresh interpreter, as a user would paste them)."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BLOCKS = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", "import torch; torch.set_num_threads(1)\n" + code],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )


def test_readme_has_the_six_documented_examples():
    assert len(BLOCKS) == 6, [b.splitlines()[0] for b in BLOCKS]


def _block(marker: str) -> str:
    return next(b for b in BLOCKS if marker in b)


def test_readme_torchrl_example_passes_check_env_specs_and_rolls_out():
    proc = _run(_block("SegBanditTorchEnv"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "torch.Size([4, 3, 1]) torch.Size([4, 3, 64])" in proc.stdout  # d = 64: fcn_resnet_tiny


def test_readme_sb3_example_trains_ppo_on_the_adapter():
    proc = _run(_block("SB3VecEnv"))
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_readme_vector_env_example_prints_terminated_rewards_and_every_term():
    proc = _run(_block("make_vec"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "(8,) True ['boundary', 'ce', 'dice', 'final_info', 'final_obs', 'iou']" in proc.stdout


def test_readme_plugged_in_loss_trains_and_reports_finite_terms():
    proc = _run(_block("LOSSES["))
    assert proc.returncode == 0, proc.stderr[-3000:]
    stats = eval(proc.stdout.strip().splitlines()[-1])  # the dict the example prints
    assert set(stats) == {"loss_ce", "loss_policy", "kl", "reward_total"}
    assert all(v == v and abs(v) < 1e6 for v in stats.values())


def test_readme_fit_example_trains_through_the_library_entry_point():
    proc = _run(_block("from agents.fit import fit"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    miou, iterations, keys = proc.stdout.strip().splitlines()[-1].split(" ", 2)
    assert 0.0 <= float(miou) <= 1.0 and iterations == "2"
    assert keys == "['data_time_s', 'failed', 'iterations', 'mean_dice']"


def test_readme_pixel_bandit_example_scores_an_all_background_label_map():
    proc = _run(_block("SegPixelBandit-v0"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "(4, 3, 32, 32) [0.852 0.711 0.675 0.698] (4, 16, 16)" in proc.stdout


def test_benchmark_doc_evaluate_example_scores_the_zero_action_at_zero():
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "benchmark.md").read_text(), flags=re.S)
    assert len(blocks) == 1
    proc = _run(blocks[0])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["0.0", "0.0"]


def test_readme_reference_scores_table_is_the_constants():
    from segbandit.reference_scores import reference_table

    assert reference_table() in (ROOT / "README.md").read_text()
