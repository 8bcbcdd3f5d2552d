"""agents/: LatentGaussian, the TorchRL actor, the EMA-baseline advantage, the EMA reference, LatentPPOLoss
(Eq. 4-5 by hand), the loss registry and PolicyObjective for every algorithm."""
import math

import pytest
import torch
from tensordict import TensorDict
from tensordict.nn import InteractionType, set_interaction_type
from torch.distributions import Normal, kl_divergence

from agents import (
    LOSSES,
    LOG_PROB_KEY,
    EMABaselineAdvantage,
    EMAReferencePolicy,
    LatentGaussian,
    LatentPPOLoss,
    PolicyObjective,
    make_actor,
    make_loss,
    make_value_head,
)
from segbandit.baselines import EMABaseline
from segbandit.policy import LatentPolicy, gaussian_entropy, gaussian_kl, gaussian_log_prob

B, D, H, W = 4, 8, 4, 4


pytestmark = pytest.mark.usefixtures("one_thread")


def _policy() -> LatentPolicy:
    return LatentPolicy(D, hidden_channels=8, pool_size=1)


def _z() -> torch.Tensor:
    return torch.randn(B, D, H, W)


@torch.no_grad()
def _perturb(module: torch.nn.Module, std: float) -> None:
    for p in module.parameters():
        p.add_(std * torch.randn_like(p))


def _inputs(policy: LatentPolicy, action_mode: str = "dense"):
    z = _z()
    with torch.no_grad():
        out = policy.act(z, action_mode)
    return z, out["action"], torch.rand(B), out["mu"], out["log_std"].exp()


# -- LatentGaussian -------------------------------------------------------------------------------------
@pytest.mark.parametrize("spatial", [(H, W), None])
def test_latent_gaussian_sample_shape_log_prob_entropy_match_core(spatial):
    loc, scale = torch.randn(B, D), torch.rand(B, D) + 0.5
    dist = LatentGaussian(loc, scale, spatial, reduction="sum")
    s = dist.rsample()
    assert s.shape == ((B, D, H, W) if spatial else (B, D))
    assert dist.rsample((3,)).shape == (3, *s.shape)
    assert torch.allclose(dist.log_prob(s), gaussian_log_prob(s, loc, scale.log(), "sum"), atol=1e-5)
    n = H * W if spatial else 1
    assert torch.allclose(dist.entropy(), gaussian_entropy(scale.log(), "sum", n), atol=1e-5)
    assert torch.equal(dist.deterministic_sample, loc[:, :, None, None].expand(-1, -1, H, W) if spatial else loc)


def test_latent_gaussian_rsample_is_reparameterised():
    loc = torch.zeros(B, D, requires_grad=True)
    LatentGaussian(loc, torch.ones(B, D), (H, W)).rsample().sum().backward()
    assert torch.allclose(loc.grad, torch.full((B, D), float(H * W)))


def test_latent_gaussian_registered_kl_is_closed_form_kl_times_positions():
    p = LatentGaussian(torch.randn(B, D), torch.rand(B, D) + 0.5, (H, W))
    q = LatentGaussian(torch.randn(B, D), torch.rand(B, D) + 0.5, (H, W))
    expected = kl_divergence(Normal(p.loc, p.scale), Normal(q.loc, q.scale)).sum(1) * H * W
    assert torch.allclose(kl_divergence(p, q), expected, atol=1e-4)
    assert torch.allclose(kl_divergence(p, q), gaussian_kl(p.loc, p.log_std, q.loc, q.log_std, "sum", H * W))


def test_latent_gaussian_log_prob_rejects_wrong_action_shape():
    dist = LatentGaussian(torch.zeros(B, D), torch.ones(B, D), (H, W))
    with pytest.raises(ValueError, match=r"\(\.\.\., 4, 8, 4, 4\)"):
        dist.log_prob(torch.zeros(B, D))


# -- actor and critic ----------------------------------------------------------------------------------
@pytest.mark.parametrize("action_mode,reduction", [("dense", "sum"), ("dense", "mean"), ("channel", "sum")])
def test_actor_samples_actions_with_log_prob_equal_to_gaussian_log_prob(action_mode, reduction):
    policy = _policy()
    actor = make_actor(policy, action_mode, reduction=reduction)
    td = actor(TensorDict({"observation": _z()}, [B]))
    assert td["action"].shape == ((B, D, H, W) if action_mode == "dense" else (B, D))
    assert td["loc"].shape == td["scale"].shape == (B, D)
    mu, log_std = policy(td["observation"])
    expected = gaussian_log_prob(td["action"], mu, log_std, reduction)
    assert td[LOG_PROB_KEY].shape == (B,)
    assert torch.allclose(td[LOG_PROB_KEY], expected, atol=1e-5)


