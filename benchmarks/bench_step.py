"""What does one co-training step cost against one plain supervised step, and what does the attention cost?

Measured side by side in one process (every repeat runs each contender once, in turn; medians compared):

1. ``CoTrainer.train_step`` (Eq. 6: segmentor with the attention modulation, latent policy, reward, clipped PPO
   and KL, one backward, one optimiser step) against one plain supervised step of the *same* segmentor built with
   ``modulation="none"``, without policy (CE + aux CE, backward, the same optimiser and schedule).  Goal: time
   <= 1.6x.  Peak memory (goal <= 1.5x) is measured in fresh subprocesses, one per contender: on CPU the peak
   resident set size (``VmHWM`` of ``/proc/self/status``: everything the process touched, torch itself and the weights
   included) and, beside it, the growth of the RSS over the process's RSS just before the first step
   (the step's own working memory: activations, gradients, optimiser state); on CUDA
   ``torch.cuda.max_memory_allocated``.  Rows: ``fcn_resnet18`` at 64 and 128 px (the digits preset, batch 8)
   and ``fcn_resnet50`` at 512 px (the ``voc-fcn-r50`` setting at the paper's attention width d = 2048, batch 1
   on CPU), skipped with the reason printed when its first step exceeds a time cap (``--cap-s``); ``--rows`` adds
   fcn_resnet18 at attn_dim = d and fcn_resnet50 at attn_dim 512 (the width the ``voc-fcn-r50`` preset uses).
2. The shares of the co-training step: the attention modulation's forward + backward alone, the policy's
   forward + the objective (PPO + KL) + their backward, and the reward, each timed in isolation on tensors of
   the step's shapes.
3. Where the cost goes at VOC size (64 x 64 tokens, d = 2048), device-independently: floating-point operations
   of one forward + backward per image counted with ``torch.utils.flop_counter.FlopCounterMode`` on the meta
   device (no compute), for the attention's inner width ``attn_dim`` in {2048 (= d, the paper), 1024, 512, 256},
   and, at reduced scale (32 x 32 tokens, d = 2048), the measured CPU time of the modulation for the same widths
   to check that time follows the FLOP counts.
4. ``--attn-accuracy``: what a reduced width costs in accuracy, at digits scale: the digits main job
   (``examples/train_voc_bandit.py``, digits preset, 600 iterations and seeds 0,1 unless told otherwise) with
   attn_dim = d = 512 against attn_dim = 128 (the same 4x reduction as 2048 -> 512 at VOC size); results are
   cached per (setting, seed) in ``benchmarks/results/bench_step_attn_accuracy.json``, so a re-run resumes.

On a GPU, ``--device cuda --preset voc-fcn-r50`` runs the paper's setting: 512 px, batch 8, bf16 autocast, at the
paper's attention width and the preset's 512, and records iterations per second and peak GPU memory of both steps.

    python benchmarks/bench_step.py                                   # CPU rows + FLOP table, ~5-7 min on 2 quiet cores
    python benchmarks/bench_step.py --threads 1 --cap-s 150           # on a shared machine (no thread oversubscription)
    python benchmarks/bench_step.py --device cuda --preset voc-fcn-r50  # on a GPU
    python benchmarks/bench_step.py --attn-accuracy --threads 1       # digits accuracy, full vs reduced width
    python benchmarks/bench_step.py --transformers                    # Segformer / SETR rows (add --device cuda on a GPU)
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from segbandit.constants import IGNORE_INDEX  # noqa: E402
from segbandit.models import aux_heads  # noqa: E402
from _common import RESULTS, finish, interleaved, load_note, machine, summary, sync, timed  # noqa: E402

ATTN_DIMS_VOC: tuple[int, ...] = (2048, 1024, 512, 256)


# ----------------------------------------------------------------------------- the rows


@dataclasses.dataclass
class Row:
    """One measured setting: a preset with the model, image size, batch and attention width overridden."""

    name: str
    preset: str
    model: str
    size: int
    batch: int
    num_classes: int
    attn_dim: Optional[int] = None  # None = the preset's value
    num_heads: Optional[int] = None
    use_preset_attn: bool = True
    amp: bool = True

    def config(self, device: torch.device):
        from agents.config import make_config

        over: dict[str, Any] = dict(model=self.model, crop_size=self.size, batch_size=self.batch,
                                    pretrained_backbone=False, device=str(device), amp=self.amp,
                                    max_iters=1_000_000, num_workers=0)
        if not self.use_preset_attn:
            over["attn_dim"] = self.attn_dim
        if self.num_heads is not None:
            over["num_heads"] = self.num_heads
        return make_config(self.preset, **over)


def cpu_rows() -> list[Row]:
    return [
        Row("fcn_resnet18 64px B8 (digits preset, attn_dim 128)", "digits", "fcn_resnet18", 64, 8, 11),
        Row("fcn_resnet18 128px B8 (digits preset, attn_dim 128)", "digits", "fcn_resnet18", 128, 8, 11),
        Row("fcn_resnet18 128px B8 (attn_dim = d = 512)", "digits", "fcn_resnet18", 128, 8, 11,
            attn_dim=None, use_preset_attn=False),
        Row("fcn_resnet50 512px B1 (voc-fcn-r50, attn_dim = d = 2048, the paper)", "voc-fcn-r50", "fcn_resnet50", 512,
            1, 21, attn_dim=None, num_heads=8, use_preset_attn=False),
        # not in the default run (--rows 4): the reduced width that the voc-fcn-r50 preset uses
        Row("fcn_resnet50 512px B1 (voc-fcn-r50 preset: attn_dim 512, 8 heads)", "voc-fcn-r50", "fcn_resnet50", 512,
            1, 21, attn_dim=512, num_heads=8, use_preset_attn=False),
    ]


DEFAULT_CPU_ROWS = "0,1,3"


def transformer_rows(gpu: bool, batch: int) -> list[Row]:
    """``--transformers``: the Segformer and SETR presets' models, each at the paper's attention width d.

    CPU: the CPU-sized ones at the digits scale (64 px, batch 16) and MiT-B1 / B3 / ViT-L at 256 px, batch 2 / 2 / 1
    (a CPU-affordable size); GPU: each at 512 px, batch ``batch``, bf16.
    """
    if gpu:
        return [Row(f"{m} 512px B{batch} bf16 ({p}, attn_dim = d)", p, m, 512, batch, 21, attn_dim=None,
                    use_preset_attn=False)
                for m, p in (("segformer_mit_b1", "voc-segformer-b1"), ("segformer_mit_b3", "voc-segformer-b3"),
                             ("setr_naive_vit_l16", "voc-setr-vit-l"))]  # fmt: skip
    return [
        Row("segformer_mit_b0 64px B16 (digits-segformer-b0)", "digits-segformer-b0", "segformer_mit_b0", 64,
            16, 11),
        Row("setr_naive_vit_tiny 64px B16 (digits-setr-tiny)", "digits-setr-tiny", "setr_naive_vit_tiny", 64, 16, 11),
        Row("segformer_mit_b1 256px B2 (voc-segformer-b1, attn_dim = d = 512)", "voc-segformer-b1", "segformer_mit_b1",
            256, 2, 21),
        Row("segformer_mit_b3 256px B2 (voc-segformer-b3, attn_dim = d = 512)", "voc-segformer-b3", "segformer_mit_b3",
            256, 2, 21),
        Row("setr_naive_vit_l16 256px B1 (voc-setr-vit-l, attn_dim = d = 1024)", "voc-setr-vit-l", "setr_naive_vit_l16",
            256, 1, 21),
    ]  # fmt: skip


def gpu_rows(batch: int, attn_dims: list[str]) -> list[Row]:
    """The voc-fcn-r50 rows at each width: ``"preset"`` (the preset's 512), ``"d"`` (= 2048, the paper) or a number."""
    rows = []
    for a in attn_dims:
        label = {"preset": "preset, attn_dim 512", "d": "attn_dim = d = 2048, the paper"}.get(a, f"attn_dim {a}")
        width = None if a in ("preset", "d") else int(a)
        rows.append(Row(f"fcn_resnet50 512px B{batch} bf16 (voc-fcn-r50, {label})", "voc-fcn-r50", "fcn_resnet50",
                        512, batch, 21, attn_dim=width, use_preset_attn=a == "preset"))
    return rows


def make_batch(row: Row, device: torch.device, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random images (B, 3, S, S) and block-structured int64 labels (B, S, S) with ~5% void; content does not
    change the cost."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(row.batch, 3, row.size, row.size, generator=g)
    cells = max(row.size // 16, 1)
    coarse = torch.randint(0, row.num_classes, (row.batch, 1, cells, cells), generator=g).float()
    masks = F.interpolate(coarse, size=(row.size, row.size), mode="nearest").squeeze(1).long()  # (B, S, S)
    masks[torch.rand(masks.shape, generator=g) < 0.05] = IGNORE_INDEX
    return images.to(device), masks.to(device)


class PlainStep:
    """One supervised step of the same segmentor without modulation and policy: CE + aux CE, backward, step."""

    def __init__(self, cfg, num_classes: int, device: torch.device) -> None:
        from agents.trainer import build_optimizer, build_scheduler, seed_everything, segmentor_groups
        from segbandit.models import build_segmentor

        seed_everything(cfg.seed)
        self.cfg = cfg
        self.segmentor = build_segmentor(cfg.model, num_classes, modulation="none",
                                         pretrained_backbone=cfg.pretrained_backbone, aux_loss=cfg.aux_weight > 0)
        self.segmentor.to(device).train()
        self.optimizer = build_optimizer(cfg, segmentor_groups(self.segmentor, cfg))
        self.scheduler = build_scheduler(cfg, self.optimizer)
        amp = device.type == "cuda" and cfg.amp
        self.autocast = torch.autocast("cuda", dtype=torch.bfloat16) if amp else contextlib.nullcontext()

    def __call__(self, images: torch.Tensor, masks: torch.Tensor) -> float:
        self.optimizer.zero_grad(set_to_none=True)
        size = tuple(masks.shape[-2:])
        with self.autocast:
            feats = self.segmentor.features(images)
            logits = self.segmentor.decode(feats["out"], None, out_size=size, skips=self.segmentor.skips(feats))
            aux = self.segmentor.decode_aux(feats["aux"], size) if self.cfg.aux_weight > 0 and "aux" in feats else None
        loss = F.cross_entropy(logits.float(), masks, ignore_index=IGNORE_INDEX)  # Eq. 2
        for head in aux_heads(aux) if aux is not None else ():
            loss = loss + self.cfg.aux_weight * F.cross_entropy(head.float(), masks, ignore_index=IGNORE_INDEX)
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        return float(loss.detach())


def build(row: Row, kind: str, device: torch.device) -> Callable[[torch.Tensor, torch.Tensor], Any]:
    """The step function of ``kind`` ("cotrain" or "plain") for ``row``, built from the row's config."""
    cfg = row.config(device)
    if kind == "plain":
        return PlainStep(cfg, row.num_classes, device)
    from agents.trainer import CoTrainer

    trainer = CoTrainer.from_config(cfg, row.num_classes, device=device)
    return trainer.train_step


def component_fns(trainer, images: torch.Tensor, masks: torch.Tensor) -> dict[str, Callable[[], Any]]:
    """The co-training step's parts in isolation, on tensors of the step's shapes (forward + backward each)."""
    from segbandit.policy import sample_action

    seg, device = trainer.segmentor, images.device
    with torch.no_grad(), trainer.transition.autocast:
        feats = seg.features(images)
        logits = seg.decode(feats["out"], torch.zeros_like(feats["out"]), out_size=tuple(masks.shape[-2:]),
                            skips=seg.skips(feats))
    z = feats["out"].detach()  # (B, d, h, w)
    g = torch.Generator(device=device).manual_seed(0)
    signal = torch.randn(z.shape, generator=g, device=device, dtype=z.dtype)
    grad = torch.randn(z.shape, generator=g, device=device, dtype=z.dtype)
    reward = torch.rand(z.shape[0], generator=g, device=device) * 4

    def modulation() -> None:
        zz = z.clone().requires_grad_(True)
        with trainer.transition.autocast:
            m = seg.modulation(zz, signal)  # (B, d, h, w)
        m.backward(grad.to(m.dtype))

    def policy_objective() -> None:
        z_pol = z.float()
        mu, log_std = trainer.policy(z_pol)  # (B, d)
        action = sample_action(mu, log_std, tuple(z.shape[-2:]), generator=g)
        out = trainer.objective(z_pol, action.detach(), reward, mu.detach(), log_std.exp().detach())
        (out["loss_policy"] + out["loss_kl"]).backward()

    def reward_fn() -> None:
        trainer.reward_fn(logits, masks)

    fns: dict[str, Callable[[], Any]] = {}
    if seg.modulation is not None:
        fns["modulation fwd+bwd"] = modulation
    fns["policy+objective fwd+bwd"] = policy_objective
    fns["reward"] = reward_fn
    return fns


# ----------------------------------------------------------------------------- memory in fresh processes


def _status_mb(field: str) -> float:
    """A memory field of /proc/self/status (VmRSS: now; VmHWM: peak since this process image started) in MiB."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0  # kB
    raise RuntimeError(f"no {field} in /proc/self/status")


def probe(spec: dict[str, Any]) -> dict[str, Any]:
    """Run ``steps`` steps of one kind in this (fresh) process and report its memory."""
    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    device = torch.device(spec["device"])
    row = Row(**spec["row"])
    step = build(row, spec["kind"], device)
    images, masks = make_batch(row, device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    before = _status_mb("VmRSS") if device.type == "cpu" else None
    t = time.perf_counter()
    for _ in range(int(spec["steps"])):
        step(images, masks)
    sync(device)
    out = {"step_s": (time.perf_counter() - t) / int(spec["steps"])}
    if device.type == "cuda":
        out["peak_gpu_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        out["rss_before_mb"] = before
        # VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss over fork + exec, so a child would report
        # the parent's peak; VmHWM belongs to this process image only
        out["peak_rss_mb"] = _status_mb("VmHWM")
    return out


def memory(row: Row, kind: str, device: torch.device, steps: int, threads: Optional[int]) -> dict[str, Any]:
    """Peak memory of ``steps`` steps of ``kind`` in a fresh subprocess (so neither contender sees the other's)."""
    spec = {"row": dataclasses.asdict(row), "kind": kind, "device": str(device), "steps": steps, "threads": threads}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--probe", json.dumps(spec)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=str(ROOT))
    for line in proc.stdout.splitlines():
        if line.startswith("PROBE "):
            return json.loads(line[len("PROBE "):])
    tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
    raise RuntimeError(f"memory probe for {row.name} ({kind}) failed with exit code {proc.returncode}: {tail}")


# ----------------------------------------------------------------------------- 1 + 2: the measured rows


def measure_row(row: Row, device: torch.device, repeats: int, warmup: int, cap_s: float, threads: Optional[int],
                memory_steps: int) -> dict[str, Any]:
    """Time ratio (interleaved), component shares, and peak memory ratio (fresh processes) of one row."""
    res: dict[str, Any] = {"row": dataclasses.asdict(row)}
    images, masks = make_batch(row, device)
    from agents.trainer import CoTrainer

    cfg = row.config(device)
    trainer = CoTrainer.from_config(cfg, row.num_classes, device=device)
    plain = PlainStep(cfg, row.num_classes, device)
    res["attn_dim"] = getattr(trainer.segmentor.modulation, "attn_dim", None)
    res["num_heads"] = getattr(trainer.segmentor.modulation, "num_heads", None)

    first = timed(lambda: trainer.train_step(images, masks), device)  # also the warm-up of the co-training step
    res["first_cotrain_step_s"] = first
    if first > cap_s:
        res["skipped"] = (f"the first co-training step took {first:.0f} s > cap {cap_s:.0f} s (--cap-s); "
                          "measure it on a quieter or bigger machine")
        return res
    # keep a slow row's timing near 3 x cap: a round (co-training + plain step) costs about 1.6 x the first step
    budget = max(1, min(repeats, int(3 * cap_s / max(first * 1.6, 1e-6)) - 1))
    res["repeats"] = budget
    t = interleaved({"cotrain": lambda: trainer.train_step(images, masks), "plain": lambda: plain(images, masks)},
                    device, budget, warmup=max(warmup - 1, 0) + 1)
    res["times"] = {k: summary(v) for k, v in t.items()}
    res["time_ratio"] = res["times"]["cotrain"]["median_s"] / res["times"]["plain"]["median_s"]
    res["time_ratio_min"] = res["times"]["cotrain"]["min_s"] / res["times"]["plain"]["min_s"]
    parts = interleaved(component_fns(trainer, images, masks), device, budget, warmup=1 if first < cap_s / 4 else 0)
    res["parts"] = {k: summary(v) for k, v in parts.items()}
    co = res["times"]["cotrain"]["median_s"]
    res["shares"] = {k: v["median_s"] / co for k, v in res["parts"].items()}
    if device.type == "cuda":
        res["iterations_per_s"] = {k: 1.0 / v["median_s"] for k, v in res["times"].items()}
    del trainer, plain
    if device.type == "cuda":
        torch.cuda.empty_cache()  # the probes run in their own processes on the same GPU
    if memory_steps > 0:
        mem = {k: memory(row, k, device, memory_steps, threads) for k in ("cotrain", "plain")}
        res["memory"] = mem
        if device.type == "cuda":
            res["memory_ratio"] = mem["cotrain"]["peak_gpu_mb"] / mem["plain"]["peak_gpu_mb"]
        else:
            res["memory_ratio"] = mem["cotrain"]["peak_rss_mb"] / mem["plain"]["peak_rss_mb"]
            growth = {k: m["peak_rss_mb"] - m["rss_before_mb"] for k, m in mem.items()}
            res["memory_growth_mb"] = growth
            res["memory_growth_ratio"] = growth["cotrain"] / growth["plain"]
    return res


# ----------------------------------------------------------------------------- 3: the attention at VOC size


def flop_table(size: int = 512, num_classes: int = 21, attn_dims: tuple[int, ...] = ATTN_DIMS_VOC) -> dict[str, Any]:
    """FLOPs of one forward + backward per image at ``size`` px for FCN-R50 (plain vs co-training parts).

    Counted on the meta device (shapes only, nothing computed): plain = segmentor without modulation, CE + aux;
    co-training = segmentor with the attention modulation (attn_dim as given) + the latent policy (digits/VOC
    presets: hidden 256, 4 blocks) forward and backward.  The PPO/KL objective and the reward act on (B, d)
    parameters and label maps and are negligible in FLOPs.
    """
    from torch.utils.flop_counter import FlopCounterMode

    from segbandit.models import build_segmentor
    from segbandit.policy import LatentPolicy

    def count(modulation: str, attn_dim: Optional[int]) -> dict[str, float]:
        with torch.device("meta"):
            seg = build_segmentor("fcn_resnet50", num_classes, modulation=modulation, attn_dim=attn_dim)
            x = torch.randn(1, 3, size, size)
            y = torch.randint(0, num_classes, (1, size, size))
            policy = LatentPolicy(seg.latent_channels, hidden_channels=256, num_blocks=4, pool_size=4) \
                if modulation != "none" else None
            counter = FlopCounterMode(display=False)
            with counter:
                feats = seg.features(x)
                z = feats["out"]
                s = None
                loss = torch.zeros(())
                if policy is not None:
                    mu, log_std = policy(z.detach())
                    s = mu[:, :, None, None] + log_std.exp()[:, :, None, None] * torch.randn_like(z)
                    loss = loss + (mu.square().mean() + log_std.square().mean())  # stands in for PPO + KL
                logits = seg.decode(z, s, out_size=(size, size))
                aux = seg.decode_aux(feats["aux"], (size, size))
                loss = loss + F.cross_entropy(logits, y) + 0.4 * F.cross_entropy(aux, y)
                loss.backward()
        total = counter.get_total_flops() / 1e9
        if modulation == "none":
            return {"total": total}
        # the parts counted alone (a module tracker's split of the backward pass is imprecise)
        with torch.device("meta"):
            zz = torch.randn_like(z).requires_grad_(True)
            ss = torch.randn_like(z).requires_grad_(True)
            counter = FlopCounterMode(display=False)
            with counter:
                seg.modulation(zz, ss).sum().backward()
            mod = counter.get_total_flops() / 1e9
            counter = FlopCounterMode(display=False)
            with counter:
                mu, log_std = policy(torch.randn_like(z))
                (mu.sum() + log_std.sum()).backward()
            pol = counter.get_total_flops() / 1e9
        return {"total": total, "modulation": mod, "policy": pol}

    plain = count("none", None)
    rows = []
    for a in attn_dims:
        c = count("attention", a)
        rows.append({"attn_dim": a, **c, "ratio_to_plain": c["total"] / plain["total"],
                     "modulation_share": c["modulation"] / c["total"],
                     "modulation_over_plain": c["modulation"] / plain["total"],
                     "head_widening_and_rest": c["total"] - plain["total"] - c["modulation"] - c["policy"]})
    tokens = (size // 8) ** 2
    return {"size": size, "tokens": tokens, "latent_channels": 2048, "plain": plain, "rows": rows,
            "unit": "GFLOP per image, forward + backward"}


def attention_scan(tokens_side: int, attn_dims: tuple[int, ...], device: torch.device, repeats: int,
                   heads: int = 8) -> dict[str, Any]:
    """Measured forward + backward time of the attention modulation alone at d = 2048, B = 1, side x side tokens,
    against the FLOPs counted for it; times relative to attn_dim = d."""
    from torch.utils.flop_counter import FlopCounterMode

    from segbandit.modulation import AttentionModulation

    torch.manual_seed(0)
    z = torch.randn(1, 2048, tokens_side, tokens_side, device=device)
    s = torch.randn_like(z)
    g = torch.randn_like(z)
    mods = {a: AttentionModulation(2048, attn_dim=a, num_heads=heads).to(device).train() for a in attn_dims}

    def run(a: int) -> Callable[[], None]:
        def fn() -> None:
            zz = z.clone().requires_grad_(True)
            mods[a](zz, s).backward(g)
        return fn

    flops = {}
    for a in attn_dims:
        counter = FlopCounterMode(display=False)
        with counter:
            run(a)()
        flops[a] = counter.get_total_flops() / 1e9
    t = interleaved({a: run(a) for a in attn_dims}, device, repeats)
    base = statistics.median(t[attn_dims[0]])
    rows = [{"attn_dim": a, "num_heads": heads, **summary(t[a]), "time_rel": statistics.median(t[a]) / base,
             "gflop": flops[a], "flop_rel": flops[a] / flops[attn_dims[0]]} for a in attn_dims]
    return {"tokens": tokens_side ** 2, "latent_channels": 2048, "rows": rows}


# ----------------------------------------------------------------------------- accuracy of a reduced attention

ATTN_SETTINGS: dict[str, tuple[Optional[int], int]] = {
    "full (attn_dim = d = 512, 8 heads)": (512, 8),
    "reduced (attn_dim = 128, 8 heads; digits preset)": (128, 8),
}


def _same_budget(run: dict[str, Any], max_iters: int, val_size: int) -> bool:
    """Whether a cached run used ``max_iters`` iterations and ``val_size`` val scenes (read from its argv)."""
    argv = run.get("argv", [])
    flags = dict(zip(argv[::2], argv[1::2]))
    return flags.get("--max-iters") == str(max_iters) and flags.get("--val-size") == str(val_size)


def attn_accuracy(seeds: list[int], max_iters: int, val_size: int, out: Path) -> dict[str, Any]:
    """Val mIoU of the digits main job with the full vs the reduced attention width, per seed (cached in ``out``)."""
    from examples.train_voc_bandit import main as train_main

    results: dict[str, Any] = json.loads(out.read_text()) if out.exists() else {}
    results.setdefault("runs", {})
    results.update(machine(torch.device("cpu")), max_iters=max_iters, val_size=val_size, seeds=seeds)
    for seed in seeds:
        for name, (attn_dim, heads) in ATTN_SETTINGS.items():
            key = f"{name} | seed {seed}"
            if key in results["runs"] and _same_budget(results["runs"][key], max_iters, val_size):
                continue  # cached (the same setting, seed and budget)
            with tempfile.TemporaryDirectory(prefix="bench_attn_") as tmp:
                # the digits preset as these runs were first made (64 px, batch 8, policy lr 1e-6), pinned so that a
                # later change of the preset does not mix results of two settings in the cache
                argv = ["--preset", "digits", "--crop-size", "64", "--batch-size", "8", "--policy-lr", "1e-6",
                        "--seed", str(seed), "--max-iters", str(max_iters),
                        "--eval-every", str(max_iters), "--save-every", str(max_iters), "--val-size", str(val_size),
                        "--attn-dim", str(attn_dim), "--num-heads", str(heads), "--num-overlays", "0",
                        "--out", str(Path(tmp) / "run")]
                t = time.time()
                res = train_main(argv)
                wall = time.time() - t
            results["runs"][key] = {"setting": name, "attn_dim": attn_dim, "num_heads": heads, "seed": seed,
                                    "miou": res["miou"], "miou_sampled": res.get("miou_sampled"),
                                    "wall_s": wall, "argv": argv, "load_average": list(os.getloadavg())}
            finish(results, out)
    table = {}
    for name in ATTN_SETTINGS:
        vals = [r["miou"] for r in results["runs"].values()
                if r["setting"] == name and r["seed"] in seeds and _same_budget(r, max_iters, val_size)]
        table[name] = {"mean": statistics.mean(vals), "std": statistics.stdev(vals) if len(vals) > 1 else math.nan,
                       "n": len(vals), "values": vals}
    results["table"] = table
    finish(results, out)
    print(f"val mIoU (s = mu) on {val_size} digit scenes after {max_iters} iterations, seeds {seeds}; {load_note(results)}")
    for name, r in table.items():
        print(f"  {name:52s} {r['mean']:.4f} ± {r['std']:.4f}  ({', '.join(f'{v:.4f}' for v in r['values'])})")
    return results


def print_rows(rows: list[dict[str, Any]], gpu: bool) -> None:
    print("1. co-training step / plain supervised step (same segmentor without modulation and policy); "
          "goals: time <= 1.6x, memory <= 1.5x")
    print("   row                                                               time (median)  time (min)  "
          "mem: peak     mem: step growth   repeats")
    for r in rows:
        name = r["row"]["name"]
        if "skipped" in r:
            print(f"   {name:65s} skipped: {r['skipped']}")
            continue
        if "memory_ratio" not in r:  # --memory-steps 0
            mem, growth = f"{'-':>10s}", f"{'(not measured)':>15s}"
        else:
            mem = f"{r['memory_ratio']:9.2f}x"
            growth = (f"{r['memory_growth_ratio']:14.2f}x" if "memory_growth_ratio" in r
                      else f"{'(GPU: peak allocated)':>15s}")
        extra = ""
        if gpu:
            ips = r["iterations_per_s"]
            m = r.get("memory", {})
            extra = (f"   cotrain {ips['cotrain']:.2f} it/s, {m.get('cotrain', {}).get('peak_gpu_mb', math.nan) / 1024:.1f} GiB; "
                     f"plain {ips['plain']:.2f} it/s, {m.get('plain', {}).get('peak_gpu_mb', math.nan) / 1024:.1f} GiB")
        print(f"   {name:65s} {r['time_ratio']:12.2f}x {r['time_ratio_min']:10.2f}x  {mem}  {growth}   "
              f"{r['repeats']:7d}{extra}")
    print("2. shares of the co-training step's time (parts timed alone, forward + backward; median / step median)")
    for r in rows:
        if "shares" in r:
            parts = ", ".join(f"{k} {100 * v:.1f}%" for k, v in r["shares"].items())
            print(f"   {r['row']['name']:65s} {parts}")


def print_flops(ft: dict[str, Any], scan: Optional[dict[str, Any]]) -> None:
    p = ft["plain"]
    print(f"3a. FCN-R50 at {ft['size']} px ({ft['tokens']} tokens of d = 2048), {ft['unit']} (meta-device count); "
          f"plain step {p['total']:.0f}")
    print("    attn_dim   co-train total   / plain   modulation   share of co-train   modulation / plain step   policy"
          "   widened head")
    for r in ft["rows"]:
        print(f"    {r['attn_dim']:8d}   {r['total']:14.0f}   {r['ratio_to_plain']:6.2f}x   {r['modulation']:10.0f}   "
              f"{100 * r['modulation_share']:16.1f}%   {r['modulation_over_plain']:22.2f}x   {r['policy']:6.0f}"
              f"   {r['head_widening_and_rest']:12.0f}")
    if scan is not None:
        print(f"3b. the modulation alone at reduced scale ({scan['tokens']} tokens, d = 2048, B = 1): measured time vs "
              "counted FLOPs, relative to attn_dim = d")
        print("    attn_dim  heads   time rel.   FLOP rel.   GFLOP")
        for r in scan["rows"]:
            print(f"    {r['attn_dim']:8d}  {r['num_heads']:5d}   {r['time_rel']:9.2f}   {r['flop_rel']:9.2f}   {r['gflop']:6.1f}")


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description="Co-training step vs plain supervised step: time, memory, attention share")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--preset", choices=["digits", "voc-fcn-r50"], default=None,
                   help="voc-fcn-r50: only the paper's setting (512 px, batch --batch-size, bf16 on CUDA); "
                        "default: the CPU rows (digits preset at 64/128 px and FCN-R50 at 512 px, batch 1)")
    p.add_argument("--batch-size", type=int, default=8, help="batch of the voc-fcn-r50 row")
    p.add_argument("--attn-dims", default="d,preset",
                   help="voc-fcn-r50 rows: attention widths to run ('preset' = the preset's 512, 'd' = 2048, the paper)")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats per row (fewer for slow rows)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--cap-s", type=float, default=45.0,
                   help="skip a row whose first co-training step takes longer than this (seconds)")
    p.add_argument("--memory-steps", type=int, default=2, help="steps per memory probe (0 = no memory probes)")
    p.add_argument("--rows", default=DEFAULT_CPU_ROWS,
                   help="CPU rows to run, 0-based comma-separated indices: 0-1 fcn_resnet18 64/128 px (digits preset), "
                        "2 the same at attn_dim = d, 3 fcn_resnet50 512 px at attn_dim = d = 2048 (the paper), 4 the same "
                        f"at attn_dim 512 (the voc-fcn-r50 preset) (default {DEFAULT_CPU_ROWS})")
    p.add_argument("--transformers", action="store_true",
                   help="the Segformer / SETR rows instead (CPU: tiny ones at 64 px, MiT-B1/B3 and ViT-L at 256 px; "
                        "CUDA: each at 512 px, batch --batch-size, bf16); implies --no-flops")
    p.add_argument("--no-flops", action="store_true", help="skip part 3 (FLOP table and the reduced-scale scan)")
    p.add_argument("--scan-side", type=int, default=32, help="part 3b: tokens per side of the measured scan")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--out", default=None, help="JSON output (default benchmarks/results/bench_step.json)")
    p.add_argument("--attn-accuracy", action="store_true", help="part 4: digits accuracy, full vs reduced attn_dim")
    p.add_argument("--seeds", default="0,1", help="--attn-accuracy: seeds")
    p.add_argument("--max-iters", type=int, default=600, help="--attn-accuracy: iterations per run")
    p.add_argument("--val-size", type=int, default=256, help="--attn-accuracy: val scenes")
    p.add_argument("--probe", default=None, help=argparse.SUPPRESS)  # internal: one memory probe (JSON spec)
    args = p.parse_args(argv)

    if args.probe is not None:
        print("PROBE " + json.dumps(probe(json.loads(args.probe))), flush=True)
        return {}
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit(f"error: --device {args.device} needs a CUDA GPU but torch.cuda.is_available() is False on this "
                 "machine; run the GPU rows on a GPU machine, or use --device cpu")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.attn_accuracy:
        seeds = [int(s) for s in args.seeds.split(",")]
        out = Path(args.out or RESULTS / "bench_step_attn_accuracy.json")
        return attn_accuracy(seeds, args.max_iters, args.val_size, out)

    device = torch.device(args.device)
    gpu = device.type == "cuda"
    results: dict[str, Any] = {**machine(device),
                               "command": "python benchmarks/bench_step.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                               "memory_method": ("torch.cuda.max_memory_allocated per contender, fresh process each" if gpu else
                                                 "peak RSS (VmHWM) of a fresh process per contender; 'growth' = peak RSS "
                                                 "minus the RSS just before the first step"),
                               "memory_steps": args.memory_steps}
    print(f"device: {results['device']}, torch threads {results['torch_threads']}; {load_note(results)}")
    if args.transformers:
        rows = transformer_rows(gpu, args.batch_size)
        args.no_flops = True
    elif args.preset == "voc-fcn-r50":
        rows = gpu_rows(args.batch_size, args.attn_dims.split(","))
    else:
        rows = cpu_rows()
        rows = [rows[int(i)] for i in args.rows.split(",")]
    measured = []
    for row in rows:
        t = time.time()
        r = measure_row(row, device, args.repeats, args.warmup, args.cap_s, args.threads, args.memory_steps)
        r["wall_s"] = time.time() - t
        measured.append(r)
        print(f"   measured {row.name} in {r['wall_s']:.0f} s", flush=True)
    results["rows"] = measured
    print_rows(measured, gpu)
    if not args.no_flops:
        ft = flop_table()
        results["flops_voc"] = ft
        scan = attention_scan(args.scan_side, ATTN_DIMS_VOC, device, repeats=3)
        results["attention_scan"] = scan
        print_flops(ft, scan)
    finish(results, args.out or RESULTS / ("bench_step_transformers.json" if args.transformers else "bench_step.json"))
    return results


if __name__ == "__main__":
    main()
