"""``LatentGaussian``: the policy's action distribution as a ``torch.distributions.Distribution``.

One Gaussian per latent channel (parameters ``loc``, ``scale`` of shape (B, d)); the action is either dense
(B, d, h, w), every position drawing its own noise around its channel's mean (Eq. 11), or per channel (B, d).
``log_prob`` reduces over every action element by ``"sum"`` (Eq. 12) or ``"mean"``; ``entropy`` and the
closed-form KL (registered with ``torch.distributions.kl``) use the same convention, so the PPO ratio, the
KL penalty of Eq. 5 and TorchRL's ``KLPENPPOLoss`` all see one consistent distribution.

Batch shape is (B,), event shape the action's shape without B, so it plugs into TorchRL's
``ProbabilisticActor`` as is.  All log-probabilities, entropies and KLs come out in float32.
"""
from __future__ import annotations

import torch
from torch.distributions import Distribution, constraints
from torch.distributions.kl import register_kl

from segbandit.policy import (
    REDUCTIONS,
    gaussian_entropy,
    gaussian_kl,
    gaussian_log_prob,
    gaussian_log_prob_elements,
    sample_action,
)


def _spatial(spatial_size: tuple[int, int] | None, spatial_like: torch.Tensor | None) -> tuple[int, int] | None:
    """The (h, w) of a dense action: given directly, or read from a (B, C, h, w) tensor such as the latents."""
    if spatial_size is not None:
        size = tuple(int(s) for s in spatial_size)
        if len(size) != 2 or min(size) < 1:
            raise ValueError(f"expected spatial_size (h, w) with positive entries, got {spatial_size!r}")
        return size  # type: ignore[return-value]
    if spatial_like is not None:
        if spatial_like.dim() != 4:
            raise ValueError(f"expected spatial_like of shape (B, C, h, w), got {tuple(spatial_like.shape)}")
        return int(spatial_like.shape[-2]), int(spatial_like.shape[-1])
    return None