def test_actor_samples_by_default_and_returns_mu_when_deterministic():
    policy = _policy().eval()
    actor = make_actor(policy, "dense")
    td = TensorDict({"observation": _z()}, [B])
    a1, a2 = actor(td.clone())["action"], actor(td.clone())["action"]
    assert not torch.allclose(a1, a2)
    with set_interaction_type(InteractionType.DETERMINISTIC):
        mode = actor(td.clone())["action"]
    mu, _ = policy(td["observation"])
    assert torch.allclose(mode, mu[:, :, None, None].expand(-1, -1, H, W))


def test_dense_actor_follows_the_latent_size():
    actor = make_actor(_policy(), "dense")
    td = actor(TensorDict({"observation": torch.randn(2, D, 3, 5)}, [2]))
    assert td["action"].shape == (2, D, 3, 5)


def test_value_head_pools_latents_to_state_value_b1():
    critic = make_value_head(D, hidden=16)
    td = critic(TensorDict({"observation": _z()}, [B]))
    assert td["state_value"].shape == (B, 1) and td["state_value"].dtype == torch.float32


# -- advantage and reference ----------------------------------------------------------------------------
def test_ema_baseline_advantage_writes_clamped_b1_after_updating_b():
    baseline = EMABaseline(tau=0.5)
    baseline.update(torch.tensor([0.0, 0.0, 0.0, 0.0]))  # b = 0
    module = EMABaselineAdvantage(baseline, a_min=-0.3, a_max=0.3)
    r = torch.tensor([0.1, 0.9, 0.4, 0.2])
    td = module(TensorDict({"reward": r.unsqueeze(-1)}, [B]))
    b = 0.5 * 0.0 + 0.5 * r.mean()  # Eq. 16, applied before the advantage
    assert torch.allclose(baseline.value, b)
    assert td["advantage"].shape == (B, 1)
    assert torch.allclose(td["advantage"], (r - b).clamp(-0.3, 0.3).unsqueeze(-1))  # Eq. 17-18
    assert torch.equal(td["value_target"], r.unsqueeze(-1))


def test_ema_baseline_advantage_keeps_b_on_nonfinite_rewards():
    baseline = EMABaseline(tau=0.9)
    baseline.update(torch.full((B,), 0.5))
    module = EMABaselineAdvantage(baseline)
    td = module(TensorDict({"reward": torch.tensor([0.1, float("nan"), 0.4, 0.2])}, [B]))
    assert baseline.value.item() == 0.5
    assert torch.isnan(td["advantage"][1]).all()


def test_reference_writes_its_params_and_log_prob_of_the_action():
    policy = _policy()
    ref = EMAReferencePolicy(policy, eta=0.9, reduction="mean")
    z, action = _z(), torch.randn(B, D, H, W)
    td = ref(TensorDict({"observation": z, "action": action}, [B]))
    mu, log_std = policy(z)
    assert torch.allclose(td["ref_loc"], mu, atol=1e-6) and torch.allclose(td["ref_scale"], log_std.exp(), atol=1e-6)
    assert torch.allclose(td[LOG_PROB_KEY], gaussian_log_prob(action, mu, log_std, "mean"), atol=1e-5)
    assert not td[LOG_PROB_KEY].requires_grad


def test_reference_rejects_an_action_of_the_wrong_mode():
    ref = EMAReferencePolicy(_policy(), action_mode="dense")
    with pytest.raises(ValueError, match=r"dense action of shape \(4, 8, 4, 4\), got \(4, 8\)"):
        ref(TensorDict({"observation": _z(), "action": torch.randn(B, D)}, [B]))


