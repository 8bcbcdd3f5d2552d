"""TorchRL agents for segbandit: actor, EMA-baseline advantage, EMA reference, latent PPO and the loss registry.

``PolicyObjective`` is what a trainer calls once per batch; ``make_loss`` / ``LOSSES`` swap the algorithm.
"""
from agents.actor import ACTION_MODES, LOG_PROB_KEY, ValueHead, make_actor, make_value_head
from agents.advantage import CriticAdvantage, EMABaselineAdvantage
from agents.distributions import LatentGaussian
from agents.losses import CRITIC_ALGOS, LOSSES, LatentPPOLoss, make_loss, ratio_diagnostics
from agents.objective import ALGOS, PolicyObjective
from agents.reference import EMAReferencePolicy
from agents.trainer import CoTrainer, NonFiniteError

__all__ = [
    "ACTION_MODES",
    "ALGOS",
    "CRITIC_ALGOS",
    "CoTrainer",
    "CriticAdvantage",
    "EMABaselineAdvantage",
    "EMAReferencePolicy",
    "LOG_PROB_KEY",
    "LOSSES",
    "LatentGaussian",
    "LatentPPOLoss",
    "NonFiniteError",
    "PolicyObjective",
    "ValueHead",
    "make_actor",
    "make_loss",
    "make_value_head",
    "ratio_diagnostics",
]
