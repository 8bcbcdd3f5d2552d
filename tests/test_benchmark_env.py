"""SegBandit as an RL benchmark (issue 14): loading segmentors, episodes of K images, the paired reward, rendering,
the RL-ready pooled id, evaluation against the zero action and the reference scores."""
from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.error import ClosedEnvironmentError

import envs  # noqa: F401  (registers the ids)
from agents.pretrain import imitate_hint, make_pretrained, presence_hint, pretrained_config
from envs import SegBanditEnv, SegBanditTorchEnv, SegBanditVectorEnv
from envs.evaluation import evaluate, reference_actions
from segbandit.constants import IGNORE_INDEX
from segbandit.models import build_segmentor
from segbandit.pretrained import (
    DEFAULT_PRETRAINED,
    PRETRAINED,
    build_from_bundle,
    bundle_digest,
    load_bundle,
    pretrained_path,
)
from segbandit.reference_scores import REFERENCE_SCORES, normalized_score

SIZE = 32
TINY = {"num_samples": 8}
PHASES = dict(hint_steps=2, imitate_steps=2, refine_steps=2)  # every phase of the recipe, a few steps each


pytestmark = pytest.mark.usefixtures("one_thread")


def _tiny_recipe(**kw):
    base = dict(crop_size=SIZE, batch_size=4, max_iters=2, eval_every=2, train_size=16, val_size=8, attn_dim=32,
                policy_hidden=16, num_workers=0)  # fmt: skip
    return pretrained_config(**{**base, **kw})


@pytest.fixture(scope="module")
def bundle_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("bundle") / "tiny.pt"
    result = make_pretrained(path, _tiny_recipe(), **PHASES, log=lambda s: None)
    return path, result


def _env(bundle_file, **kw):
    kw.setdefault("image_size", SIZE)
    kw.setdefault("dataset_kwargs", TINY)
    return SegBanditVectorEnv(num_envs=kw.pop("num_envs", 2), segmentor=str(bundle_file[0]), **kw)


# ---------------------------------------------------------------------------- where the segmentor comes from


def test_the_pretrained_recipe_is_the_one_the_shipped_file_records():
    shipped = load_bundle(pretrained_path(DEFAULT_PRETRAINED)).config
    recipe = vars(pretrained_config())
    assert {k: recipe[k] for k in shipped} == shipped  # model, widths, action mode, seed, max_iters 1400, preset
    assert recipe["channels_last"] is False  # the NCHW layout it was trained in, whatever the preset's default


def test_make_pretrained_is_reproducible_bit_for_bit(bundle_file, tmp_path):
    again = make_pretrained(tmp_path / "again.pt", _tiny_recipe(), **PHASES, log=lambda s: None)
    assert again["digest"] == bundle_file[1]["digest"]
    assert bundle_digest(load_bundle(tmp_path / "again.pt")) == again["digest"]


def test_the_presence_hint_says_which_digits_a_mask_holds_and_ignores_void():
    masks = torch.zeros(2, 4, 4, dtype=torch.long)
    masks[0, 0, 0], masks[0, 1, 1], masks[1, 2, 2] = 3, 10, 255  # image 0 holds digits 3 and 10; image 1 only void
    hint = presence_hint(masks, num_classes=11, channels=12, bound=3.0)  # (B, d)
    assert hint.shape == (2, 12)
    assert hint[0, :10].tolist() == [-3.0, -3.0, 3.0, -3.0, -3.0, -3.0, -3.0, -3.0, -3.0, 3.0]
    assert (hint[1, :10] == -3.0).all() and (hint[:, 10:] == 0).all()  # void is no digit; spare channels stay 0
    with pytest.raises(ValueError, match="at least K - 1 = 10"):
        presence_hint(masks, num_classes=11, channels=8)


def test_the_hint_construction_retrains_the_decoder_only_and_is_reproducible(bundle_file, tmp_path):
    run = lambda name: make_pretrained(tmp_path / name, _tiny_recipe(), refine_steps=0, imitate_steps=0,  # noqa: E731
                                       hint_steps=2, start_from=bundle_file[0], log=lambda s: None)
    first, second = run("a.pt"), run("b.pt")
    assert first["digest"] == second["digest"] != bundle_file[1]["digest"]
    before, after = load_bundle(bundle_file[0]), load_bundle(tmp_path / "a.pt")
    changed = {k for k in before.segmentor if not torch.equal(before.segmentor[k], after.segmentor[k])}
    assert changed and not any(k.startswith("backbone.") for k in changed)  # z, the observation, is unchanged
    assert any(k.startswith("modulation.") for k in changed) and after.meta["hint_steps"] == 2
    assert all(torch.equal(before.policy[k], after.policy[k]) for k in before.policy)  # the policy is untouched


