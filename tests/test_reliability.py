"""Reliability of the main job (issue 6): complete atomic checkpoints, exact resume, crash safety under kill -9,
guarded training, and one-line errors on bad data.  Tiny settings: 32 px, batch 2, a handful of iterations."""
from __future__ import annotations

import contextlib
import csv
import importlib.util
import logging
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from agents.checkpoint import (
    checkpoint_name,
    latest_complete_checkpoint,
    list_checkpoints,
    load_checkpoint,
    remove_stale_temporaries,
    save_checkpoint,
)
from agents.config import make_config
from agents.trainer import CoTrainer, IterationBatchSampler, NonFiniteError

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "train_voc_bandit.py"
_spec = importlib.util.spec_from_file_location("train_voc_bandit_rel", SCRIPT)
job = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(job)

TINY = [
    "--crop-size", "32", "--batch-size", "2", "--train-size", "8", "--val-size", "2", "--policy-hidden", "16",
    "--attn-dim", "32", "--num-heads", "4", "--num-overlays", "1", "--device", "cpu", "--num-workers", "0",
    "--log-every", "1", "--no-eval-stochastic",
]  # fmt: skip
N = 4  # iterations of the reference run
THREADS = 2  # bit-exact comparisons need the same intra-op thread count in-process and in the subprocesses


