"""CoTrainer (Eq. 6), its schedules, the non-finite guard, checkpoints and the run config."""
import copy
import functools
import json
import logging
import math

import pytest
import torch
import torch.nn.functional as F

from agents.checkpoint import (
    capture_rng_state,
    checkpoint_name,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from agents.config import PRESETS, TrainConfig, config_from_args, load_config, make_config, save_config
from agents.trainer import CoTrainer, IterationBatchSampler, build_optimizer, build_scheduler, lr_factor
from conftest import toy_batch as _toy_batch
from segbandit.policy import sample_action

K = 5  # classes of the toy batches
toy_batch = functools.partial(_toy_batch, num_classes=K)


def tiny_cfg(**overrides) -> TrainConfig:
    base = dict(
        crop_size=32, batch_size=2, max_iters=4, policy_hidden=16, attn_dim=32, num_heads=4,
        optimizer="sgd", lr=0.01, momentum=0.9, weight_decay=5e-4, device="cpu", num_workers=0,
        class_weights=None, warmup_iters=0,
    )  # fmt: skip
    base.update(overrides)
    return make_config("digits", **base)


def params_of(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in module.named_parameters()}


# ----------------------------------------------------------------------------- Eq. 6 and its gradients


def test_zero_lambdas_step_equals_plain_ce_step_on_the_segmentor():
    cfg = tiny_cfg(lambda_policy=0.0, lambda_kl=0.0)
    trainer = CoTrainer.from_config(cfg, K)
    seg_ref, pol_ref = copy.deepcopy(trainer.segmentor), copy.deepcopy(trainer.policy)
    before = params_of(trainer.segmentor)
    x, y = toy_batch()

    trainer.generator.manual_seed(7)
    torch.manual_seed(123)  # dropout in the FCN heads
    trainer.train_step(x, y)

    # the plain CE step: same weights, same action noise, CE on forward(x, s) with that s
    opt = torch.optim.SGD(seg_ref.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    seg_ref.train()
    pol_ref.train()
    torch.manual_seed(123)
    z = seg_ref.encode(x)
    mu, log_std = pol_ref(z.detach())
    s = sample_action(mu, log_std, tuple(z.shape[-2:]), generator=torch.Generator().manual_seed(7))
    out = seg_ref(x, s)
    loss = F.cross_entropy(out["out"], y, ignore_index=255) + 0.4 * F.cross_entropy(out["aux"], y, ignore_index=255)
    opt.zero_grad()
    loss.backward()
    opt.step()

    after = params_of(trainer.segmentor)
    assert any(not torch.equal(before[n], after[n]) for n in before), "the step must change the segmentor"
    for n, p in seg_ref.named_parameters():
        torch.testing.assert_close(after[n], p.detach(), rtol=1e-5, atol=1e-7, msg=f"parameter {n} differs")


def _grad_norm(params) -> float:
    return sum(float(p.grad.abs().sum()) for p in params if p.grad is not None)


def test_joint_step_gradient_reaches_encoder_modulation_decoder_and_policy():
    trainer = CoTrainer.from_config(tiny_cfg(), K)
    trainer.backward_only(*toy_batch())
    seg = trainer.segmentor
    assert _grad_norm(seg.backbone.parameters()) > 0  # encoder
    assert _grad_norm(seg.modulation.parameters()) > 0  # Eq. 13-14 modulation (signal projection and MHA)
    assert _grad_norm(seg.modulation.signal_proj.parameters()) > 0  # s reaches the modulation
    assert seg.alpha.grad is not None and float(seg.alpha.grad.abs()) > 0
    assert _grad_norm(seg.classifier.parameters()) > 0  # decoder
    assert _grad_norm(seg.aux_classifier.parameters()) > 0
    assert _grad_norm([trainer.policy.fc_mu.weight]) > 0  # policy (CE through s, and the policy loss)
    assert _grad_norm([trainer.policy.fc_log_std.weight]) > 0


def test_policy_and_kl_terms_leave_the_segmentor_gradient_unchanged():
    """lambda_P = lambda_KL = 1 versus 0: the same segmentor gradient (z is detached for the policy), another policy one."""
    x, y = toy_batch()
    grads = {}
    for lam in (0.0, 1.0):
        trainer = CoTrainer.from_config(tiny_cfg(lambda_policy=lam, lambda_kl=lam, baseline="zero"), K)
        trainer.generator.manual_seed(3)
        torch.manual_seed(5)
        trainer.backward_only(x, y)
        grads[lam] = (
            {n: p.grad.clone() for n, p in trainer.segmentor.named_parameters() if p.grad is not None},
            trainer.policy.fc_mu.weight.grad.clone(),
        )
    seg0, pol0 = grads[0.0]
    seg1, pol1 = grads[1.0]
    assert seg0.keys() == seg1.keys()
    for n in seg0:
        torch.testing.assert_close(seg1[n], seg0[n], msg=f"policy/KL loss leaked into {n}")
    assert not torch.allclose(pol0, pol1), "the policy loss must add to the policy's gradient"


def test_rl_only_gradient_reaches_the_policy_and_not_the_segmentor():
    trainer = CoTrainer.from_config(tiny_cfg(schedule="rl_only"), K)
    before = params_of(trainer.segmentor)
    stats = trainer.backward_only(*toy_batch())
    assert stats["phase"] == "rl" and stats["loss_ce"] == 0.0
    assert all(p.grad is None for p in trainer.segmentor.parameters())
    assert _grad_norm(trainer.policy.parameters()) > 0
    trainer.train_step(*toy_batch(seed=1))
    after = params_of(trainer.segmentor)
    assert all(torch.equal(before[n], after[n]) for n in before), "rl_only must leave the segmentor at init"


def test_sft_then_rl_uses_ce_with_the_mean_action_then_policy_terms_only():
    trainer = CoTrainer.from_config(tiny_cfg(schedule="sft_then_rl", max_iters=4), K)
    x, y = toy_batch()
    phases = []
    for _ in range(4):
        stats = trainer.train_step(x, y)
        phases.append(stats["phase"])
        if stats["phase"] == "sft":
            assert stats["loss_ce"] > 0 and stats["loss_policy"] == 0.0 and stats["loss_kl"] == 0.0
            assert math.isnan(stats["ratio"])  # the objective does not run during SFT
        else:
            assert stats["loss_ce"] == 0.0 and stats["ratio"] > 0
    assert phases == ["sft", "sft", "rl", "rl"]
    # SFT feeds s = mu: the mean head learns through CE, the log-std head gets no gradient
    sft = CoTrainer.from_config(tiny_cfg(schedule="sft_then_rl", max_iters=4), K)
    sft.backward_only(x, y)
    assert _grad_norm([sft.policy.fc_mu.weight]) > 0
    assert _grad_norm([sft.policy.fc_log_std.weight]) == 0.0


def test_channel_action_mode_trains():
    trainer = CoTrainer.from_config(tiny_cfg(action_mode="channel"), K)
    stats = trainer.train_step(*toy_batch())
    assert stats["skipped"] == 0.0 and math.isfinite(stats["loss"])


def test_critic_parameters_join_the_optimizer_and_learn():
    trainer = CoTrainer.from_config(tiny_cfg(algo="a2c"), K)
    critic = list(trainer.objective.critic.parameters())
    in_opt = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert critic and all(id(p) in in_opt for p in critic)
    before = [p.detach().clone() for p in critic]
    stats = trainer.train_step(*toy_batch())
    assert stats["loss_critic"] > 0
    assert any(not torch.equal(b, p) for b, p in zip(before, critic))


# ----------------------------------------------------------------------------- the non-finite guard


def test_nonfinite_reward_is_skipped_reported_and_not_applied(caplog):
    trainer = CoTrainer.from_config(tiny_cfg(), K)
    real_reward = trainer.reward_fn

    def nan_reward(logits, target):
        out = real_reward(logits, target)
        out["total"] = torch.full_like(out["total"], float("nan"))
        return out

    trainer.reward_fn = nan_reward
    before = {**params_of(trainer.segmentor), **{f"policy.{n}": p for n, p in params_of(trainer.policy).items()}}
    with caplog.at_level(logging.WARNING, logger="agents.trainer"):
        stats = trainer.train_step(*toy_batch())
    assert stats["skipped"] == 1.0 and trainer.skipped_iterations == [1]
    assert "iteration 1" in caplog.text and "skipped" in caplog.text
    after = {**params_of(trainer.segmentor), **{f"policy.{n}": p for n, p in params_of(trainer.policy).items()}}
    assert all(torch.equal(before[n], after[n]) for n in before)
    trainer.reward_fn = real_reward  # the next finite step is applied again
    assert trainer.train_step(*toy_batch())["skipped"] == 0.0 and trainer.nonfinite_streak == 0


def test_nan_parameter_step_is_skipped_and_weights_stay(caplog):
    trainer = CoTrainer.from_config(tiny_cfg(), K)
    with torch.no_grad():
        trainer.segmentor.classifier[4].weight[0, 0, 0, 0] = float("nan")  # the head's last 1x1 conv
    before = params_of(trainer.segmentor)
    with caplog.at_level(logging.WARNING, logger="agents.trainer"):
        stats = trainer.train_step(*toy_batch())
    assert stats["skipped"] == 1.0
    assert "iteration 1" in caplog.text
    after = params_of(trainer.segmentor)
    for n in before:
        torch.testing.assert_close(after[n], before[n], equal_nan=True, rtol=0, atol=0)


def test_too_many_consecutive_nonfinite_steps_raise():
    trainer = CoTrainer.from_config(tiny_cfg(max_nonfinite=2), K)
    with torch.no_grad():
        trainer.segmentor.classifier[4].bias.fill_(float("inf"))
    trainer.train_step(*toy_batch())
    with pytest.raises(RuntimeError, match="iteration 2: 2 consecutive non-finite"):
        trainer.train_step(*toy_batch())


def test_bad_batch_shapes_raise_value_error():
    trainer = CoTrainer.from_config(tiny_cfg(), K)
    x, y = toy_batch()
    with pytest.raises(ValueError, match=r"masks of shape \(B, H, W\)"):
        trainer.train_step(x, y[:, :16])
    with pytest.raises(ValueError, match="int64"):
        trainer.train_step(x, y.int())


# ----------------------------------------------------------------------------- evaluation, optimiser, sampler


def test_evaluate_reports_metrics_and_is_reproducible():
    trainer = CoTrainer.from_config(tiny_cfg(), K)
    loader = [toy_batch(seed=s) for s in range(2)]
    det = trainer.evaluate(loader, deterministic=True)
    assert det["num_images"] == 4 and len(det["per_class_iou"]) == K
    assert 0.0 <= det["miou"] <= 1.0 and 0.0 <= det["pixel_acc"] <= 1.0 and 0.0 <= det["reward_total"] <= 4.0
    assert trainer.evaluate(loader, deterministic=True) == det
    sampled = trainer.evaluate(loader, deterministic=False)
    assert trainer.evaluate(loader, deterministic=False) == sampled  # own seeded generator
    assert trainer.segmentor.training and trainer.policy.training  # modes restored


def test_sgd_poly_schedule_follows_the_formula():
    cfg = tiny_cfg(max_iters=10, lr=0.01, poly_power=0.9)
    p = torch.nn.Parameter(torch.zeros(3))
    opt = build_optimizer(cfg, [p])
    sched = build_scheduler(cfg, opt)
    assert isinstance(opt, torch.optim.SGD) and opt.defaults["momentum"] == 0.9 and opt.defaults["weight_decay"] == 5e-4
    for _ in range(4):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.01 * (1 - 4 / 10) ** 0.9)


def test_warmup_rises_linearly_to_the_base_lr_then_decays_as_poly():
    cfg = tiny_cfg(max_iters=20, lr=0.1, poly_power=1.0, warmup_iters=4)
    p = torch.nn.Parameter(torch.zeros(3))
    opt = build_optimizer(cfg, [{"params": [p]}, {"params": [], "lr": 0.01}])
    sched = build_scheduler(cfg, opt)
    seen = []
    for _ in range(8):
        seen.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    expected = [min(1.0, (t + 1) / 5) * (1 - t / 20) for t in range(8)]
    assert [a for a, _ in seen] == pytest.approx([0.1 * f for f in expected])
    assert [b for _, b in seen] == pytest.approx([0.01 * f for f in expected])  # every group, its own base lr
    assert lr_factor(20, 20, 0.9, 4) == 0.0 and lr_factor(25, 20, 0.9) == 0.0


def _loss_ce(x: torch.Tensor, y: torch.Tensor, class_weights) -> float:
    cfg = tiny_cfg(class_weights=class_weights, lambda_policy=0.0, lambda_kl=0.0, aux_weight=0.0)
    trainer = CoTrainer.from_config(cfg, K)
    trainer.generator.manual_seed(7)
    torch.manual_seed(3)  # dropout
    return trainer.backward_only(x, y)["loss_ce"]


def test_class_weights_weight_each_labelled_pixel_by_its_class():
    x, y = toy_batch()
    plain = _loss_ce(x, y, None)
    assert _loss_ce(x, y, (2.0,) * K) == pytest.approx(plain, rel=1e-5)  # a common scale cancels in the mean
    only_class_0 = torch.where(y == 0, y, torch.full_like(y, 255))
    assert _loss_ce(x, y, (1.0,) + (0.0,) * (K - 1)) == pytest.approx(_loss_ce(x, only_class_0, None), rel=1e-5)


def test_class_weights_of_the_wrong_length_are_refused_naming_both_counts():
    with pytest.raises(ValueError, match="one value per class \\(5\\), got 3"):
        CoTrainer.from_config(tiny_cfg(class_weights=(1.0, 2.0, 3.0)), K)
    with pytest.raises(ValueError, match="finite non-negative"):
        tiny_cfg(class_weights=(1.0, -1.0, 1.0, 1.0, 1.0))


def test_negative_warmup_is_refused():
    with pytest.raises(ValueError, match="warmup_iters must be >= 0, got -1"):
        tiny_cfg(warmup_iters=-1)


def test_iteration_batch_sampler_depends_only_on_seed_and_iteration():
    full = IterationBatchSampler(10, 3, seed=4)
    it = iter(full)
    first = [next(it) for _ in range(7)]
    resumed = iter(IterationBatchSampler(10, 3, seed=4, start_iteration=5))
    assert [next(resumed) for _ in range(2)] == first[5:7]
    epoch0 = sum(first[:3], [])
    assert len(set(epoch0)) == 9  # no repeats within an epoch
    assert first != [next(iter(IterationBatchSampler(10, 3, seed=5))) for _ in range(7)]


# ----------------------------------------------------------------------------- checkpoints


def test_checkpoint_is_atomic_weights_only_and_keeps_the_last_three(tmp_path):
    trainer = CoTrainer.from_config(tiny_cfg(), K)
    trainer.train_step(*toy_batch())
    for it in (1, 2, 3, 4):
        save_checkpoint(tmp_path / checkpoint_name(it), trainer.state_dict(), keep=3)
    assert [p.name for p in list_checkpoints(tmp_path)] == [checkpoint_name(i) for i in (2, 3, 4)]
    assert latest_checkpoint(tmp_path).name == "ckpt_0000004.pt"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    state = load_checkpoint(latest_checkpoint(tmp_path))  # torch.load(weights_only=True)
    assert state["iteration"] == 1 and state["config"]["algo"] == "latent_ppo"
    assert {"segmentor", "policy", "objective", "optimizer", "scheduler", "rng"} <= set(state)


def test_checkpoint_restores_the_run_exactly():
    cfg = tiny_cfg()
    a = CoTrainer.from_config(cfg, K)
    a.train_step(*toy_batch(seed=0))
    state = copy.deepcopy(a.state_dict())
    a.train_step(*toy_batch(seed=1))
    b = CoTrainer.from_config(cfg, K)
    b.load_state_dict(state)
    assert b.iteration == 1
    b.train_step(*toy_batch(seed=1))
    for (n, pa), (_, pb) in zip(a.segmentor.named_parameters(), b.segmentor.named_parameters()):
        assert torch.equal(pa, pb), n
    for (n, pa), (_, pb) in zip(a.policy.named_parameters(), b.policy.named_parameters()):
        assert torch.equal(pa, pb), n


def test_rng_state_round_trips():
    import random

    import numpy as np

    g = torch.Generator().manual_seed(11)
    state = capture_rng_state({"g": g})
    draws = (random.random(), float(np.random.rand()), float(torch.rand(())), float(torch.rand((), generator=g)))
    restore_rng_state(state, {"g": g})
    again = (random.random(), float(np.random.rand()), float(torch.rand(())), float(torch.rand((), generator=g)))
    assert draws == again


# ----------------------------------------------------------------------------- config


def test_config_defaults_are_the_papers():
    cfg = TrainConfig()
    assert (cfg.lambda_policy, cfg.lambda_kl, cfg.aux_weight, cfg.logstd_bound, cfg.policy_blocks) == (1.0, 1.0, 0.4, 4.0, 4)
    assert cfg.reward_weights == (1.0, 1.0, 1.0, 1.0)
    assert (cfg.modulation, cfg.baseline, cfg.schedule) == ("attention", "ema", "joint")
    assert (cfg.optimizer, cfg.lr, cfg.momentum, cfg.weight_decay, cfg.poly_power) == ("sgd", 0.01, 0.9, 5e-4, 0.9)
    voc = make_config("voc-fcn-r50")
    assert (voc.model, voc.crop_size, voc.batch_size, voc.max_iters, voc.train_split) == (
        "fcn_resnet50", 512, 16, 40000, "trainaug")


def test_config_from_args_applies_the_preset_then_explicit_flags(tmp_path):
    cfg = config_from_args({"preset": None, "lr": 0.5, "max_iters": None, "reward_weights": {
        "iou": 1.0, "dice": 0.0, "ce": 1.0, "boundary": 2.0}})
    assert cfg.preset == "digits" and cfg.lr == 0.5 and cfg.max_iters == PRESETS["digits"]["max_iters"]
    assert cfg.reward_weights == (1.0, 0.0, 1.0, 2.0)
    voc = config_from_args({"data_root": "/data"})
    assert voc.preset == "voc-fcn-r50" and voc.dataset == "voc"
    city = config_from_args({"data_root": "/data", "dataset": "cityscapes"})
    assert city.preset == "cityscapes-fcn-r50" and city.batch_size == 8
    ade = config_from_args({"data_root": "/data", "preset": "ade20k-segformer-b1"})
    assert ade.dataset == "ade20k" and ade.model == "segformer_mit_b1"
    save_config(cfg, tmp_path / "config.json")
    assert json.loads((tmp_path / "config.json").read_text())["lr"] == 0.5
    assert load_config(tmp_path / "config.json") == cfg
    with pytest.raises(ValueError, match="valid names: ade20k-fcn-r50, .*, digits, digits-fcn-r18, .*, voc-fcn-r50"):
        make_config("nope")
    with pytest.raises(ValueError, match="valid names: joint, sft_then_rl, rl_only"):
        make_config("digits", schedule="sometimes")


def test_the_co_trainer_is_importable_from_the_package():
    import agents

    assert agents.CoTrainer is CoTrainer and "CoTrainer" in agents.__all__


def test_retention_never_deletes_the_checkpoint_just_written_for_a_newer_corrupt_one(tmp_path):
    trainer = CoTrainer.from_config(tiny_cfg(), K)
    (tmp_path / checkpoint_name(100)).write_bytes(b"truncated")  # newer than anything this run writes
    for it in (1, 2):
        save_checkpoint(tmp_path / checkpoint_name(it), trainer.state_dict(), keep=1)
    assert [p.name for p in list_checkpoints(tmp_path)] == [checkpoint_name(2), checkpoint_name(100)]
    assert load_checkpoint(tmp_path / checkpoint_name(2))["iteration"] == 0


# ----------------------------------------------------------------------------- one bandit step


def test_the_policy_runs_once_per_training_step_and_its_batchnorm_moves_once():
    trainer = CoTrainer.from_config(tiny_cfg(), K)
    calls = []
    trainer.policy.register_forward_hook(lambda *_: calls.append(1))
    tracked = [m.num_batches_tracked for m in trainer.policy.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert tracked, "the policy has batch-norms"
    trainer.train_step(*toy_batch())
    assert len(calls) == 1 and all(int(t) == 1 for t in tracked)


def test_the_trainer_and_the_env_score_an_action_with_one_transition():
    from envs.core import SegBanditConfig, SegBanditCore

    trainer = CoTrainer.from_config(tiny_cfg(class_weights=None), 11)
    core = SegBanditCore(2, SegBanditConfig(model=trainer.segmentor, image_size=32, array_type="torch"))
    assert type(core.transition) is type(trainer.transition)
    trainer.segmentor.eval()
    trainer.policy.eval()
    core.reset(seed=0)  # encodes the first batch
    with torch.no_grad():
        step, finite = trainer.rollout(core.images, core.masks, deterministic=True, segmentor_grad=False)
        env = core.score(step["action"])
    assert bool(finite)
    torch.testing.assert_close(env["logits"], step["logits"], rtol=0, atol=0)
    torch.testing.assert_close(env["reward"], step["reward"], rtol=0, atol=0)
    torch.testing.assert_close(env["iou"], step["reward_iou"], rtol=0, atol=0)


def test_cotraining_loss_returns_weighted_terms_that_sum_to_the_loss():
    x, y = toy_batch()
    one = CoTrainer.from_config(tiny_cfg(lambda_policy=1.0, aux_weight=0.4), K)
    two = CoTrainer.from_config(tiny_cfg(lambda_policy=2.0, aux_weight=0.8), K)
    terms = []
    for trainer in (one, two):
        trainer.generator.manual_seed(3)
        torch.manual_seed(0)
        step, _ = trainer.rollout(x, y, aux=True)
        terms.append(trainer.loss(step))
    a, b = terms
    torch.testing.assert_close(b["loss_policy"], 2.0 * a["loss_policy"])  # lambda_P weights only the policy term
    torch.testing.assert_close(b["loss_aux"], 2.0 * a["loss_aux"])
    torch.testing.assert_close(b["loss_ce"], a["loss_ce"])
    torch.testing.assert_close(b["loss_kl"], a["loss_kl"])  # lambda_KL (1 in both) is the TorchRL loss's coefficient
    parts = ("loss_ce", "loss_aux", "loss_policy", "loss_kl", "loss_critic", "loss_entropy")
    torch.testing.assert_close(b["loss"], sum(b[k] for k in parts))


@pytest.mark.parametrize("baseline", ["rloo", "group_mean", "greedy"])
def test_a_per_image_baseline_scores_k_actions_per_image_with_one_policy_run(baseline):
    trainer = CoTrainer.from_config(tiny_cfg(baseline=baseline, action_samples=3), K)
    calls = []
    trainer.policy.register_forward_hook(lambda *_: calls.append(1))
    stats = trainer.train_step(*toy_batch())
    assert len(calls) == 1 and stats["skipped"] == 0.0 and math.isfinite(stats["loss_policy"])
    assert stats["reward_std_actions"] >= 0.0 and stats["reward_std_images"] >= 0.0


def test_the_group_baselines_refuse_a_single_action_per_image():
    with pytest.raises(ValueError, match="action_samples >= 2"):
        tiny_cfg(baseline="rloo", action_samples=1)


@pytest.mark.parametrize("norm", ["group", "none"])
def test_the_signal_path_can_keep_the_actions_scale_and_alpha_can_start_at_zero(norm):
    trainer = CoTrainer.from_config(tiny_cfg(signal_norm=norm, alpha_init=0.0), K)
    proj = trainer.segmentor.modulation.signal_proj
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in proj.modules())
    assert float(trainer.segmentor.alpha.detach()) == 0.0
    assert trainer.train_step(*toy_batch())["skipped"] == 0.0


def test_ppo_ewma_epochs_move_only_the_policy_and_make_the_clip_act():
    x, y = toy_batch()
    one, four = (CoTrainer.from_config(tiny_cfg(algo="ppo_ewma", ppo_epochs=e, policy_lr=0.5, clip_eps=0.01), K)
                 for e in (1, 4))  # fmt: skip
    calls = []
    four.policy.register_forward_hook(lambda *_: calls.append(1))
    for trainer in (one, four):
        torch.manual_seed(0)
        stats = trainer.train_step(x, y)
    assert len(calls) == 4  # the joint step's policy run, then one per later epoch
    assert stats["clip_fraction_final"] > 0.0  # later epochs move the ratio against the behaviour policy
    for name, p in params_of(one.segmentor).items():  # the later epochs never touch the segmentor
        assert torch.equal(p, params_of(four.segmentor)[name]), name
    assert any(not torch.equal(p, params_of(four.policy)[n]) for n, p in params_of(one.policy).items())


def test_element_ratio_clip_runs_ppo_ewma_epochs_and_clips_per_element():
    trainer = CoTrainer.from_config(tiny_cfg(algo="ppo_ewma", ppo_epochs=3, ratio_clip="element", policy_lr=0.5,
                                             clip_eps=0.01), K)  # fmt: skip
    stats = trainer.train_step(*toy_batch())
    assert stats["skipped"] == 0.0 and 0.0 < stats["clip_fraction_final"] <= 1.0


@pytest.mark.parametrize("overrides", [{}, {"baseline": "rloo", "action_samples": 3}, {"baseline": "greedy"}])
def test_policy_diagnostics_measure_reward_spread_and_gradients_without_changing_the_run(overrides):
    from agents.diagnostics import policy_diagnostics

    trainer = CoTrainer.from_config(tiny_cfg(**overrides), K)
    x, y = toy_batch()
    trainer.train_step(x, y)
    state = copy.deepcopy(trainer.state_dict())
    diag = policy_diagnostics(trainer, x, y, draws=4)
    assert diag["reward_std_actions"] >= 0.0 and diag["reward_std_images"] >= 0.0
    assert diag["grad_norm_policy_kl"] >= 0.0 and diag["grad_norm_policy_ce"] > 0.0  # CE reaches pi through s
    after = trainer.state_dict()
    for part in ("segmentor", "policy", "objective"):
        for name, value in state[part].items():
            assert torch.equal(value, after[part][name]), (part, name)
    assert torch.equal(state["rng"]["generators"]["action"], after["rng"]["generators"]["action"])


def test_channels_last_stores_conv_weights_nhwc_and_trains_the_same_function():
    nhwc, nchw = (CoTrainer.from_config(tiny_cfg(channels_last=cl), K) for cl in (True, False))
    conv = nhwc.segmentor.backbone.stem[0].weight  # (C_out, 3, k, k)
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    assert nchw.segmentor.backbone.stem[0].weight.is_contiguous()
    images, masks = toy_batch(seed=0)
    logits = nhwc.predict(images)
    assert logits.is_contiguous()  # NCHW logits: the softmaxes over the classes do not copy
    torch.testing.assert_close(logits, nchw.predict(images), rtol=1e-4, atol=1e-4)
    for trainer in (nhwc, nchw):
        trainer.train_step(images, masks)
    torch.testing.assert_close(nhwc.predict(images), nchw.predict(images), rtol=1e-3, atol=1e-3)