def _hint_error(bundle, cfg) -> float:
    """Mean squared distance of the bundle's policy mean from the presence hint on one training batch."""
    from agents.datasets import build_datasets
    from segbandit.pretrained import policy_from_bundle

    seg = build_from_bundle(bundle).eval()
    policy = policy_from_bundle(bundle, seg.latent_channels).eval()
    train, *_ = build_datasets(cfg)
    images, masks = map(torch.stack, zip(*(train[i] for i in range(8))))
    with torch.no_grad():
        mu, _ = policy(seg.encode(images))  # (8, d)
    return float(((mu - presence_hint(masks, seg.num_classes, seg.latent_channels)) ** 2).mean())


def test_the_hint_policy_is_regressed_on_the_hint_and_leaves_the_segmentor_alone(bundle_file):
    cfg = _tiny_recipe()
    before = load_bundle(bundle_file[0])
    after = imitate_hint(before, cfg, steps=30, lr=3e-3)
    assert _hint_error(after, cfg) < 0.5 * _hint_error(before, cfg)  # mu(z) moves toward bound * (2 P(present) - 1)
    assert all(torch.equal(before.segmentor[k], after.segmentor[k]) for k in before.segmentor)
    assert after.meta["imitate_steps"] == 30


def test_a_bundle_loads_with_its_stored_attention_width_frozen_in_eval_mode(bundle_file):
    env = _env(bundle_file)
    seg = env.segmentor
    assert seg.modulation.q_proj.weight.shape[0] == 32  # from the stored config, not the env's default width
    assert not seg.training and not any(p.requires_grad for p in seg.parameters())
    bundle = load_bundle(bundle_file[0])
    for name, tensor in seg.state_dict().items():
        assert torch.equal(tensor, bundle.segmentor[name]), name
    assert env.core.policy is not None and not env.core.policy.training


def test_a_main_job_checkpoint_loads_as_the_env_segmentor(tmp_path):
    from agents.fit import fit
    from agents.checkpoint import latest_checkpoint

    cfg = _tiny_recipe(out=str(tmp_path / "run"), num_overlays=0)
    fit(cfg, log=lambda s: None)
    ckpt = latest_checkpoint(tmp_path / "run")
    env = SegBanditVectorEnv(num_envs=1, segmentor=str(ckpt), image_size=SIZE, dataset_kwargs=TINY)
    state = torch.load(ckpt, weights_only=True)["segmentor"]
    for name, tensor in env.segmentor.state_dict().items():
        assert torch.equal(tensor, state[name]), name


def test_a_plain_state_dict_takes_the_attention_width_from_its_weights():
    torch.manual_seed(0)
    seg = build_segmentor("fcn_resnet_tiny", 11, attn_dim=48, num_heads=4)
    env = SegBanditVectorEnv(num_envs=1, segmentor=seg.state_dict(), model_kwargs={"num_heads": 4},
                             image_size=SIZE, dataset_kwargs=TINY)
    assert env.segmentor.modulation.q_proj.weight.shape[0] == 48
    assert env.core.policy is None


def test_weights_of_another_architecture_are_a_value_error_naming_it():
    seg = build_segmentor("fcn_resnet18", 11, attn_dim=32, num_heads=4)
    with pytest.raises(ValueError, match="do not fit a fcn_resnet_tiny"):
        SegBanditVectorEnv(num_envs=1, segmentor=seg.state_dict(), image_size=SIZE, dataset_kwargs=TINY)


def test_an_unknown_segmentor_source_lists_the_pretrained_names():
    with pytest.raises(FileNotFoundError, match="digits_cotrained"):
        SegBanditVectorEnv(num_envs=1, segmentor="no_such_weights", image_size=SIZE, dataset_kwargs=TINY)
    with pytest.raises(ValueError, match="valid names"):
        pretrained_path("no_such_weights")


def test_random_segmentor_is_built_from_model_seed():
    kw = dict(num_envs=1, segmentor="random", image_size=SIZE, dataset_kwargs=TINY)
    a, b = SegBanditVectorEnv(**kw), SegBanditVectorEnv(**kw)
    assert a.core.policy is None
    for pa, pb in zip(a.segmentor.parameters(), b.segmentor.parameters()):
        assert torch.equal(pa, pb)