# -- LatentPPOLoss: Eq. 4-5 by hand ----------------------------------------------------------------------
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_latent_ppo_loss_equals_eq4_eq5_by_hand(reduction):
    policy = _policy().eval()
    ref = EMAReferencePolicy(policy, reduction=reduction)
    with torch.no_grad():  # pi_phi moves away from pi_ref, enough for some ratios to leave [0.8, 1.2]
        std = 0.005 if reduction == "sum" else 0.15
        policy.fc_mu.bias.add_(std * torch.randn(D))
        policy.fc_log_std.bias.add_(std * torch.randn(D))
    z, action = _z(), torch.randn(B, D, H, W)
    adv = torch.tensor([[0.5], [-0.3], [0.8], [-0.9]])
    td = ref(TensorDict({"observation": z, "action": action, "advantage": adv}, [B]))
    loss = LatentPPOLoss(make_actor(policy, "dense", reduction=reduction), clip_epsilon=0.2, lambda_kl=0.5)
    out = loss(td)

    with torch.no_grad():
        mu, log_std = policy(z)
        mu_r, log_std_r = ref.ema(z)
    cur = Normal(mu[:, :, None, None], log_std.exp()[:, :, None, None])
    old = Normal(mu_r[:, :, None, None], log_std_r.exp()[:, :, None, None])
    reduce = (lambda t: t.sum((1, 2, 3))) if reduction == "sum" else (lambda t: t.mean((1, 2, 3)))
    rho = torch.exp(reduce(cur.log_prob(action)) - reduce(old.log_prob(action)))  # Eq. 4
    a = adv.squeeze(-1)
    l_policy = -torch.minimum(rho * a, rho.clamp(0.8, 1.2) * a).mean()
    kl_c = kl_divergence(Normal(mu_r, log_std_r.exp()), Normal(mu, log_std.exp()))  # (B, d)
    kl = kl_c.sum(1) * H * W if reduction == "sum" else kl_c.mean(1)  # Eq. 5

    assert ((rho - 1).abs() > 0.2).any() and ((rho - 1).abs() < 0.2).any()  # both branches of the clip used
    assert torch.allclose(out["loss_objective"], l_policy, rtol=1e-4, atol=1e-5)
    assert torch.allclose(out["loss_kl"], 0.5 * kl.mean(), rtol=1e-4)
    assert torch.allclose(out["kl"], kl.mean(), rtol=1e-4)
    assert torch.allclose(out["ratio"], rho.mean(), rtol=1e-4)
    assert out["clip_fraction"].item() == pytest.approx(((rho - 1).abs() > 0.2).float().mean().item())
    assert torch.allclose(out["approx_kl"], ((rho - 1) - rho.log()).mean(), rtol=1e-3, atol=1e-6)
    assert torch.allclose(out["advantage"], adv.mean())
    assert "loss_entropy" not in out.keys() and "loss_critic" not in out.keys()
    assert out["loss_kl"].requires_grad and not out["kl"].requires_grad


def test_element_ratio_clip_clips_each_action_element_by_hand():
    policy = _policy().eval()
    ref = EMAReferencePolicy(policy, reduction="mean")
    with torch.no_grad():
        policy.fc_mu.bias.add_(0.3 * torch.randn(D))
    z, action = _z(), torch.randn(B, D, H, W)
    adv = torch.tensor([[0.5], [-0.3], [0.8], [-0.9]])
    td = ref(TensorDict({"observation": z, "action": action, "advantage": adv}, [B]))
    loss = make_loss("latent_ppo", make_actor(policy, "dense", reduction="mean"), ratio_clip="element")
    out = loss(td)

    with torch.no_grad():
        mu, log_std = policy(z)
        mu_r, log_std_r = ref.ema(z)
    cur = Normal(mu[:, :, None, None], log_std.exp()[:, :, None, None])
    old = Normal(mu_r[:, :, None, None], log_std_r.exp()[:, :, None, None])
    rho = torch.exp(cur.log_prob(action) - old.log_prob(action))  # (B, d, h, w): one ratio per element
    a = adv[:, :, None, None]
    gain = torch.minimum(rho * a, rho.clamp(0.8, 1.2) * a).mean((1, 2, 3))  # (B,)
    assert ((rho - 1).abs() > 0.2).any() and ((rho - 1).abs() < 0.2).any()
    assert torch.allclose(out["loss_objective"], -gain.mean(), rtol=1e-4, atol=1e-6)
    assert out["clip_fraction"].item() == pytest.approx(((rho - 1).abs() > 0.2).float().mean().item())
    assert out["loss_objective"].requires_grad


