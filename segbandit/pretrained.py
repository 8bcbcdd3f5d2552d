"""Segmentors to decode with: the shipped co-trained one, a main-job checkpoint, a plain state dict, or random weights.

``SegBandit-v0`` on the embedded digits loads :data:`DEFAULT_PRETRAINED`, a ``fcn_resnet_tiny`` co-trained with its
latent policy (channel actions) by the main job's recipe, so that its decoder relies on ``s ~ pi(z)`` and an action
changes the reward (docs/benchmark.md).  A *bundle* is what such a file holds, as tensors and plain values
(``torch.load(weights_only=True)``-safe)::

    {"format": BUNDLE_FORMAT, "segmentor": state dict, "policy": state dict or None,
     "config": the training config as a dict (architecture keys below), "num_classes": K, "meta": {...}}

A main-job checkpoint (``ckpt_*.pt``) has the same ``segmentor`` / ``policy`` / ``config`` entries, so it loads the
same way; a plain segmentor state dict takes its architecture from the caller (attention width read from the
weights).  The shipped file is rebuilt bit-for-bit by ``python examples/make_pretrained.py`` (see its docstring).
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import torch

from segbandit.models import Segmentor, build_segmentor
from segbandit.policy import LatentPolicy

BUNDLE_FORMAT = "segbandit-pretrained-1"
WEIGHTS_DIR = Path(__file__).with_name("weights")
# name -> file in WEIGHTS_DIR; read at use time, so a user's entry reaches every env
PRETRAINED: dict[str, str] = {"digits_cotrained": "digits_cotrained.pt"}
DEFAULT_PRETRAINED = "digits_cotrained"
BUILD_COMMAND = "python examples/make_pretrained.py"
# the training-config keys that fix the segmentor's and the policy's architecture
SEGMENTOR_KEYS: tuple[str, ...] = ("model", "modulation", "attn_dim", "num_heads", "signal_norm", "alpha_init")
POLICY_KEYS: tuple[str, ...] = ("policy_hidden", "policy_blocks", "policy_pool", "logstd_bound", "policy_log_std_init")

Source = Union[str, os.PathLike, Mapping[str, Any]]


@dataclass
class Bundle:
    """A segmentor's weights with what is known about how it was built (``config``) and its policy's weights."""

    segmentor: dict[str, torch.Tensor]
    policy: Union[dict[str, torch.Tensor], None] = None
    config: dict[str, Any] = field(default_factory=dict)
    num_classes: Union[int, None] = None
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"format": BUNDLE_FORMAT, "segmentor": self.segmentor, "policy": self.policy, "config": self.config,
                "num_classes": self.num_classes, "meta": self.meta}


def pretrained_path(name: str) -> Path:
    """The file of a shipped segmentor ``name`` (one of :data:`PRETRAINED`)."""
    if name not in PRETRAINED:
        raise ValueError(f"unknown pretrained segmentor {name!r}; valid names: {', '.join(sorted(PRETRAINED))}")
    path = WEIGHTS_DIR / PRETRAINED[name]
    if not path.is_file():
        raise FileNotFoundError(f"the pretrained segmentor {name!r} is missing ({path}); rebuild it with {BUILD_COMMAND}")
    return path


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def load_bundle(source: Source) -> Bundle:
    """A :class:`Bundle` from a name of :data:`PRETRAINED`, a file (bundle, ``ckpt_*.pt``, plain state dict) or a dict."""
    if isinstance(source, str) and source in PRETRAINED:
        source = pretrained_path(source)
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(
                f"segmentor {str(source)!r} is neither a file nor a pretrained name ({', '.join(sorted(PRETRAINED))})"
            )
        source = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(source, Mapping):
        raise ValueError(f"expected a bundle, a checkpoint or a state dict, got {type(source).__name__}")
    if _is_state_dict(source):
        return Bundle(segmentor=dict(source))
    if not _is_state_dict(source.get("segmentor")):
        raise ValueError(
            "expected a main-job checkpoint or a bundle (a dict with a 'segmentor' state dict) or a plain state dict, "
            f"got a dict with keys {sorted(source)[:8]}"
        )
    policy = source.get("policy")
    return Bundle(
        segmentor=dict(source["segmentor"]),
        policy=dict(policy) if _is_state_dict(policy) else None,
        config=dict(source.get("config") or {}),
        num_classes=source.get("num_classes"),
        meta=dict(source.get("meta") or {}),
    )


def _classifier_classes(state: Mapping[str, torch.Tensor]) -> int:
    """K from the last conv of the main head (``classifier.<n>.weight`` with the largest n)."""
    convs = [(int(k.split(".")[1]), v) for k, v in state.items()
             if k.startswith("classifier.") and k.endswith(".weight") and k.split(".")[1].isdigit() and v.dim() == 4]
    if not convs:
        raise ValueError("cannot tell the number of classes: the state dict has no classifier.<n>.weight conv")
    return int(max(convs, key=lambda kv: kv[0])[1].shape[0])


def segmentor_kwargs(bundle: Bundle, defaults: Mapping[str, Any]) -> dict[str, Any]:
    """``build_segmentor`` keywords: the bundle's config where it has them, else ``defaults`` and the weights' shapes."""
    cfg = {k: bundle.config[k] for k in SEGMENTOR_KEYS if k in bundle.config}
    kw = {**{k: v for k, v in defaults.items() if k in SEGMENTOR_KEYS or k == "aux_loss"}, **cfg}
    state = bundle.segmentor
    if "modulation.q_proj.weight" in state and "attn_dim" not in cfg:
        kw["attn_dim"] = int(state["modulation.q_proj.weight"].shape[0])  # the attention width is in the weights
    if "modulation" not in cfg and "alpha" not in state:
        kw["modulation"] = "none"  # only a modulated segmentor has the learnable alpha
    kw["aux_loss"] = any(k.startswith("aux_classifier.") for k in state)
    return kw


def build_from_bundle(bundle: Bundle, num_classes: Union[int, None] = None, **defaults: Any) -> Segmentor:
    """The segmentor of ``bundle`` with its weights loaded (strictly).  ``defaults``: architecture keywords for a plain
    state dict (``model``, ``modulation``, ``num_heads``, ...); a bundle's or checkpoint's own config wins."""
    k = bundle.num_classes if bundle.num_classes is not None else _classifier_classes(bundle.segmentor)
    if num_classes is not None and int(num_classes) != int(k):
        raise ValueError(f"the segmentor predicts {k} classes but the env's dataset has {num_classes}")
    kw = segmentor_kwargs(bundle, {"model": "fcn_resnet_tiny", **defaults})
    name = kw.pop("model")
    with torch.random.fork_rng(devices=[]):  # building draws an init that the weights then replace
        segmentor = build_segmentor(name, int(k), **kw)
    try:
        segmentor.load_state_dict(bundle.segmentor, strict=True)
    except RuntimeError as err:
        first = str(err).splitlines()[0]
        raise ValueError(f"the weights do not fit a {name} built with {kw}: {first}") from err
    return segmentor


def policy_from_bundle(bundle: Bundle, in_channels: int) -> Union[LatentPolicy, None]:
    """The bundle's latent policy with its weights (eval mode), or None when it holds none."""
    if bundle.policy is None:
        return None
    cfg = bundle.config
    policy = LatentPolicy(
        in_channels,
        hidden_channels=int(cfg.get("policy_hidden", 256)),
        num_blocks=int(cfg.get("policy_blocks", 4)),
        pool_size=cfg.get("policy_pool", 4),
        logstd_bound=cfg.get("logstd_bound", 4.0),
    )
    policy.load_state_dict(bundle.policy, strict=True)
    return policy.eval()


def freeze(module: torch.nn.Module) -> torch.nn.Module:
    """Eval mode and no gradients: a frozen segmentor's BatchNorm statistics never move."""
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def bundle_digest(bundle: Bundle) -> str:
    """sha256 over every tensor of the segmentor and the policy (names, dtypes, shapes, bytes), in name order."""
    h = hashlib.sha256()
    for part, state in (("segmentor", bundle.segmentor), ("policy", bundle.policy or {})):
        for name in sorted(state):
            t = state[name].detach().cpu().contiguous()
            h.update(f"{part}.{name}:{t.dtype}:{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


__all__ = [
    "BUILD_COMMAND",
    "BUNDLE_FORMAT",
    "Bundle",
    "DEFAULT_PRETRAINED",
    "PRETRAINED",
    "POLICY_KEYS",
    "SEGMENTOR_KEYS",
    "WEIGHTS_DIR",
    "build_from_bundle",
    "bundle_digest",
    "freeze",
    "load_bundle",
    "policy_from_bundle",
    "pretrained_path",
    "segmentor_kwargs",
]