def test_env_steps_never_move_a_shared_training_segmentors_batchnorm_statistics():
    torch.manual_seed(0)
    seg = build_segmentor("fcn_resnet_tiny", 11, attn_dim=32, num_heads=4).train()
    before = {k: v.clone() for k, v in seg.state_dict().items() if "running" in k}
    env = SegBanditVectorEnv(num_envs=2, segmentor=seg, image_size=SIZE, dataset_kwargs=TINY)
    env.reset(seed=0)
    env.step(np.zeros(env.action_space.shape, np.float32))
    assert seg.training  # the caller's mode is kept ...
    for k, v in seg.state_dict().items():
        if "running" in k:
            assert torch.equal(v, before[k]), k  # ... and its statistics are not touched


def test_the_default_env_loads_the_shipped_co_trained_segmentor():
    env = gym.make("SegBandit-v0")
    bundle = load_bundle(DEFAULT_PRETRAINED)
    seg = env.unwrapped.segmentor
    assert DEFAULT_PRETRAINED in PRETRAINED and bundle.config["action_mode"] == "channel"
    for name, tensor in seg.state_dict().items():
        assert torch.equal(tensor, bundle.segmentor[name]), name
    assert bundle_digest(bundle) == bundle.meta["digest"]
    assert env.observation_space.shape == (64, 16, 16) and env.unwrapped.vector_env.core.policy is not None
    env.close()


def test_build_from_bundle_refuses_a_dataset_with_another_number_of_classes(bundle_file):
    with pytest.raises(ValueError, match="predicts 11 classes"):
        build_from_bundle(load_bundle(bundle_file[0]), num_classes=21)


# ---------------------------------------------------------------------------- episodes, paired reward, spec


def test_episode_length_k_terminates_every_kth_step_with_final_obs_only_then(bundle_file):
    env = _env(bundle_file, episode_length=3, action_mode="channel")
    obs, _ = env.reset(seed=0)
    action = np.zeros(env.action_space.shape, np.float32)
    flags = []
    for _ in range(6):
        obs2, _, terminated, truncated, info = env.step(action)
        flags.append(bool(terminated.all()))
        assert ("final_obs" in info) == flags[-1] and not truncated.any()
        assert not np.array_equal(obs2, obs)  # every step moves on to the next images
        obs = obs2
    assert flags == [False, False, True, False, False, True]


def test_sync_vector_env_with_next_step_autoreset_wastes_one_step_in_k_plus_one(bundle_file):
    kw = dict(segmentor=str(bundle_file[0]), image_size=SIZE, dataset_kwargs=TINY, action_mode="channel",
              obs_mode="pooled", action_bound=1.0, episode_length=3)  # fmt: skip
    vec = gym.vector.SyncVectorEnv([lambda: SegBanditEnv(**kw)])  # Gymnasium's default NEXT_STEP autoreset
    vec.reset(seed=0)
    steps, rewards = 12, []
    for _ in range(steps):
        _, r, *_ = vec.step(np.zeros((1, 64), np.float32))
        rewards.append(float(r[0]))
    assert rewards.count(0.0) == steps // 4  # one reset step (reward 0) after each episode of 3 scored images
    vec.close()


def test_paired_reward_is_the_gain_over_the_zero_action_on_the_same_image(bundle_file):
    plain = _env(bundle_file, action_mode="channel", shuffle=False)
    paired = _env(bundle_file, action_mode="channel", shuffle=False, paired_reward=True)
    plain.reset(seed=0)
    paired.reset(seed=0)
    action = np.random.default_rng(0).uniform(-1, 1, plain.action_space.shape).astype(np.float32)
    _, r, _, _, _ = plain.step(action)
    _, g, _, _, info = paired.step(action)
    np.testing.assert_allclose(g, r - info["reward_zero"], rtol=1e-5, atol=1e-6)
    _, g0, _, _, _ = paired.step(np.zeros_like(action))
    np.testing.assert_allclose(g0, 0.0, atol=1e-6)


