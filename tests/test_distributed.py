"""DDP scale-out (issue 6): two CPU processes (gloo, spawned like torchrun would start them) run the main job and the
co-trainer; the ranks stay bit-identical, only rank 0 writes, and the two-rank run equals one process holding the
same global batch.

Why the comparison holds: the batch sampler gives rank r the global batch's rows r, r+2, ...; the action noise is
drawn for the global batch and sliced the same way; the CE is normalised by the global count of labelled pixels;
the EMA baseline takes the global reward mean; and ``sync_bn`` makes every batch-norm use the global batch's
statistics (``GlobalBatchNorm2d`` on CPUs).  What is left is float summation order.  Dropout draws its masks from each
process's own RNG, so the comparison sets dropout to 0 on both sides; the library-level run reads fixed images
(no random augmentation) for the same reason.  Two steps: on these flat synthetic scenes the third batch sits
near ties (ReLU / max-pool), where a 1e-7 relative change of the input changes that step's gradients by ~0.4% in
one process alone (measured), so the float-order differences of any two-process run show up there too.
"""
from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from conftest import free_port
from agents.checkpoint import checkpoint_name, list_checkpoints, load_checkpoint
from agents.config import make_config
from agents.distributed import SINGLE, DistInfo, GlobalBatchNorm2d, dist_info_from_env
from agents.trainer import CoTrainer
from segbandit.data import make_dataset

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("train_voc_bandit_ddp", ROOT / "examples" / "train_voc_bandit.py")
job = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(job)

WORLD = 2
GLOBAL_BATCH = 4
STEPS = 2
MAIN_ARGS = [
    "--crop-size", "32", "--batch-size", str(GLOBAL_BATCH), "--max-iters", "2", "--train-size", "8",
    "--val-size", "3", "--policy-hidden", "16", "--attn-dim", "32", "--num-heads", "4", "--num-overlays", "1",
    "--device", "cpu", "--num-workers", "0", "--eval-every", "2", "--save-every", "2", "--log-every", "1",
    "--no-eval-stochastic", "--sync-bn",
]  # fmt: skip


def train_library(info: DistInfo) -> dict[str, torch.Tensor]:
    """STEPS co-training steps on fixed images, this rank's rows of each global batch; dropout off; plain SGD."""
    cfg = make_config("digits", crop_size=32, batch_size=GLOBAL_BATCH, policy_hidden=16, attn_dim=32, num_heads=4,
                      device="cpu", optimizer="sgd", lr=0.01, policy_lr=0.01, momentum=0.0, max_iters=10)  # fmt: skip
    trainer = CoTrainer.from_config(cfg, 11, dist_info=info, sync_bn=info.enabled)
    for m in list(trainer.segmentor.modules()) + list(trainer.policy.modules()):
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    ds = make_dataset("digits", "val", image_size=32, num_samples=GLOBAL_BATCH * STEPS)  # eval transforms: fixed
    for t in range(STEPS):
        rows = range(t * GLOBAL_BATCH + info.rank, (t + 1) * GLOBAL_BATCH, info.world_size)
        images = torch.stack([ds[i][0] for i in rows])
        masks = torch.stack([ds[i][1] for i in rows])
        stats = trainer.train_step(images, masks)
        assert stats["skipped"] == 0.0
    state = {f"segmentor.{k}": v for k, v in trainer.segmentor.state_dict().items()}
    state.update({f"policy.{k}": v for k, v in trainer.policy.state_dict().items()})
    state["baseline"] = trainer.objective.baseline.value.clone()
    return state


def _worker(rank: int, world: int, port: int, tmp: str) -> None:
    # what torchrun exports; the main job reads these (the library does not)
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))  # fmt: skip
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        result = job.main([*MAIN_ARGS, "--out", str(Path(tmp) / "run")])
        Path(tmp, f"main_rank{rank}.json").write_text(json.dumps({k: result[k] for k in ("rank", "state_sha256")}))
        # the README's command without --sync-bn: plain batch-norms, whose running statistics differ per rank
        plain = job.main([*(a for a in MAIN_ARGS if a != "--sync-bn"), "--out", str(Path(tmp) / "run_plain_bn")])
        Path(tmp, f"plain_rank{rank}.json").write_text(json.dumps({k: plain[k] for k in ("rank", "state_sha256")}))
        torch.save(train_library(DistInfo(rank, world, rank)), Path(tmp, f"lib_rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(WORLD, free_port(), str(tmp)), nprocs=WORLD, join=True)
    return tmp


def test_both_ranks_hold_bit_identical_parameters_after_training(ddp_run):
    main = [json.loads((ddp_run / f"main_rank{r}.json").read_text()) for r in range(WORLD)]
    assert [m["rank"] for m in main] == [0, 1] and main[0]["state_sha256"] == main[1]["state_sha256"]
    a, b = (torch.load(ddp_run / f"lib_rank{r}.pt", weights_only=True) for r in range(WORLD))
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_without_sync_bn_the_run_saves_and_finishes_with_ranks_in_sync(ddp_run):
    plain = [json.loads((ddp_run / f"plain_rank{r}.json").read_text()) for r in range(WORLD)]
    assert plain[0]["state_sha256"] == plain[1]["state_sha256"]  # the buffers agree at evaluation, check and save
    out = ddp_run / "run_plain_bn"
    assert [p.name for p in list_checkpoints(out)] == [checkpoint_name(2)]
    assert "sync-bn False, ranks in sync" in (out / "final.md").read_text()
    assert load_checkpoint(out / checkpoint_name(2))["sync_bn"] is False


def test_only_rank_zero_writes_and_the_checkpoint_carries_every_ranks_rng(ddp_run):
    out = ddp_run / "run"
    assert [p.name for p in list_checkpoints(out)] == [checkpoint_name(2)]
    assert [line.split(",")[0] for line in (out / "metrics.csv").read_text().splitlines()] == ["iteration", "1", "2"]
    assert "DDP: 2 processes (gloo), global batch 4, sync-bn True, ranks in sync" in (out / "final.md").read_text()
    state = load_checkpoint(out / checkpoint_name(2))
    assert state["world_size"] == 2 and state["sync_bn"] is True and len(state["rng_per_rank"]) == 2
    assert state["data"]["global_batch_size"] == GLOBAL_BATCH
    assert not any(k.startswith("module.") for k in state["segmentor"])  # loads into a single-process run


def test_two_rank_run_equals_one_process_with_the_same_global_batch(ddp_run):
    single = train_library(SINGLE)
    ddp = torch.load(ddp_run / "lib_rank0.pt", weights_only=True)
    assert set(single) == set(ddp)
    for name, ref in single.items():
        if ref.is_floating_point():
            torch.testing.assert_close(ddp[name], ref, rtol=1e-3, atol=1e-4, msg=name)
        else:
            assert torch.equal(ddp[name], ref), name  # e.g. num_batches_tracked


def test_dist_info_comes_from_torchrun_variables_passed_in():
    assert dist_info_from_env({}) == SINGLE
    assert dist_info_from_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}) == DistInfo(3, 4, 1)
    with pytest.raises(ValueError, match="0 <= rank < world_size"):
        DistInfo(2, 2)


def test_global_batchnorm_is_a_plain_batchnorm_in_one_process():
    bn, gbn = torch.nn.BatchNorm2d(3), GlobalBatchNorm2d(3)
    x = torch.randn(4, 3, 5, 5)
    torch.testing.assert_close(gbn(x), bn(x))
    torch.testing.assert_close(gbn.running_var, bn.running_var)