def test_element_ratio_clip_needs_a_latent_ppo_loss():
    with pytest.raises(ValueError, match="needs a LatentPPOLoss"):
        make_loss("ppo", make_actor(_policy(), "dense"), ratio_clip="element")
    with pytest.raises(ValueError, match="valid names: action, element"):
        make_loss("latent_ppo", make_actor(_policy(), "dense"), ratio_clip="whole")


def test_ppo_ewma_element_ratio_is_taken_against_the_behaviour_policy():
    policy = _policy().eval()
    z, action, reward, loc, scale = _inputs(policy)
    objective = PolicyObjective(policy, "ppo_ewma", reduction="mean", ratio_clip="element").eval()
    out = objective(z, action, reward, loc, scale)  # pi_phi is the behaviour policy: every element ratio is 1
    assert out["clip_fraction"].item() == 0.0
    with torch.no_grad():
        policy.fc_mu.bias.add_(1.0)  # far from the behaviour: element ratios leave the clip range
    assert objective(z, action, reward, loc, scale, advantage=objective.last_advantage)["clip_fraction"].item() > 0.0


def test_ratio_is_one_and_kl_zero_when_policy_and_reference_coincide():
    policy = _policy()
    ref = EMAReferencePolicy(policy)
    z = _z()
    actor = make_actor(policy, "dense")
    with torch.no_grad():  # collecting the action, as a data collector would
        td = actor(TensorDict({"observation": z}, [B])).select("observation", "action")
    td = ref(td.set("advantage", torch.randn(B, 1)))
    out = LatentPPOLoss(actor)(td)
    assert out["ratio"].item() == pytest.approx(1.0, abs=1e-5)
    assert out["kl"].item() == pytest.approx(0.0, abs=1e-5)
    assert out["approx_kl"].item() == pytest.approx(0.0, abs=1e-5)
    assert out["clip_fraction"].item() == 0.0


def test_latent_ppo_loss_adds_entropy_term_only_when_asked():
    policy = _policy()
    ref = EMAReferencePolicy(policy)
    td = ref(TensorDict({"observation": _z(), "action": torch.randn(B, D, H, W), "advantage": torch.zeros(B, 1)}, [B]))
    out = LatentPPOLoss(make_actor(policy), entropy_bonus=True, entropy_coeff=0.1)(td)
    mu, log_std = policy(td["observation"])
    assert torch.allclose(out["loss_entropy"], -0.1 * gaussian_entropy(log_std, "sum", H * W).mean(), rtol=1e-5)


def test_latent_ppo_loss_reports_nonfinite_ratio_instead_of_hiding_it():
    policy = _policy()
    ref = EMAReferencePolicy(policy)
    td = ref(TensorDict({"observation": _z(), "action": torch.randn(B, D, H, W), "advantage": -torch.ones(B, 1)}, [B]))
    td.set(LOG_PROB_KEY, td[LOG_PROB_KEY] - 1000.0)  # log rho = 1000: exp overflows in float32
    out = LatentPPOLoss(make_actor(policy))(td)
    assert out["nonfinite_ratio"].item() == 1.0
    assert math.isfinite(out["log_ratio_max"].item()) and out["log_ratio_max"].item() > 999
    assert not torch.isfinite(out["loss_objective"])


# -- registry and objective ------------------------------------------------------------------------------
def test_make_loss_unknown_algo_lists_valid_names():
    with pytest.raises(ValueError, match=r"unknown algo 'trpo'.*'a2c'.*'klpen_ppo'.*'latent_ppo'.*'ppo'.*'reinforce'"):
        make_loss("trpo", make_actor(_policy()))


def test_policy_objective_unknown_algo_lists_valid_names():
    with pytest.raises(ValueError, match=r"unknown algo 'sac'.*latent_ppo"):
        PolicyObjective(_policy(), "sac")


@pytest.mark.parametrize("algo", ["a2c", "reinforce"])
def test_make_loss_builds_a_value_head_for_critic_algos(algo):
    loss = make_loss(algo, make_actor(_policy()))
    td = loss.critic_network(TensorDict({"observation": _z()}, [B]))
    assert td["state_value"].shape == (B, 1)