def test_torchrl_env_has_a_bounded_action_spec_and_only_the_observation_in_its_observation_spec(bundle_file):
    from torchrl.envs.utils import check_env_specs

    env = SegBanditTorchEnv(num_envs=2, segmentor=str(bundle_file[0]), image_size=SIZE, dataset_kwargs=TINY,
                            action_mode="channel", obs_mode="pooled")
    assert list(env.observation_spec.keys()) == ["observation"]
    assert torch.isfinite(env.action_spec.space.high).all() and float(env.action_spec.space.high.max()) == 3.0
    check_env_specs(env)
    with_info = SegBanditTorchEnv(num_envs=2, segmentor=str(bundle_file[0]), image_size=SIZE, dataset_kwargs=TINY,
                                  reward_info=True, paired_reward=True, episode_length=2)
    check_env_specs(with_info)
    td = with_info.rollout(4, break_when_any_done=False)
    assert td["next", "done"].squeeze(-1).all(0).tolist() == [False, True, False, True]
    assert set(td["next", "info"].keys()) == {"iou", "dice", "ce", "boundary", "reward_zero"}


def test_cached_latents_give_the_same_stream_and_encode_each_image_once(bundle_file):
    kw = dict(action_mode="channel", paired_reward=True, dataset_kwargs={"num_samples": 8})
    plain, cached = _env(bundle_file, **kw), _env(bundle_file, cache_latents=True, **kw)
    calls = []
    cached.segmentor.backbone.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    plain.reset(seed=0)
    cached.reset(seed=0)
    action = np.full(plain.action_space.shape, 0.5, np.float32)
    for _ in range(8):  # 16 images: two epochs of the 8 scenes
        a, b = plain.step(action), cached.step(action)
        np.testing.assert_allclose(a[0], b[0], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(a[1], b[1], rtol=1e-5, atol=1e-6)
    assert sum(calls) == 8  # each of the 8 scenes encoded once (8 steps x 2 images + the first reset's)


def test_cache_latents_refuses_a_shared_or_augmented_segmentor():
    seg = build_segmentor("fcn_resnet_tiny", 11, attn_dim=32, num_heads=4)
    with pytest.raises(ValueError, match="owns"):
        SegBanditVectorEnv(num_envs=1, segmentor=seg, cache_latents=True, image_size=SIZE, dataset_kwargs=TINY)
    with pytest.raises(ValueError, match="augment"):
        SegBanditVectorEnv(num_envs=1, cache_latents=True, augment=True, image_size=SIZE, dataset_kwargs=TINY)


# ---------------------------------------------------------------------------- the RL-ready id, rendering, close


def test_pooled_id_has_vector_observations_and_bounded_channel_actions():
    env = gym.make("SegBanditPooled-v0")
    assert env.observation_space.shape == (64,) and env.action_space.shape == (64,)
    assert env.action_space.dtype == np.float32 and np.all(env.action_space.high == 3.0)
    obs, _ = env.reset(seed=0)
    _, r, terminated, _, info = env.step(np.zeros(64, np.float32))
    assert obs.shape == (64,) and not terminated and set(info) >= {"iou", "dice", "ce", "boundary", "reward_zero"}
    assert r == pytest.approx(0.0, abs=1e-6)  # the paired reward: the zero action gains nothing
    env.close()


@pytest.mark.parametrize("script", ["torchrl_ppo_segbandit.py", "sb3_ppo_segbandit.py"])
def test_client_example_quick_run_prints_its_scores(script, capsys):
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).resolve().parents[1] / "examples" / script
    spec = importlib.util.spec_from_file_location(script[:-3], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    result = module.main(["--quick", "--threads", "1"])
    assert "before training" in capsys.readouterr().out
    assert result["timesteps"] >= 64 and np.isfinite(result["reward_after"]) and result["curve"]


def test_clients_benchmark_reruns_one_client_and_keeps_the_others(tmp_path):
    import json

    from benchmarks import clients as bench

    common = ["--seeds", "1", "--quick", "--out", str(tmp_path / "c.json"), "--img", str(tmp_path / "c.png")]
    first = bench.main(["--clients", "sb3_ppo,torchrl_ppo", *common])
    again = bench.main(["--clients", "torchrl_ppo", "--replace", *common])
    sb3 = [r for r in again["results"] if r["client"] == "sb3_ppo"]
    kept = json.loads(json.dumps([r for r in first["results"] if r["client"] == "sb3_ppo"]))  # as the file holds it
    assert sb3 == kept
    assert [r["client"] for r in again["results"]] == ["sb3_ppo", "torchrl_ppo"]
    assert "| sb3_ppo | 1 |" in again["table"] and again["earlier"]["command"].endswith("c.png")


def test_rgb_array_render_shows_image_truth_and_prediction_side_by_side(bundle_file):
    from gymnasium.utils.env_checker import check_env

    env = SegBanditEnv(segmentor=str(bundle_file[0]), image_size=SIZE, dataset_kwargs=TINY, action_mode="channel",
                       obs_mode="pooled", action_bound=1.0, render_mode="rgb_array")
    env.reset(seed=0)
    before = env.render()
    env.step(np.zeros(64, np.float32))
    frame = env.render()
    assert frame.shape == (SIZE, 3 * SIZE, 3) and frame.dtype == np.uint8
    assert before[:, 2 * SIZE:].max() == 0 and frame[:, 2 * SIZE:].max() > 0  # the prediction panel fills in
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check_env(env)  # Gymnasium's render check included
    env.close()


def test_step_after_close_raises():
    env = SegBanditVectorEnv(num_envs=1, segmentor="random", image_size=SIZE, dataset_kwargs=TINY)
    env.reset(seed=0)
    env.close()
    with pytest.raises(ClosedEnvironmentError):
        env.step(np.zeros(env.action_space.shape, np.float32))


# ---------------------------------------------------------------------------- evaluation and reference scores


def test_evaluate_pairs_a_policy_with_the_zero_action_on_fixed_images(bundle_file):
    kw = dict(segmentor=str(bundle_file[0]), image_size=SIZE, obs_mode="pooled", action_mode="channel")
    zero = evaluate("zero", num_images=8, batch_size=4, **kw)
    assert zero["gain"] == 0.0 and zero["reward"] == zero["reward_zero"] and zero["num_images"] == 8
    calls = []
    mine = evaluate(lambda obs: calls.append(obs.shape) or np.ones((obs.shape[0], 64), np.float32), num_images=8,
                    batch_size=4, **kw)
    assert calls == [(4, 64), (4, 64)] and mine["reward_zero"] == zero["reward_zero"]
    assert mine["gain"] == pytest.approx(mine["reward"] - mine["reward_zero"], abs=1e-6)


def test_the_oracle_uses_the_labels_to_lower_the_ce_below_the_zero_actions(bundle_file):
    import torch.nn.functional as F

    from envs.evaluation import oracle_actions

    env = _env(bundle_file, action_mode="channel", num_envs=4)
    env.reset(seed=0)
    core = env.core

    def ce(s):
        logits = core.transition.decode(core.latents, s, core.image_size, core.skips)  # (B, K, H, W)
        return float(F.cross_entropy(logits, core.masks, ignore_index=IGNORE_INDEX))

    oracle = oracle_actions(core)  # Adam on s against the true mask, from s = 0
    with torch.no_grad():
        assert ce(oracle) < ce(core.zero_action())
    assert reference_actions(core, "oracle").shape == (4, core.action_shape[0])


def test_the_env_docstring_is_a_spec_sheet_with_the_reference_scores():
    doc = SegBanditEnv.__doc__
    for section in ("## Observation space", "## Action space", "## Rewards", "## Reference scores", "## Version history"):
        assert section in doc
    for env_id, ref in REFERENCE_SCORES.items():
        assert f"`{env_id}`" in doc and all(f"{v:.4f}" in doc for v in ref.values())


def test_normalized_score_maps_zero_to_0_and_the_co_trained_policy_to_100():
    for env_id, ref in REFERENCE_SCORES.items():
        assert normalized_score(ref["zero"], env_id) == pytest.approx(0.0)
        assert normalized_score(ref["policy_mean"], env_id) == pytest.approx(100.0)
    with pytest.raises(ValueError, match="no reference scores"):
        normalized_score(1.0, "CartPole-v1")


@pytest.mark.parametrize("env_id", ["SegBandit-v0", "SegBanditPooled-v0"])
def test_reference_scores_are_what_the_shipped_segmentor_scores_now(env_id):
    from segbandit._registration import ENV_KWARGS

    ref = REFERENCE_SCORES[env_id]
    for name in ("zero", "policy_mean"):
        got = evaluate(name, num_images=256, batch_size=64, **ENV_KWARGS[env_id])
        assert got["reward"] == pytest.approx(ref[name], abs=1e-3), name


def test_hint_headroom_scores_the_hint_and_a_fitted_presence_policy_against_the_zero_action(bundle_file, tmp_path):
    from benchmarks import hint_headroom as bench

    res = bench.main(["--segmentor", str(bundle_file[0]), "--num-train", "16", "--num-images", "16", "--batch-size",
                      "8", "--out", str(tmp_path / "h.json")])
    assert set(res["rows"]) == {"zero", "hint", "fitted"} and res["rows"]["zero"]["gain"] == 0.0
    assert 0.0 <= res["presence_accuracy"] <= 1.0 and (tmp_path / "h.json").exists()
