"""TorchRL agents for segbandit: actor, EMA-baseline advantage, EMA reference, latent PPO, the loss registry, the
co-training loss (Eq. 6) and the trainer.

``CoTrainingLoss`` is Eq. 6 over one bandit step; ``PolicyObjective`` its policy half; ``make_loss`` / ``LOSSES``
swap the algorithm (any name registered in ``LOSSES`` reaches ``--algo``).
"""
from agents.actor import ACTION_MODES, LOG_PROB_KEY, ValueHead, make_actor, make_value_head
from agents.advantage import CriticAdvantage, EMABaselineAdvantage
from agents.distributions import LatentGaussian
from agents.losses import CRITIC_ALGOS, LOSSES, LatentPPOLoss, make_loss, ratio_diagnostics
from agents.cotraining import CoTrainingLoss
from agents.objective import PolicyObjective
from agents.reference import EMAReferencePolicy
from agents.trainer import CoTrainer, NonFiniteError

__all__ = [
    "ACTION_MODES",
    "CRITIC_ALGOS",
    "CoTrainer",
    "CoTrainingLoss",
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
