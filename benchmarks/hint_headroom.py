"""How much a policy reading z can gain on a hint-constructed segmentor (issue 14's headroom, one construction).

    python benchmarks/hint_headroom.py                           # the shipped segmentor (the hint construction)
    python benchmarks/hint_headroom.py --segmentor /tmp/hint.pt  # another, e.g. from examples/make_pretrained.py

On ``SegBanditPooled-v0`` with that segmentor, paired with the zero action on the same val scenes, it scores:

- ``hint``: the label-derived action the decoder was trained with (``agents.pretrain.presence_hint``): the most a
  policy that knows which digits an image holds can get through this decoder;
- ``fitted``: a policy that reads only the pooled latent, a logistic regression of the ten presence bits fitted on
  ``--num-train`` training scenes, acting ``+-bound`` by its sign: what inferring the hint from ``z`` buys.

The headroom is each gain in units of the reward's std across images (the bar issue 14 sets is ~0.10).
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from agents.pretrain import presence_hint  # noqa: E402
from benchmarks._common import RESULTS, finish, machine  # noqa: E402
from envs.core import SegBanditConfig, SegBanditCore  # noqa: E402
from segbandit._registration import ENV_KWARGS, POOLED_ENV_ID  # noqa: E402


def _core(segmentor: str, split: str, num_images: int, batch_size: int) -> SegBanditCore:
    cfg = SegBanditConfig(**{**ENV_KWARGS[POOLED_ENV_ID], "segmentor": segmentor, "split": split, "shuffle": False,
                             "augment": False, "paired_reward": False, "episode_length": 1,
                             "dataset_kwargs": {"num_samples": num_images}})  # fmt: skip
    core = SegBanditCore(batch_size, cfg)
    core.reset(0)
    return core


def _batches(core: SegBanditCore, num_images: int):
    """Yield once per batch of the core's fixed images (advancing between batches)."""
    batches = num_images // core.num_envs
    for b in range(batches):
        yield b
        if b + 1 < batches:
            core.advance()


def fit_presence(segmentor: str, num_train: int, batch_size: int, steps: int = 500) -> torch.nn.Module:
    """Logistic regression pooled z (B, d) -> the K - 1 presence bits, on ``num_train`` training scenes (Adam 1e-2)."""
    core = _core(segmentor, "train", num_train, batch_size)
    k, d = int(core.segmentor.num_classes), int(core.segmentor.latent_channels)
    xs, ys = [], []
    for _ in _batches(core, num_train):
        xs.append(core.observation.float().cpu())  # (B, d)
        ys.append((presence_hint(core.masks.cpu(), k, d)[:, : k - 1] > 0).float())  # (B, K - 1)
    x, y = torch.cat(xs), torch.cat(ys)
    mean, std = x.mean(0), x.std(0) + 1e-6
    model = torch.nn.Sequential(torch.nn.Linear(d, k - 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        loss = F.binary_cross_entropy_with_logits(model((x - mean) / std), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.requires_grad_(False)
    return torch.nn.Sequential(_Standardise(mean, std), model)


class _Standardise(torch.nn.Module):
    def __init__(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--segmentor", default="auto",
                        help="a hint-constructed bundle (default: the shipped one; examples/make_pretrained.py)")
    parser.add_argument("--num-train", type=int, default=1024, help="training scenes the presence model is fitted on")
    parser.add_argument("--num-images", type=int, default=128, help="val scenes scored")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0, help="seeds the presence model's initialisation")
    parser.add_argument("--out", default=str(RESULTS / "headroom_hint.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    t0 = time.time()
    info = machine(torch.device("cpu"))
    presence = fit_presence(args.segmentor, args.num_train, args.batch_size)
    core = _core(args.segmentor, "val", args.num_images, args.batch_size)
    k, d = int(core.segmentor.num_classes), int(core.segmentor.latent_channels)
    bound = float(core.config.action_bound)
    rewards: dict[str, list[torch.Tensor]] = {"zero": [], "hint": [], "fitted": []}
    correct = []
    for _ in _batches(core, args.num_images):
        hint = presence_hint(core.masks.cpu(), k, d, bound)  # (B, d)
        logits = presence(core.observation.float().cpu())  # (B, K - 1)
        fitted = torch.zeros_like(hint)
        fitted[:, : k - 1] = torch.where(logits > 0, bound, -bound)
        correct.append(((logits > 0) == (hint[:, : k - 1] > 0)).float().mean(1))
        for name, action in (("zero", core.zero_action()), ("hint", hint), ("fitted", fitted)):
            rewards[name].append(core.score(action.to(core.device))["reward"].float().cpu())
    r = {name: torch.cat(v) for name, v in rewards.items()}  # (num_images,) each
    spread = float(r["zero"].std())
    rows = {}
    for name, v in r.items():
        gain = v - r["zero"]
        rows[name] = {"reward": float(v.mean()), "gain": float(gain.mean()),
                      "gain_se": float(gain.std() / math.sqrt(gain.numel())), "gain_over_spread": float(gain.mean()) / spread}
        print(f"{name:7s} reward {rows[name]['reward']:.4f}  gain over s = 0 {rows[name]['gain']:+.4f} "
              f"± {rows[name]['gain_se']:.4f}  gain / image spread {rows[name]['gain_over_spread']:+.3f}")
    accuracy = float(torch.cat(correct).mean())
    print(f"presence bits right on val: {100 * accuracy:.1f} %; reward std across images (zero action) {spread:.4f}")
    results = {**info, "command": "python benchmarks/hint_headroom.py " + " ".join(sys.argv[1:] if argv is None else argv),
               "segmentor": args.segmentor, "rows": rows, "presence_accuracy": accuracy,
               "reward_std_images_zero": spread, "num_images": args.num_images, "wall_s": time.time() - t0}
    finish(results, args.out)
    return results


if __name__ == "__main__":
    main()