@contextlib.contextmanager
def threads(n: int = THREADS):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def assert_same_tree(a, b, where: str = "") -> None:
    """Bit-identical nested dicts / lists of tensors and plain values."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert set(a) == set(b), (where, set(a) ^ set(b))
        for k in a:
            assert_same_tree(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_tree(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and math.isnan(a):
        assert isinstance(b, float) and math.isnan(b), where
    else:
        assert a == b, (where, a, b)


TRAINING_STATE = ("segmentor", "policy", "objective", "optimizer", "scheduler", "iteration", "rng", "data")


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    """N iterations in one go, a checkpoint every N/2, an evaluation every N/2."""
    out = tmp_path_factory.mktemp("straight") / "run"
    half = str(N // 2)
    with threads():
        job.main([*TINY, "--max-iters", str(N), "--save-every", half, "--eval-every", half, "--out", str(out)])
    return out


# ----------------------------------------------------------------------------- 1. what a checkpoint holds


def test_checkpoint_holds_models_objective_optimizer_schedule_rng_data_position_and_config(straight):
    state = torch.load(straight / checkpoint_name(N), map_location="cpu", weights_only=True)  # no pickled code
    assert state["iteration"] == N and state["config"]["max_iters"] == N
    assert {"advantage.baseline.b", "advantage.baseline.initialized"} <= set(state["objective"])
    assert any(k.startswith("reference.") for k in state["objective"])  # the EMA reference pi_ref
    assert state["optimizer"]["state"] and state["scheduler"]["last_epoch"] == N
    assert state["scaler"] == {}  # bf16 autocast needs no GradScaler
    assert set(state["rng"]) >= {"python", "numpy", "torch", "cuda", "generators"}
    assert "action" in state["rng"]["generators"]  # the action-noise generator (Eq. 11)
    bpe = 8 // 2
    assert state["data"] == {"iteration": N, "epoch": N // bpe, "batch_in_epoch": N % bpe, "batches_per_epoch": bpe,
                             "seed": 0, "num_samples": 8, "global_batch_size": 2}  # fmt: skip


def test_checkpoints_are_written_every_save_every_and_only_the_newest_are_kept(tmp_path):
    state = {"iteration": 0, "w": torch.zeros(3)}
    for it in range(1, 6):
        save_checkpoint(tmp_path / checkpoint_name(it), {**state, "iteration": it}, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == [checkpoint_name(4), checkpoint_name(5)]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_a_writer_dying_mid_save_leaves_the_previous_checkpoint_and_no_partial_file(tmp_path, monkeypatch):
    good = save_checkpoint(tmp_path / checkpoint_name(1), {"iteration": 1, "w": torch.ones(4)})
    real_save = torch.save

    def dies_half_way(obj, fh, *a, **k):
        fh.write(b"PK\x03\x04 half a zip")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path / checkpoint_name(2), {"iteration": 2, "w": torch.ones(4)})
    monkeypatch.setattr(torch, "save", real_save)
    assert list_checkpoints(tmp_path) == [good] and sorted(p.name for p in tmp_path.iterdir()) == [good.name]


def test_resume_picks_the_newest_complete_checkpoint_and_clears_stale_temporaries(tmp_path, caplog):
    save_checkpoint(tmp_path / checkpoint_name(2), {k: {} for k in ("segmentor", "policy", "objective", "optimizer",
                                                                    "rng", "config")} | {"iteration": 2})  # fmt: skip
    (tmp_path / checkpoint_name(3)).write_bytes(b"PK\x03\x04 truncated")  # e.g. copied in half
    (tmp_path / f".{checkpoint_name(4)}.x1y2.tmp").write_bytes(b"left by kill -9")
    with caplog.at_level(logging.WARNING, logger="agents.checkpoint"):
        path, state = latest_complete_checkpoint(tmp_path)
    assert path == tmp_path / checkpoint_name(2) and state["iteration"] == 2
    assert f"skipping unreadable checkpoint {tmp_path / checkpoint_name(3)}" in caplog.text
    assert [p.name for p in remove_stale_temporaries(tmp_path)] == [f".{checkpoint_name(4)}.x1y2.tmp"]


# ----------------------------------------------------------------------------- 2. exact resume


def test_half_then_resume_then_half_is_bit_identical_to_the_straight_run(straight, tmp_path, capsys):
    resumed = tmp_path / "resumed"  # the straight run as it was when killed after its N/2 checkpoint
    resumed.mkdir()
    for name in (checkpoint_name(N // 2), "config.json", "metrics.csv", "eval.csv"):
        shutil.copy(straight / name, resumed / name)
    with threads():
        result = job.main(["--resume", "--out", str(resumed)])
    assert f"resumed from {resumed / checkpoint_name(N // 2)} at iteration {N // 2}" in capsys.readouterr().out
    assert result["iterations"] == N
    a = load_checkpoint(straight / checkpoint_name(N))
    b = load_checkpoint(resumed / checkpoint_name(N))
    for part in TRAINING_STATE:  # weights, EMA reference, baseline, Adam moments, every RNG, data position
        assert_same_tree(a[part], b[part], part)
    # the copied CSVs already held rows N/2+1..N: they are cut back at resume, so no iteration appears twice
    assert [r["iteration"] for r in rows(resumed / "metrics.csv")] == [str(i) for i in range(1, N + 1)]
    assert [r["iteration"] for r in rows(resumed / "eval.csv")] == [str(N // 2), str(N)]


def test_data_order_resumes_at_the_right_batch_of_the_right_epoch():
    full = IterationBatchSampler(10, 3, seed=5)
    it = iter(IterationBatchSampler(10, 3, seed=5, start_iteration=7))  # 3 batches per epoch: epoch 2, batch 1
    assert [next(it) for _ in range(4)] == [full.batch(t) for t in range(7, 11)]
    assert full.state_dict(7) | {} == {"iteration": 7, "epoch": 2, "batch_in_epoch": 1, "batches_per_epoch": 3,
                                       "seed": 5, "num_samples": 10, "global_batch_size": 3}  # fmt: skip


# ----------------------------------------------------------------------------- 3. crash safety (kill -9)


def _start(args: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(THREADS)}
    return subprocess.Popen([sys.executable, str(SCRIPT), *args], cwd=ROOT, env=env,
                            stdout=open(log, "wb"), stderr=subprocess.STDOUT)  # fmt: skip


def _kill_when(proc: subprocess.Popen, ready, timeout: float = 120.0) -> None:
    t0 = time.time()
    while not ready():
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.time() - t0 < timeout, "timed out waiting for the run"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def _logged(out: Path) -> int:
    path = out / "metrics.csv"
    lines = path.read_text().splitlines() if path.is_file() else []
    return len(lines) - 1 if lines else 0


def _assert_every_checkpoint_loads(out: Path) -> int:
    ckpts = list_checkpoints(out)
    assert ckpts, "no checkpoint survived"
    for p in ckpts:
        state = load_checkpoint(p)
        assert state["iteration"] == int(p.stem.split("_")[1])
        assert all(k in state for k in TRAINING_STATE), p
    return load_checkpoint(ckpts[-1])["iteration"]


def test_kill_9_at_any_moment_leaves_loadable_checkpoints_and_resume_loses_at_most_the_unsaved_steps(
    straight, tmp_path
):
    out = tmp_path / "crash"
    args = [*TINY, "--max-iters", str(N), "--save-every", "1", "--eval-every", str(N), "--keep-checkpoints", "2",
            "--out", str(out)]  # fmt: skip
    # kill 1: right after the first checkpoint appears
    proc = _start(args, tmp_path / "run1.log")
    _kill_when(proc, lambda: bool(list_checkpoints(out)))
    logged = _logged(out)
    saved = _assert_every_checkpoint_loads(out)
    assert saved >= logged - 1  # at most the step in flight is lost (it is logged before it is saved)
    # kill 2: the resumed run, at a random moment after it has made progress
    proc = _start(["--resume", "--out", str(out)], tmp_path / "run2.log")
    _kill_when(proc, lambda: _logged(out) > saved)
    time.sleep(random.Random(0).uniform(0.0, 0.5))
    logged = _logged(out)
    saved = _assert_every_checkpoint_loads(out)
    assert saved >= logged - 1
    # the last resume finishes the run: the same weights as never crashing
    with threads():
        result = job.main(["--resume", "--out", str(out)])
    assert result["iterations"] == N
    a, b = load_checkpoint(straight / checkpoint_name(N)), load_checkpoint(out / checkpoint_name(N))
    for part in ("segmentor", "policy", "objective", "optimizer", "rng"):
        assert_same_tree(a[part], b[part], part)
    assert [r["iteration"] for r in rows(out / "metrics.csv")] == [str(i) for i in range(1, N + 1)]


# ----------------------------------------------------------------------------- 4. guarded training


def tiny_trainer(**overrides) -> CoTrainer:
    base = dict(crop_size=32, batch_size=2, policy_hidden=16, attn_dim=32, num_heads=4, device="cpu", max_iters=10,
                warmup_iters=0)  # the tests read the lr of the first step
    return CoTrainer.from_config(make_config("digits", **{**base, **overrides}), 11)


def toy_batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 3, 32, 32, generator=g), torch.randint(0, 11, (2, 32, 32), generator=g)


def _state_without_counters(trainer: CoTrainer) -> dict:
    state = trainer.state_dict()  # the lr in the param groups follows the schedule (iteration count), skipped or not
    return {**{k: state[k] for k in ("segmentor", "policy", "objective")}, "optimizer": state["optimizer"]["state"]}


@pytest.mark.parametrize("fault", ["loss", "gradient"])
def test_a_nonfinite_step_changes_no_weight_optimizer_ema_baseline_or_batchnorm_statistic(fault, caplog):
    trainer = tiny_trainer()
    trainer.train_step(*toy_batch(0))  # a good step: Adam moments exist, the baseline is initialised
    before = _state_without_counters(trainer)
    if fault == "loss":  # the objective runs (and updates the baseline) before the loss turns out non-finite
        real = trainer.objective.forward

        def nan_kl(*args, **kw):
            out = real(*args, **kw)
            return {**out, "loss_kl": out["loss_kl"] * float("nan")}

        trainer.objective.forward = nan_kl
    else:  # a finite loss whose gradient is not
        trainer.policy.parameters().__next__().register_hook(lambda g: g * float("inf"))
    with caplog.at_level(logging.WARNING, logger="agents.trainer"):
        stats = trainer.train_step(*toy_batch(1))
    assert stats["skipped"] == 1.0 and trainer.skipped_iterations == [2]
    assert "iteration 2: non-finite" in caplog.text and "skipped" in caplog.text
    after = _state_without_counters(trainer)
    assert_same_tree(before, after)  # incl. running_mean/var, baseline b, pi_ref, Adam exp_avg(_sq) and step


def test_max_nonfinite_skips_in_a_row_stop_the_job_with_one_line_and_exit_code_3(tmp_path, monkeypatch, capsys):
    import segbandit.rewards

    real_call = segbandit.rewards.CompositeReward.__call__

    def nan_total(self, logits, target):
        out = real_call(self, logits, target)
        return {**out, "total": torch.full_like(out["total"], float("nan"))}

    monkeypatch.setattr(segbandit.rewards.CompositeReward, "__call__", nan_total)
    out = tmp_path / "nan"
    code = job.cli([*TINY, "--max-iters", "5", "--max-nonfinite", "2", "--save-every", "1", "--out", str(out)])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error")]
    assert code == job.EXIT_NONFINITE == 3
    assert err == [err[0]] and err[0].startswith("error: iteration 2: 2 consecutive non-finite steps (max_nonfinite=2)")
    # iteration 1 (skipped, a valid state) was saved; the iteration that gave up writes nothing
    assert [p.name for p in list_checkpoints(out)] == [checkpoint_name(1)]


def test_grad_clip_bounds_the_norm_of_the_applied_gradient():
    trainer = tiny_trainer(optimizer="sgd", momentum=0.0, weight_decay=0.0, lr=0.5, policy_lr=0.5, grad_clip=1e-3)
    params = [p for g in trainer.optimizer.param_groups for p in g["params"]]
    before = [p.detach().clone() for p in params]
    stats = trainer.train_step(*toy_batch(0))
    assert stats["grad_norm"] > 1e-3  # the raw norm, before clipping
    step = torch.sqrt(sum(((p.detach() - b) ** 2).sum() for p, b in zip(params, before)))
    torch.testing.assert_close(step / 0.5, torch.tensor(1e-3), rtol=1e-3, atol=0)


def test_too_many_nonfinite_steps_raise_nonfinite_error():
    trainer = tiny_trainer(max_nonfinite=1)
    trainer.policy.parameters().__next__().register_hook(lambda g: g * float("nan"))
    with pytest.raises(NonFiniteError, match="iteration 1: 1 consecutive non-finite steps"):
        trainer.train_step(*toy_batch(0))


# ----------------------------------------------------------------------------- 5. bad data


H, W = 24, 32
IDS = [f"2007_00000{i}" for i in range(1, 5)]


@pytest.fixture
def voc(tmp_path: Path) -> Path:
    """A tiny VOCdevkit: 4 train and 1 val image of 32x24 with index masks (classes 0..2 and 255)."""
    root = tmp_path / "data"
    v = root / "VOCdevkit" / "VOC2012"
    for d in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (v / d).mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in IDS:
        PIL.Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)).save(v / "JPEGImages" / f"{i}.jpg")
        mask = np.zeros((H, W), np.uint8)
        mask[:, W // 2 :] = 2
        mask[0] = 255
        PIL.Image.fromarray(mask).save(v / "SegmentationClass" / f"{i}.png")
    (v / "ImageSets/Segmentation/train.txt").write_text("\n".join(IDS) + "\n")
    (v / "ImageSets/Segmentation/val.txt").write_text(IDS[0] + "\n")
    return root


VOC_ARGS = ["--model", "fcn_resnet18", "--no-pretrained-backbone", "--train-split", "train", "--crop-size", "32",
            "--batch-size", "2", "--policy-hidden", "16", "--attn-dim", "32", "--num-heads", "4", "--device", "cpu",
            "--num-workers", "0", "--no-eval-stochastic", "--num-overlays", "1", "--log-every", "1"]  # fmt: skip


def _voc(root: Path) -> Path:
    return root / "VOCdevkit" / "VOC2012"


def _break(root: Path, problem: str, image_id: str = IDS[0]) -> tuple[Path, str]:
    """Damage the tree; returns (the root to pass, the text the error line must contain)."""
    v = _voc(root)
    if problem == "missing root":
        return root / "nowhere", f"{root / 'nowhere'}: PASCAL VOC root does not exist"
    if problem == "missing split file":
        (v / "ImageSets/Segmentation/val.txt").unlink()
        return root, f"{v / 'ImageSets/Segmentation/val.txt'}: split file for 'val' not found"
    if problem == "corrupt image":
        (v / "JPEGImages" / f"{image_id}.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
        return root, f"{v / 'JPEGImages' / f'{image_id}.jpg'}: cannot read image"
    if problem == "mask size":
        PIL.Image.fromarray(np.zeros((H + 2, W), np.uint8)).save(v / "SegmentationClass" / f"{image_id}.png")
        return root, f"{v / 'SegmentationClass' / f'{image_id}.png'}: mask size 32x26 (WxH) differs from image"
    if problem == "bad label":
        PIL.Image.fromarray(np.full((H, W), 37, np.uint8)).save(v / "SegmentationClass" / f"{image_id}.png")
        return root, f"{v / 'SegmentationClass' / f'{image_id}.png'}: label value 37 is neither < 21 nor 255"
    raise AssertionError(problem)


def _error_lines(capsys) -> list[str]:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return [ln for ln in err.splitlines() if ln.strip() and "it/s" not in ln and "%|" not in ln]


@pytest.mark.parametrize("problem", ["missing root", "missing split file", "corrupt image", "mask size", "bad label"])
def test_bad_data_stops_the_job_with_one_line_naming_the_file_exit_code_2_and_writes_nothing(
    voc, tmp_path, problem, capsys
):
    first = IterationBatchSampler(len(IDS), 2, seed=0).batch(0)[0]  # an image of the first training batch
    root, expected = _break(voc, problem, IDS[first])
    out = tmp_path / "out"
    code = job.cli([*VOC_ARGS, "--data-root", str(root), "--max-iters", "2", "--out", str(out)])
    lines = _error_lines(capsys)
    assert code == job.EXIT_DATA_ERROR == 2
    assert len(lines) == 1 and lines[0].startswith(f"error: {expected}"), lines
    assert not out.exists()  # checked before the output folder is touched


def test_a_corrupt_file_found_mid_run_stops_without_a_partial_checkpoint_and_resume_refuses_it(voc, tmp_path, capsys):
    sampler = IterationBatchSampler(len(IDS), 2, seed=0)
    late = IDS[next(i for i in sampler.batch(1) if i not in sampler.batch(0))]  # first read at iteration 2
    _, expected = _break(voc, "corrupt image", late)
    out = tmp_path / "out"
    args = [*VOC_ARGS, "--data-root", str(voc), "--max-iters", "4", "--save-every", "1", "--out", str(out)]
    assert job.cli(args) == 2
    assert _error_lines(capsys)[-1].startswith(f"error: {expected}")
    assert [p.name for p in list_checkpoints(out)] == [checkpoint_name(1)]  # iteration 2 never completed
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    snapshot = {p.name: p.read_bytes() for p in (out / checkpoint_name(1), out / "config.json")}
    assert job.cli(["--resume", "--out", str(out)]) == 2  # the first batch after the checkpoint holds the file
    assert _error_lines(capsys)[-1].startswith(f"error: {expected}")
    assert {p: (out / p).read_bytes() for p in snapshot} == snapshot  # nothing overwritten


def test_check_data_reads_every_sample_up_front_and_names_a_bad_file_outside_the_first_batch(voc, tmp_path, capsys):
    sampler = IterationBatchSampler(len(IDS), 2, seed=0)
    late = IDS[sampler.batch(1)[0]]  # without --check-data not read before iteration 2
    _, expected = _break(voc, "bad label", late)
    out = tmp_path / "out"
    code = job.cli([*VOC_ARGS, "--data-root", str(voc), "--max-iters", "2", "--check-data", "--out", str(out)])
    lines = _error_lines(capsys)
    assert code == 2 and len(lines) == 1 and lines[0].startswith(f"error: {expected}"), lines
    assert not out.exists()


def test_checkpoint_and_config_get_the_mode_of_the_process_umask_not_0600(tmp_path):
    import os
    import stat

    from agents.config import save_config

    old = os.umask(0o022)
    try:
        ckpt = save_checkpoint(tmp_path / checkpoint_name(1), {"x": torch.zeros(2)}, keep=None)
        save_config(make_config("digits"), tmp_path / "config.json")
    finally:
        os.umask(old)
    for path in (ckpt, tmp_path / "config.json"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


# ----------------------------------------------------------------------------- the file system refuses writes

CAN_MOUNT = os.geteuid() == 0 and shutil.which("unshare") is not None and subprocess.run(
    ["unshare", "-m", "true"], capture_output=True).returncode == 0  # fmt: skip


def _run_in_mount(mounts: str, argv: list[str], after: str = "true") -> subprocess.CompletedProcess:
    """The CLI in a private mount namespace after the shell commands ``mounts`` (root: real tmpfs / read-only
    mounts); its exit code is printed to stderr as ``EXIT=<code>``, then ``after`` runs in the same namespace."""
    cmd = " ".join([sys.executable, str(SCRIPT), *argv])
    script = f"{mounts} && {{ {cmd}; echo EXIT=$? >&2; {after}; }}"
    return subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, cwd=str(ROOT),
                          timeout=300)  # fmt: skip


def _exit_code(proc: subprocess.CompletedProcess) -> int:
    return int(next(ln for ln in proc.stderr.splitlines() if ln.startswith("EXIT="))[5:])


def test_a_read_only_out_folder_is_one_line_and_exit_2_before_any_work(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    argv = [*TINY, "--max-iters", "2", "--out", str(ro / "run")]
    if CAN_MOUNT:  # a real read-only file system
        proc = _run_in_mount(f"mount --bind {ro} {ro} && mount -o remount,bind,ro {ro}", argv)
        proc.returncode = _exit_code(proc)
        proc.stderr = "\n".join(ln for ln in proc.stderr.splitlines() if not ln.startswith("EXIT="))
    else:  # an unprivileged user: a folder without write permission
        ro.chmod(0o555)
        proc = subprocess.run([sys.executable, str(SCRIPT), *argv], capture_output=True, text=True, cwd=str(ROOT))
        ro.chmod(0o755)
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert f"--out {ro / 'run'}: cannot write there" in last and "Traceback" not in proc.stderr
    assert not (ro / "run").exists()


def test_a_full_disk_at_a_checkpoint_is_one_line_naming_the_folder_and_bytes_and_the_previous_one_survives(
    tmp_path, monkeypatch, capsys
):
    out = tmp_path / "full" / "run"
    argv = [*TINY, "--max-iters", "4", "--eval-every", "4", "--save-every", "2", "--keep-checkpoints", "2",
            "--out", str(out)]  # fmt: skip
    if CAN_MOUNT:  # a real tmpfs with room for one checkpoint of this tiny model (4.5 MB) but not for a second
        out.parent.mkdir()
        survivors = (f"{sys.executable} -c \"from agents.checkpoint import list_checkpoints, load_checkpoint; "
                     f"ps = list_checkpoints('{out}'); print('SURVIVORS', [p.name for p in ps], "
                     f"load_checkpoint(ps[-1])['iteration'])\"")  # fmt: skip
        proc = _run_in_mount(f"mount -t tmpfs -o size=7m tmpfs {out.parent}", argv, after=survivors)
        code, err = _exit_code(proc), proc.stderr.replace(f"EXIT={_exit_code(proc)}", "").strip()
        assert f"SURVIVORS ['{checkpoint_name(2)}'] 2" in proc.stdout, proc.stdout[-500:] + proc.stderr[-2000:]
    else:  # no mount namespace: torch's zip writer fails at the second checkpoint the way a full disk makes it fail
        real_save, calls = torch.save, []

        def second_save_fails(obj, f, *args, **kwargs):
            calls.append(1)
            if len(calls) >= 2:
                raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 1536 vs 1430")
            return real_save(obj, f, *args, **kwargs)

        monkeypatch.setattr(torch, "save", second_save_fails)
        code, err = job.cli(argv), capsys.readouterr().err
        assert [p.name for p in list_checkpoints(out)] == [checkpoint_name(2)]
        assert load_checkpoint(out / checkpoint_name(2))["iteration"] == 2
    assert code == job.EXIT_WRITE_ERROR == 4, err[-2000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"error: {out.resolve()}: no space left to write {checkpoint_name(4)}: it needs about ")
    assert "MB free" in last and "Traceback" not in err
