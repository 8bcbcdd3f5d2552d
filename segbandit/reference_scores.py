"""Reference scores of the SegBandit ids (as D4RL publishes them) and the normalised score they define.

Each entry is the mean reward (Eq. 15, in [0, 4]) on the first 256 val scenes of the embedded digits (64 px), with
the shipped segmentor (``segbandit.pretrained.DEFAULT_PRETRAINED``), of: the zero action, uniform random actions in
the action bound, the shipped policy (the hint construction's, ``agents.pretrain.imitate_hint``) at its mean and
sampled, and the label-aware oracle (Adam on ``s`` against the true mask, ``envs.evaluation.oracle_actions``).
Measured by ``python benchmarks/reference_scores.py`` (docs/benchmark.md); ``tests/test_benchmark_env.py``
re-measures the zero action and the policy at its mean.

``normalized_score(r) = 100 * (r - zero) / (policy_mean - zero)``: the zero action scores 0, the shipped policy 100
(with the zero action's reward on the same images, the paired gain on the reference's scale).
"""
from __future__ import annotations

from typing import Any, Union

REFERENCE_POLICIES: tuple[str, ...] = ("zero", "random", "policy_mean", "policy_sample", "oracle")
# id -> reference policy -> mean reward on the 256 fixed val scenes (filled by benchmarks/reference_scores.py)
REFERENCE_SCORES: dict[str, dict[str, float]] = {
    "SegBandit-v0": {"zero": 3.3145, "random": 3.2614, "policy_mean": 3.4477, "policy_sample": 3.4417, "oracle": 3.8246},
    "SegBanditPooled-v0": {"zero": 3.3145, "random": 3.1800, "policy_mean": 3.4435, "policy_sample": 3.3950, "oracle": 3.6924},
}


REFERENCE_LABELS: dict[str, str] = {
    "zero": "zero action (normalised score 0)",
    "random": "uniform random in the action bound",
    "policy_mean": "shipped policy at its mean (normalised score 100)",
    "policy_sample": "shipped policy, sampled",
    "oracle": "label-aware oracle",
}


def reference_table() -> str:
    """:data:`REFERENCE_SCORES` as a markdown table, a column per id (the env docstring's; README's)."""
    ids = list(REFERENCE_SCORES)
    lines = ["| policy | " + " | ".join(f"`{i}`" for i in ids) + " |", "| --- |" + " ---: |" * len(ids)]
    for name in REFERENCE_POLICIES:
        lines.append(f"| {REFERENCE_LABELS[name]} | " + " | ".join(f"{REFERENCE_SCORES[i][name]:.4f}" for i in ids) + " |")
    return "\n".join(lines)


def reference_key(config: Any) -> Union[str, None]:
    """The id whose reference scores apply to an env config (``SegBanditConfig``), or None when none do: the digits
    at 64 px with the shipped segmentor, and the id's observation and action modes."""
    from segbandit._registration import ENV_KWARGS

    shipped = (getattr(config, "dataset", None) == "digits" and getattr(config, "image_size", None) in (None, 64)
               and getattr(config, "segmentor", None) in ("auto", "digits_cotrained")
               and getattr(config, "model", None) == "fcn_resnet_tiny" and not getattr(config, "model_kwargs", None)
               and getattr(config, "modulation", None) == "attention")
    if not shipped:
        return None
    for env_id, kwargs in ENV_KWARGS.items():
        modes = (kwargs.get("obs_mode", "latent"), kwargs.get("action_mode", "dense"))
        if (config.obs_mode, config.action_mode) == modes and env_id in REFERENCE_SCORES:
            return env_id
    return None


def normalized_score(reward: float, env_id: str = "SegBanditPooled-v0", reward_zero: Union[float, None] = None) -> float:
    """100 * (reward - zero action) / (shipped policy at its mean - zero action) for ``env_id``.

    ``reward_zero``: the zero action's mean reward on the same images as ``reward`` (a paired score on other images
    than the reference's 256); default: the reference's own.
    """
    if env_id not in REFERENCE_SCORES:
        raise ValueError(f"no reference scores for {env_id!r}; ids with scores: {', '.join(sorted(REFERENCE_SCORES))}")
    ref = REFERENCE_SCORES[env_id]
    zero = ref["zero"] if reward_zero is None else float(reward_zero)
    return 100.0 * (float(reward) - zero) / (ref["policy_mean"] - ref["zero"])


__all__ = ["REFERENCE_LABELS", "REFERENCE_POLICIES", "REFERENCE_SCORES", "normalized_score", "reference_key",
           "reference_table"]
