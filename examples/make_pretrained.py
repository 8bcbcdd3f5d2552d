"""Rebuild the segmentor that ``SegBandit-v0`` ships (``segbandit/weights/digits_cotrained.pt``):

    python examples/make_pretrained.py

It co-trains ``fcn_resnet_tiny`` with its latent policy by the main job's digits recipe with channel actions
(``agents.pretrain.PRETRAINED_RECIPE``, seed 0), retrains the decoder with the class-presence hint
(``--hint-steps``, ``agents.pretrain.train_on_hints``), then regresses the policy alone on that hint
(``--imitate-steps``, ``agents.pretrain.imitate_hint``), on one CPU thread, so that the same command gives the same
tensors bit for bit (it prints their sha256, ``segbandit.pretrained.bundle_digest``; the shipped file's is in its
``meta["digest"]``).  Every main-job flag is accepted (``--seed``, ``--max-iters``, ...); ``--weights`` is where
the bundle goes and ``--threads`` the intra-op threads (another count can change the last bits).

``--start-from W`` starts the later phases from existing weights instead of co-training; the segmentor shipped
before the hint construction is ``--hint-steps 0 --imitate-steps 0 --refine-steps 300`` (docs/benchmark.md), e.g.::

    python examples/make_pretrained.py --hint-steps 0 --imitate-steps 0 --refine-steps 300 --weights /tmp/v0.pt
"""
from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from agents.cli import build_parser
from agents.config import config_from_args
from agents.pretrain import HINT_PROB, HINT_STEPS, IMITATE_STEPS, PRETRAINED_RECIPE, REFINE_LR, REFINE_STEPS
from agents.pretrain import make_pretrained
from segbandit.pretrained import DEFAULT_PRETRAINED, WEIGHTS_DIR, PRETRAINED


def main(argv: list[str] | None = None) -> dict:
    parser = build_parser(prog="make_pretrained.py", description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default=str(WEIGHTS_DIR / PRETRAINED[DEFAULT_PRETRAINED]),
                        help="where the bundle is written (default: the shipped file)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1: reproducible)")
    parser.add_argument("--refine-steps", type=int, default=REFINE_STEPS,
                        help="policy-only steps through the frozen segmentor's CE, after the other phases (0 = off)")
    parser.add_argument("--refine-lr", type=float, default=REFINE_LR, help="Adam learning rate of --refine-steps")
    parser.add_argument("--hint-steps", type=int, default=HINT_STEPS,
                        help="the hint construction: decoder steps with the label-derived presence action (0 = off)")
    parser.add_argument("--hint-prob", type=float, default=HINT_PROB,
                        help="share of the images decoded with the hint during --hint-steps (the rest with s = 0)")
    parser.add_argument("--imitate-steps", type=int, default=IMITATE_STEPS,
                        help="the hint construction's policy: steps regressing the policy's mean on the hint (0 = off)")
    parser.add_argument("--start-from", default=None,
                        help="skip the co-training: start the later phases from these weights (bundle or ckpt_*.pt)")
    args = parser.parse_args(argv)
    values = {**vars(args), **{k: v for k, v in PRETRAINED_RECIPE.items() if getattr(args, k, None) is None}}
    try:
        cfg = config_from_args(values)
    except ValueError as err:
        parser.error(str(err))
    torch.set_num_threads(args.threads)
    try:
        result = make_pretrained(args.weights, cfg, refine_steps=args.refine_steps, refine_lr=args.refine_lr,
                                 hint_steps=args.hint_steps, hint_prob=args.hint_prob, imitate_steps=args.imitate_steps,
                                 start_from=args.start_from)
    except (ValueError, FileNotFoundError) as err:
        sys.exit(f"error: {err}")
    start = f"started from {args.start_from} (its val mIoU {100 * result['miou']:.2f})" if args.start_from else \
        f"val mIoU {100 * result['miou']:.2f} after {result['iterations']} iterations"
    print(f"wrote {result['path']}: {start} (co-trained tensors sha256 {result['cotrained_digest']}), then "
          f"{args.hint_steps} hint steps, {args.imitate_steps} imitation steps and {args.refine_steps} refinement steps; "
          f"sha256 of the tensors {result['digest']}")
    return result


if __name__ == "__main__":
    main()