class LatentGaussian(Distribution):
    """Diagonal Gaussian over latent modulation signals with per-channel parameters (Eq. 11-12).

    Args:
        loc: (B, d) per-channel means.
        scale: (B, d) per-channel standard deviations (> 0).
        spatial_size: (h, w) of a dense action (B, d, h, w); ``None`` gives a per-channel action (B, d)
            unless ``spatial_like`` is given.
        reduction: ``"sum"`` (Eq. 12) or ``"mean"`` over the action's elements, for ``log_prob``, ``entropy``
            and the KL.
        spatial_like: a (B, C, h, w) tensor (e.g. the latents z) whose last two dimensions give the dense
            action's (h, w) when ``spatial_size`` is ``None``.  This lets a TorchRL actor follow latents whose
            size changes from batch to batch.
    """

    arg_constraints = {"loc": constraints.real, "scale": constraints.positive}
    support = constraints.real
    has_rsample = True

    def __init__(
        self,
        loc: torch.Tensor,
        scale: torch.Tensor,
        spatial_size: tuple[int, int] | None = None,
        reduction: str = "sum",
        *,
        spatial_like: torch.Tensor | None = None,
        validate_args: bool | None = None,
    ) -> None:
        if loc.dim() != 2 or loc.shape != scale.shape:
            raise ValueError(
                f"expected loc and scale of shape (B, d), got {tuple(loc.shape)} and {tuple(scale.shape)}"
            )
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
        self.loc = loc  # (B, d)
        self.scale = scale  # (B, d)
        self.reduction = reduction
        self.spatial_size = _spatial(spatial_size, spatial_like)
        if spatial_like is not None and spatial_like.shape[0] != loc.shape[0]:
            raise ValueError(
                f"expected spatial_like with batch {loc.shape[0]}, got {tuple(spatial_like.shape)}"
            )
        event_shape = loc.shape[1:] if self.spatial_size is None else (*loc.shape[1:], *self.spatial_size)
        super().__init__(loc.shape[:1], torch.Size(event_shape), validate_args=validate_args)

    # -- parameters -------------------------------------------------------------------------------
    @property
    def log_std(self) -> torch.Tensor:
        """(B, d) log standard deviations, in float32."""
        return self.scale.float().log()

    @property
    def num_positions(self) -> int:
        """h * w for a dense action, 1 for a per-channel one."""
        return 1 if self.spatial_size is None else self.spatial_size[0] * self.spatial_size[1]

    def _broadcast(self, params: torch.Tensor) -> torch.Tensor:
        """(B, d) -> the action's shape (a view)."""
        if self.spatial_size is None:
            return params
        return params[:, :, None, None].expand(-1, -1, *self.spatial_size)  # (B, d, h, w)

    @property
    def mean(self) -> torch.Tensor:
        return self._broadcast(self.loc)

    @property
    def mode(self) -> torch.Tensor:
        return self._broadcast(self.loc)

    @property
    def deterministic_sample(self) -> torch.Tensor:
        """s = mu broadcast to the action's shape (the deterministic action used for evaluation)."""
        return self._broadcast(self.loc)

    @property
    def stddev(self) -> torch.Tensor:
        return self._broadcast(self.scale)

    @property
    def variance(self) -> torch.Tensor:
        return self.stddev.pow(2)

    # -- sampling ---------------------------------------------------------------------------------
    def rsample(self, sample_shape: torch.Size | tuple[int, ...] = torch.Size()) -> torch.Tensor:
        """Reparameterised s = mu + sigma * eps (Eq. 11): (*sample_shape, B, *event_shape)."""
        sample_shape = torch.Size(sample_shape)
        n = sample_shape.numel()
        b, d = self.loc.shape
        loc = self.loc.expand(n, b, d).reshape(n * b, d)  # (n*B, d)
        log_std = self.scale.log().expand(n, b, d).reshape(n * b, d)  # (n*B, d)
        s = sample_action(loc, log_std, self.spatial_size)  # (n*B, *event), Eq. 11
        return s.reshape(*sample_shape, b, *self.event_shape)

    def sample(self, sample_shape: torch.Size | tuple[int, ...] = torch.Size()) -> torch.Tensor:
        with torch.no_grad():
            return self.rsample(sample_shape)

    # -- densities --------------------------------------------------------------------------------
    def _check_value(self, value: torch.Tensor) -> tuple[torch.Size, torch.Tensor]:
        """Split (*S, B, *event) into the sample shape S and a flat (S*B, *event) view."""
        n_event = len(self.event_shape)
        b = self.loc.shape[0]
        if value.dim() < n_event + 1 or value.shape[value.dim() - n_event :] != self.event_shape or (
            value.shape[value.dim() - n_event - 1] != b
        ):
            raise ValueError(
                f"expected an action of shape (..., {b}, {', '.join(map(str, self.event_shape))}), "
                f"got {tuple(value.shape)}"
            )
        sample_shape = value.shape[: value.dim() - n_event - 1]
        return sample_shape, value.reshape(-1, *self.event_shape)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """log pi(value) reduced over the action's elements (Eq. 12): (*S, B) float32."""
        sample_shape, flat = self._check_value(value)
        if self._validate_args:
            self._validate_sample(value)
        n = sample_shape.numel()
        b, d = self.loc.shape
        loc = self.loc.expand(n, b, d).reshape(n * b, d)
        log_std = self.log_std.expand(n, b, d).reshape(n * b, d)
        lp = gaussian_log_prob(flat, loc, log_std, self.reduction)  # (S*B,), Eq. 12
        return lp.reshape(*sample_shape, b)

    def log_prob_elements(self, value: torch.Tensor) -> torch.Tensor:
        """log N(value_j; mu_c, sigma_c) of every element of one action batch (B, *event), float32, unreduced."""
        sample_shape, flat = self._check_value(value)
        if len(sample_shape):
            raise ValueError(f"expected one action batch of shape ({self.loc.shape[0]}, *event), got {tuple(value.shape)}")
        return gaussian_log_prob_elements(flat, self.loc, self.log_std)

    def entropy(self) -> torch.Tensor:
        """Closed-form entropy of the whole action (same reduction as ``log_prob``): (B,) float32."""
        return gaussian_entropy(self.log_std, self.reduction, self.num_positions)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(batch_shape={tuple(self.batch_shape)}, event_shape={tuple(self.event_shape)}, "
            f"reduction={self.reduction!r})"
        )


@register_kl(LatentGaussian, LatentGaussian)
def _kl_latent_latent(p: LatentGaussian, q: LatentGaussian) -> torch.Tensor:
    """KL(p || q) in closed form (Eq. 5 with p = pi_ref, q = pi_phi): (B,) float32."""
    if p.event_shape != q.event_shape or p.reduction != q.reduction:
        raise ValueError(
            f"KL needs matching actions and reductions, got event shapes {tuple(p.event_shape)} / "
            f"{tuple(q.event_shape)} and reductions {p.reduction!r} / {q.reduction!r}"
        )
    return gaussian_kl(p.loc, p.log_std, q.loc, q.log_std, p.reduction, p.num_positions)


__all__ = ["LatentGaussian"]