@pytest.mark.parametrize(
    "algo,action_mode", [(a, "dense") for a in LOSSES] + [("latent_ppo", "channel"), ("a2c", "channel")]
)
def test_every_algo_runs_forward_and_backward_reaching_policy_and_critic_only(algo, action_mode):
    policy = _policy()
    objective = PolicyObjective(policy, algo, action_mode=action_mode)
    z, action, reward, mu, scale = _inputs(policy, action_mode)
    z.requires_grad_(True)  # the caller forgot to detach: the objective must do it
    out = objective(z, action, reward, mu, scale)
    for key in ("loss_policy", "loss_kl", "loss_critic", "loss_entropy", "ratio", "kl", "entropy", "baseline"):
        assert out[key].dim() == 0 and torch.isfinite(out[key]), key
    (out["loss_policy"] + out["loss_kl"] + out["loss_critic"] + out["loss_entropy"]).backward()
    assert z.grad is None
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in policy.parameters())
    if algo in ("a2c", "reinforce"):
        assert all(p.grad is not None for p in objective.critic.parameters())
        assert out["loss_critic"].item() > 0
    else:
        assert objective.critic is None
    for key in ("ratio", "clip_fraction", "kl", "approx_kl", "entropy", "advantage", "baseline", "reward"):
        assert not out[key].requires_grad, key
    assert out["reward"].item() == pytest.approx(reward.mean().item())


def test_ppo_ratio_is_taken_against_the_behaviour_log_prob():
    policy = _policy().eval()
    objective = PolicyObjective(policy, "ppo")
    z, action, reward, mu, scale = _inputs(policy)
    behaviour_loc = mu + 0.05 * torch.randn_like(mu)  # behaviour params differ from the current ones
    out = objective(z, action, reward, behaviour_loc, scale)
    with torch.no_grad():
        mu_c, log_std_c = policy(z)
    rho = torch.exp(gaussian_log_prob(action, mu_c, log_std_c) - gaussian_log_prob(action, behaviour_loc, scale.log()))
    assert torch.allclose(out["ratio"], rho.mean(), rtol=1e-4)


def test_klpen_ppo_keeps_its_fixed_coefficient():
    policy = _policy()
    objective = PolicyObjective(policy, "klpen_ppo", lambda_kl=0.7)
    for _ in range(3):  # kl ~ 0 < dtarg / 1.5: an adaptive beta would have been halved each call
        z, action, reward, mu, scale = _inputs(policy)
        objective(z, action, reward, mu, scale)
    assert objective.loss.beta.item() == pytest.approx(0.7)


def test_after_step_moves_the_reference_towards_the_policy_eq19():
    policy = _policy()
    objective = PolicyObjective(policy, "latent_ppo", eta=0.9)
    ref_module = objective.reference.ema.module
    before = {n: p.detach().clone() for n, p in ref_module.named_parameters()}
    _perturb(policy, 0.1)
    objective.after_step()
    for name, p in policy.named_parameters():
        expected = 0.9 * before[name] + 0.1 * p.detach()  # Eq. 19
        assert torch.allclose(dict(ref_module.named_parameters())[name], expected, atol=1e-6), name


def test_objective_state_dict_holds_baseline_and_reference_but_not_the_policy():
    policy = _policy()
    objective = PolicyObjective(policy, "latent_ppo")
    objective(*_inputs(policy))
    state = objective.state_dict()
    assert "advantage.baseline.b" in state and any(k.startswith("reference.") for k in state)
    assert not any(k.startswith("loss.actor_network.") for k in state)
    fresh = PolicyObjective(policy, "latent_ppo")
    fresh.load_state_dict(state)  # strict: the policy's entries are not required
    assert torch.equal(fresh.baseline.value, objective.baseline.value)


def test_objective_rejects_inputs_of_the_wrong_shape():
    policy = _policy()
    objective = PolicyObjective(policy, "latent_ppo")
    z, action, reward, mu, scale = _inputs(policy)
    with pytest.raises(ValueError, match=r"dense action of shape \(4, 8, 4, 4\), got \(4, 8\)"):
        objective(z, mu, reward, mu, scale)
    with pytest.raises(ValueError, match=r"rewards of shape \(4,\), got \(2, 2\)"):
        objective(z, action, reward.view(2, 2), mu, scale)
    with pytest.raises(ValueError, match=r"latents z of shape \(B, 8, h, w\), got \(4, 8, 16\)"):
        objective(z.flatten(2), action, reward, mu, scale)
