"""SegBandit-v0: the Gymnasium vector and single envs, the TorchRL env and the Stable-Baselines3 adapter.

Everything runs on 32 px digit scenes with a tiny dataset and a shared eval-mode fcn_resnet18 (small attention).
"""
from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from gymnasium.vector import AutoresetMode

import envs
from envs import SB3VecEnv, SegBanditEnv, SegBanditTorchEnv, SegBanditVectorEnv
from segbandit.data import make_dataset
from segbandit.errors import DataError
from segbandit.models import build_segmentor
from segbandit.policy import LatentPolicy

SIZE = 32
K = 11
TINY = {"num_samples": 12}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def segmentor():
    torch.manual_seed(0)
    return build_segmentor("fcn_resnet18", K, attn_dim=32, num_heads=4).eval()


@pytest.fixture
def make_vec(segmentor):
    built = []

    def make(num_envs=2, **kw):
        kw.setdefault("model", segmentor)
        kw.setdefault("image_size", SIZE)
        kw.setdefault("dataset_kwargs", TINY)
        env = SegBanditVectorEnv(num_envs=num_envs, **kw)
        built.append(env)
        return env

    yield make
    for env in built:
        env.close()


def _single(segmentor, **kw):
    kw.setdefault("model", segmentor)
    kw.setdefault("image_size", SIZE)
    kw.setdefault("dataset_kwargs", TINY)
    return SegBanditEnv(**kw)


class PairDataset(torch.utils.data.Dataset):
    """A custom map-style dataset: deterministic random images (3, 32, 32) float and masks (32, 32) int64."""

    def __init__(self, n=6, seed=0, image_dtype=torch.float32):
        g = torch.Generator().manual_seed(seed)
        self.images = torch.randn(n, 3, SIZE, SIZE, generator=g).to(image_dtype)
        self.masks = torch.randint(0, K, (n, SIZE, SIZE), generator=g)

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i], self.masks[i]


# ---------------------------------------------------------------------------- spaces and construction


def test_vector_env_spaces_are_float32_boxes_of_the_latent_shape(make_vec):
    env = make_vec(num_envs=3)
    assert env.single_observation_space.shape == (512, SIZE // 8, SIZE // 8)
    assert env.single_action_space.shape == (512, SIZE // 8, SIZE // 8)
    assert env.observation_space.shape == (3, 512, SIZE // 8, SIZE // 8)
    assert env.action_space.shape == (3, 512, SIZE // 8, SIZE // 8)
    assert env.single_observation_space.dtype == np.float32 and env.single_action_space.dtype == np.float32
    assert env.metadata["autoreset_mode"] is AutoresetMode.SAME_STEP
    obs, info = env.reset(seed=0)
    assert obs.shape == (3, 512, SIZE // 8, SIZE // 8) and obs.dtype == np.float32 and info == {}


def test_pooled_observation_and_channel_action_are_vectors_of_d(make_vec):
    env = make_vec(num_envs=2, obs_mode="pooled", action_mode="channel", action_bound=2.0)
    assert env.single_observation_space.shape == (512,)
    assert env.single_action_space.shape == (512,)
    assert np.all(env.single_action_space.high == 2.0) and np.all(env.single_action_space.low == -2.0)
    obs, _ = env.reset(seed=0)
    np.testing.assert_allclose(obs, env.core.latents.mean(dim=(2, 3)).numpy(), rtol=1e-6)


def test_env_built_segmentor_is_eval_mode_and_shared_one_keeps_its_mode(segmentor):
    own = SegBanditVectorEnv(num_envs=1, image_size=SIZE, dataset_kwargs=TINY, model_kwargs={"attn_dim": 32, "num_heads": 4})
    assert own.segmentor is not segmentor and not own.segmentor.training
    segmentor.train()
    try:
        shared = SegBanditVectorEnv(num_envs=1, model=segmentor, image_size=SIZE, dataset_kwargs=TINY)
        shared.reset(seed=0)
        assert shared.segmentor is segmentor and segmentor.training
    finally:
        segmentor.eval()


def test_named_model_is_built_identically_from_model_seed():
    kw = dict(num_envs=1, image_size=SIZE, dataset_kwargs=TINY, model_kwargs={"attn_dim": 32, "num_heads": 4})
    a, b = SegBanditVectorEnv(**kw), SegBanditVectorEnv(**kw)
    for pa, pb in zip(a.segmentor.parameters(), b.segmentor.parameters()):
        assert torch.equal(pa, pb)


def test_default_model_is_the_cpu_sized_stride_4_segmentor():
    env = SegBanditVectorEnv(num_envs=1, image_size=64, dataset_kwargs=TINY)
    assert env.config.model == "fcn_resnet_tiny" and env.segmentor.latent_channels == 64
    assert env.single_observation_space.shape == (64, 16, 16)  # d = 64 at stride 4 of a 64 px scene


def test_unknown_obs_mode_raises_value_error_listing_choices(segmentor):
    with pytest.raises(ValueError, match="obs_mode.*'pixels'.*latent, pooled"):
        SegBanditVectorEnv(num_envs=1, model=segmentor, obs_mode="pixels")


def test_unknown_action_mode_raises_value_error_listing_choices(segmentor):
    with pytest.raises(ValueError, match="action_mode.*'sparse'.*dense, channel"):
        SegBanditVectorEnv(num_envs=1, model=segmentor, action_mode="sparse")


# ---------------------------------------------------------------------------- registration


def test_import_envs_registers_segbandit_v0():
    assert envs.SegBanditVectorEnv is SegBanditVectorEnv
    spec = gym.spec("SegBandit-v0")
    assert spec.entry_point == "envs.single:SegBanditEnv"
    assert spec.vector_entry_point == "envs.vector:SegBanditVectorEnv"


def test_gymnasium_make_gives_the_single_env(segmentor):
    env = gym.make("SegBandit-v0", model=segmentor, image_size=SIZE, dataset_kwargs=TINY)
    assert isinstance(env.unwrapped, SegBanditEnv)
    obs, _ = env.reset(seed=0)
    _, reward, terminated, truncated, info = env.step(env.action_space.sample())
    assert obs.shape == (512, SIZE // 8, SIZE // 8) and terminated and not truncated
    assert 0.0 <= reward <= 4.0 and set(info) == {"iou", "dice", "ce", "boundary"}
    env.close()


def test_make_vec_vector_entry_point_gives_the_native_vector_env(segmentor):
    env = gym.make_vec(
        "SegBandit-v0", num_envs=3, vectorization_mode="vector_entry_point",
        model=segmentor, image_size=SIZE, dataset_kwargs=TINY,
    )
    assert isinstance(env, SegBanditVectorEnv) and env.num_envs == 3
    env.reset(seed=0)
    obs, reward, terminated, _, _ = env.step(env.action_space.sample())
    assert obs.shape[0] == 3 and reward.shape == (3,) and terminated.all()
    env.close()


def test_make_vec_sync_gives_a_sync_vector_env_of_single_envs(segmentor):
    env = gym.make_vec(
        "SegBandit-v0", num_envs=2, vectorization_mode="sync",
        vector_kwargs={"autoreset_mode": AutoresetMode.SAME_STEP},
        model=segmentor, image_size=SIZE, dataset_kwargs=TINY,
    )
    assert isinstance(env, gym.vector.SyncVectorEnv)
    assert all(isinstance(e.unwrapped, SegBanditEnv) for e in env.envs)
    first, _ = env.reset(seed=0)
    _, reward, terminated, _, info = env.step(env.action_space.sample())
    assert reward.shape == (2,) and terminated.all()
    np.testing.assert_array_equal(np.stack(info["final_obs"]), first)
    env.close()


# ---------------------------------------------------------------------------- library checkers


def test_single_env_passes_gymnasium_check_env(segmentor):
    from gymnasium.utils.env_checker import check_env

    env = _single(segmentor)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*infinity.*")  # unbounded latents / Gaussian actions, by design
        warnings.filterwarnings("ignore", message=".*render.*")
        check_env(env)


def test_single_env_passes_sb3_check_env_with_pooled_obs_and_channel_action(segmentor):
    from stable_baselines3.common.env_checker import check_env

    env = _single(segmentor, obs_mode="pooled", action_mode="channel", action_bound=1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no SB3 warning either
        check_env(env)


def test_torchrl_env_passes_check_env_specs(segmentor):
    from torchrl.envs.utils import check_env_specs

    env = SegBanditTorchEnv(num_envs=2, model=segmentor, image_size=SIZE, dataset_kwargs=TINY)
    check_env_specs(env, break_when_any_done="both")


# ---------------------------------------------------------------------------- same-step autoreset semantics


def test_step_returns_next_images_and_scored_observations_in_final_obs(make_vec, segmentor):
    env = make_vec(num_envs=2)
    obs, _ = env.reset(seed=0)
    scored_images = env.core.images.clone()
    obs2, reward, terminated, truncated, info = env.step(np.zeros(env.action_space.shape, np.float32))
    assert terminated.all() and not truncated.any()
    assert info["_final_obs"].all() and info["_final_info"].all()
    assert info["final_obs"].dtype == object and len(info["final_obs"]) == 2
    np.testing.assert_array_equal(np.stack(info["final_obs"]), obs)
    assert not torch.equal(env.core.images, scored_images)  # moved on to the next images
    with torch.no_grad():
        expected = segmentor.encode(env.core.images).numpy()
    np.testing.assert_allclose(obs2, expected, rtol=1e-5, atol=1e-5)


def test_info_holds_each_reward_term_per_sub_env_and_reward_is_their_weighted_sum(make_vec):
    env = make_vec(num_envs=3, reward_weights="1,0.5,2,0")
    env.reset(seed=0)
    _, reward, _, _, info = env.step(np.zeros(env.action_space.shape, np.float32))
    for k in ("iou", "dice", "ce", "boundary"):
        assert info[k].shape == (3,) and info[f"_{k}"].all()
        np.testing.assert_array_equal(info["final_info"][k], info[k])
    np.testing.assert_allclose(reward, info["iou"] + 0.5 * info["dice"] + 2 * info["ce"], rtol=1e-6)  # boundary: weight 0


def test_reward_matches_decoding_the_scored_latents_by_hand(make_vec, segmentor):
    env = make_vec(num_envs=2, action_mode="channel")
    env.reset(seed=0)
    z, masks = env.core.latents.clone(), env.core.masks.clone()
    action = np.random.default_rng(0).standard_normal(env.action_space.shape).astype(np.float32)
    _, reward, _, _, _ = env.step(action)
    s = torch.from_numpy(action)[:, :, None, None].expand_as(z)
    with torch.no_grad():
        logits = segmentor.decode(z, s, out_size=(SIZE, SIZE))
    expected = env.reward_fn(logits, masks)["total"].numpy()
    np.testing.assert_allclose(reward, expected, rtol=1e-5, atol=1e-6)


def test_data_stream_restarts_with_a_new_epoch_when_exhausted(make_vec):
    env = make_vec(num_envs=4, dataset_kwargs={"num_samples": 8})  # 2 batches per epoch
    env.reset(seed=0)
    for _ in range(4):
        env.step(np.zeros(env.action_space.shape, np.float32))
    assert env.core.batches_drawn == 5


# ---------------------------------------------------------------------------- determinism and array types


def _rollout(env, seed, steps=3):
    obs, _ = env.reset(seed=seed)
    rng = np.random.default_rng(0)
    observations, rewards = [np.asarray(obs)], []
    for _ in range(steps):
        a = rng.standard_normal(env.action_space.shape).astype(np.float32)
        obs, reward, _, _, _ = env.step(a)
        observations.append(np.asarray(obs))
        rewards.append(np.asarray(reward))
    return np.stack(observations), np.stack(rewards)


def test_same_seed_gives_same_observations_and_rewards(make_vec):
    obs_a, rew_a = _rollout(make_vec(num_envs=2), seed=7)
    obs_b, rew_b = _rollout(make_vec(num_envs=2), seed=7)
    np.testing.assert_array_equal(obs_a, obs_b)
    np.testing.assert_array_equal(rew_a, rew_b)


def test_different_seeds_give_different_image_orders(make_vec):
    env = make_vec(num_envs=2)
    env.reset(seed=1)
    first = env.core.images.clone()
    env.reset(seed=2)
    assert not torch.equal(first, env.core.images)


def test_numpy_and_torch_array_types_agree(make_vec):
    env_np = make_vec(num_envs=2, array_type="numpy", obs_mode="pooled", action_mode="channel")
    env_t = make_vec(num_envs=2, array_type="torch", obs_mode="pooled", action_mode="channel")
    obs_np, _ = env_np.reset(seed=3)
    obs_t, _ = env_t.reset(seed=3)
    assert isinstance(obs_t, torch.Tensor) and obs_t.dtype == torch.float32
    np.testing.assert_array_equal(obs_np, obs_t.numpy())
    action = np.full(env_np.action_space.shape, 0.3, np.float32)
    out_np = env_np.step(action)
    out_t = env_t.step(torch.from_numpy(action))
    for a, b in zip(out_np[:4], out_t[:4]):
        assert isinstance(b, torch.Tensor)
        np.testing.assert_array_equal(a, b.numpy())
    for k in ("iou", "dice", "ce", "boundary"):
        np.testing.assert_array_equal(out_np[4][k], out_t[4][k].numpy())
    np.testing.assert_array_equal(np.stack(out_np[4]["final_obs"]), out_t[4]["final_obs"].numpy())


def test_torch_array_type_returns_the_env_tensors_without_copies(make_vec):
    env = make_vec(num_envs=2, array_type="torch")
    obs, _ = env.reset(seed=0)
    assert obs.data_ptr() == env.core.observation.data_ptr()
    _, _, _, _, info = env.step(torch.zeros(env.action_space.shape))
    assert info["final_obs"] is obs


def test_vector_env_equals_b_single_envs_on_the_same_images(segmentor):
    data = PairDataset(n=6)
    vec = SegBanditVectorEnv(num_envs=3, dataset=data, num_classes=K, model=segmentor, shuffle=False, action_mode="channel")
    singles = [
        SegBanditEnv(dataset=torch.utils.data.Subset(data, [i, i + 3]), num_classes=K, model=segmentor,
                     shuffle=False, action_mode="channel")
        for i in range(3)
    ]
    obs_v, _ = vec.reset(seed=0)
    obs_s = np.stack([e.reset(seed=0)[0] for e in singles])
    np.testing.assert_allclose(obs_v, obs_s, rtol=1e-4, atol=1e-4)
    action = np.random.default_rng(1).standard_normal(vec.action_space.shape).astype(np.float32)
    next_v, rew_v, _, _, info_v = vec.step(action)
    steps = [e.step(action[i]) for i, e in enumerate(singles)]
    np.testing.assert_allclose(rew_v, [s[1] for s in steps], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(info_v["iou"], [s[4]["iou"] for s in steps], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.stack(info_v["final_obs"]), np.stack([s[0] for s in steps]), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(next_v, np.stack([e.reset()[0] for e in singles]), rtol=1e-4, atol=1e-4)  # images 3, 4, 5


def test_digit_images_are_normalised_like_the_eval_preset(make_vec):
    env = make_vec(num_envs=2, shuffle=False)
    env.reset(seed=0)
    data = make_dataset("digits", "train", image_size=SIZE, train=False, **TINY)
    images, masks = zip(*(data[i] for i in range(2)))
    torch.testing.assert_close(env.core.images, torch.stack(images), rtol=0, atol=1e-5)
    assert torch.equal(env.core.masks, torch.stack(masks)) and env.core.masks.dtype == torch.int64


def test_custom_map_style_dataset_is_served_in_order(segmentor):
    data = PairDataset(n=4)
    env = SegBanditVectorEnv(num_envs=2, dataset=data, num_classes=K, model=segmentor, shuffle=False)
    env.reset(seed=0)
    assert torch.equal(env.core.images, data.images[:2]) and torch.equal(env.core.masks, data.masks[:2])
    env.step(np.zeros(env.action_space.shape, np.float32))
    assert torch.equal(env.core.images, data.images[2:4])


def test_custom_dataset_of_uint8_images_raises_data_error(segmentor):
    with pytest.raises(DataError, match=r"expected a float image of shape \(3, H, W\).*uint8"):
        SegBanditVectorEnv(num_envs=1, dataset=PairDataset(image_dtype=torch.uint8), num_classes=K, model=segmentor)


# ---------------------------------------------------------------------------- bad input


def test_wrong_action_shape_raises_value_error_naming_both_shapes(make_vec):
    env = make_vec(num_envs=2, action_mode="channel")
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"expected an action of shape .*\(2, 512\).*got \(2, 256\)"):
        env.step(np.zeros((2, 256), np.float32))


def test_single_env_wrong_action_shape_names_the_single_shape(segmentor):
    env = _single(segmentor, action_mode="channel")
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"\(512,\).*got \(1, 512\)"):
        env.step(np.zeros((1, 512), np.float32))


def test_integer_action_dtype_raises_value_error_naming_dtypes(make_vec):
    env = make_vec(num_envs=2, action_mode="channel")
    env.reset(seed=0)
    with pytest.raises(ValueError, match="floating action.*float32.*int64"):
        env.step(np.zeros((2, 512), np.int64))


def test_float64_action_is_accepted_as_float32(make_vec):
    env = make_vec(num_envs=2, action_mode="channel")
    env.reset(seed=0)
    _, reward, _, _, _ = env.step(np.zeros((2, 512), np.float64))
    assert reward.shape == (2,)


def test_nan_action_raises_value_error(make_vec):
    env = make_vec(num_envs=2, action_mode="channel")
    env.reset(seed=0)
    action = np.zeros((2, 512), np.float32)
    action[1, 3] = np.nan
    with pytest.raises(ValueError, match="NaN or inf"):
        env.step(action)


def test_inf_action_raises_value_error(make_vec):
    env = make_vec(num_envs=2, action_mode="channel")
    env.reset(seed=0)
    action = np.zeros((2, 512), np.float32)
    action[0, 0] = -np.inf
    with pytest.raises(ValueError, match="NaN or inf"):
        env.step(action)


def test_a_finite_action_that_overflows_the_decoder_is_refused_not_scored_nan(make_vec):
    env = make_vec(num_envs=2, action_mode="channel")
    env.reset(seed=0)
    action = np.full((2, 512), np.finfo(np.float32).max, np.float32)
    with pytest.raises(ValueError, match="non-finite logits.*action_bound"):
        env.step(action)


def test_step_before_reset_raises_reset_needed(make_vec):
    env = make_vec(num_envs=2, action_mode="channel")
    with pytest.raises(gym.error.ResetNeeded, match="before reset"):
        env.step(np.zeros((2, 512), np.float32))


def test_finite_action_bound_clips_actions(make_vec):
    env = make_vec(num_envs=1, action_mode="channel", action_bound=1.0, dataset=PairDataset(), num_classes=K, shuffle=False)
    env.reset(seed=0)
    _, clipped, _, _, _ = env.step(np.full((1, 512), 50.0, np.float32))
    env.reset(seed=0)
    _, at_bound, _, _, _ = env.step(np.full((1, 512), 1.0, np.float32))
    np.testing.assert_array_equal(clipped, at_bound)


# ---------------------------------------------------------------------------- TorchRL


def test_torchrl_collector_scores_a_fresh_batch_every_step_with_no_wasted_reset(segmentor):
    from torchrl.collectors import Collector

    env = SegBanditTorchEnv(num_envs=2, model=segmentor, image_size=SIZE, dataset_kwargs=TINY, action_mode="channel")
    collector = Collector(env, None, frames_per_batch=4, total_frames=12)
    frames = 0
    for batch in collector:
        assert batch["next", "done"].all() and batch["next", "terminated"].all()
        assert not batch["done"].any()
        frames += batch.numel()
    collector.shutdown()
    assert frames == 12
    assert env.core.batches_drawn == 12 // 2 + 1  # one batch per step, plus the initial reset


def test_torchrl_collector_runs_a_latent_policy(segmentor):
    from tensordict.nn import TensorDictModule
    from torchrl.collectors import Collector

    policy_net = LatentPolicy(512, hidden_channels=16, num_blocks=1, pool_size=1)

    class Act(torch.nn.Module):
        def forward(self, z):
            return policy_net.act(z, action_mode="dense")["action"]

    policy = TensorDictModule(Act(), in_keys=["observation"], out_keys=["action"])
    env = SegBanditTorchEnv(num_envs=2, model=segmentor, image_size=SIZE, dataset_kwargs=TINY)
    collector = Collector(env, policy, frames_per_batch=4, total_frames=8, auto_register_policy_transforms=False)
    rewards = torch.cat([batch["next", "reward"].flatten() for batch in collector])
    collector.shutdown()
    assert rewards.shape == (8,) and bool(((rewards >= 0) & (rewards <= 4)).all())


def test_torchrl_seed_fixes_the_observations(segmentor):
    env = SegBanditTorchEnv(num_envs=2, model=segmentor, image_size=SIZE, dataset_kwargs=TINY)
    env.set_seed(5)
    first = env.reset()["observation"].clone()
    env.set_seed(5)
    assert torch.equal(env.reset()["observation"], first)


def test_torchrl_partial_reset_replaces_only_the_masked_rows(segmentor):
    env = SegBanditTorchEnv(num_envs=2, model=segmentor, image_size=SIZE, dataset_kwargs=TINY)
    td = env.reset()
    before = td["observation"].clone()
    td.set("_reset", torch.tensor([[False], [True]]))
    after = env.reset(td)["observation"]
    assert torch.equal(after[0], before[0]) and not torch.equal(after[1], before[1])
    assert torch.equal(env.core.observation, after)


def test_differentiable_logits_carry_their_graph_for_cross_entropy(segmentor):
    env = SegBanditTorchEnv(num_envs=2, model=segmentor, image_size=SIZE, dataset_kwargs=TINY, differentiable=True)
    td = env.reset()
    td["action"] = torch.zeros(2, 512, SIZE // 8, SIZE // 8)
    out = env.step(td)
    logits = out["next", "logits"]
    assert logits.shape == (2, K, SIZE, SIZE) and logits.grad_fn is not None
    segmentor.zero_grad()
    F.cross_entropy(logits, env.core.masks, ignore_index=255).backward()
    assert segmentor.backbone.conv1.weight.grad is not None and segmentor.classifier[-1].weight.grad is not None
    segmentor.zero_grad()


def test_default_env_keeps_no_graph(make_vec):
    env = make_vec(num_envs=1, array_type="torch")
    obs, _ = env.reset(seed=0)
    assert env.core.latents.grad_fn is None and obs.grad_fn is None


# ---------------------------------------------------------------------------- Stable-Baselines3


def test_sb3_vec_env_dones_are_true_and_infos_hold_terminal_observation(segmentor):
    venv = SB3VecEnv(num_envs=2, model=segmentor, image_size=SIZE, dataset_kwargs=TINY, obs_mode="pooled", action_mode="channel")
    venv.seed(0)
    first = venv.reset()
    obs, reward, dones, infos = venv.step(np.zeros((2, 512), np.float32))
    assert dones.all() and reward.dtype == np.float32 and reward.shape == (2,)
    assert len(infos) == 2 and {"iou", "dice", "ce", "boundary", "terminal_observation"} <= set(infos[0])
    np.testing.assert_array_equal(np.stack([i["terminal_observation"] for i in infos]), first)
    assert not np.array_equal(obs, first)
    venv.close()


def test_sb3_vec_env_attribute_plumbing_addresses_the_shared_env(segmentor):
    venv = SB3VecEnv(num_envs=2, model=segmentor, image_size=SIZE, dataset_kwargs=TINY, obs_mode="pooled", action_mode="channel")
    assert venv.get_attr("num_envs") == [2, 2] and venv.get_attr("segmentor", indices=[1]) == [segmentor]
    assert venv.env_is_wrapped(gym.Wrapper) == [False, False]
    venv.set_attr("tag", "x")
    assert venv.venv.tag == "x"
    with pytest.raises(ValueError, match="share one SegBanditVectorEnv"):
        venv.set_attr("tag", "y", indices=[0])
    assert venv.env_method("__repr__") == [repr(venv.venv)] * 2


def test_sb3_ppo_learns_on_the_adapter_without_error(segmentor):
    from stable_baselines3 import PPO

    venv = SB3VecEnv(num_envs=4, model=segmentor, image_size=SIZE, dataset_kwargs=TINY, obs_mode="pooled", action_mode="channel")
    model = PPO("MlpPolicy", venv, n_steps=16, batch_size=32, n_epochs=2, seed=0, device="cpu", policy_kwargs={"net_arch": [16]})
    model.learn(total_timesteps=256)
    assert model.num_timesteps == 256
    action, _ = model.predict(venv.reset(), deterministic=True)
    assert action.shape == (4, 512) and np.all(np.abs(action) <= 1.0)
    venv.close()


# ----------------------------------------------------------------------------- a Segformer behind the env
@pytest.fixture(scope="module")
def segformer():
    torch.manual_seed(0)
    return build_segmentor("segformer_mit_b0", K, attn_dim=32, num_heads=4).eval()


def test_a_segformer_env_scores_with_the_pass_through_stages_of_the_very_images_it_observes(segformer):
    env = SegBanditVectorEnv(num_envs=3, model=segformer, image_size=SIZE, dataset_kwargs=TINY, paired_reward=True)
    obs, _ = env.reset(seed=0)
    core = env.core
    assert tuple(obs.shape) == (3, 256, 1, 1) and len(core.skips) == 3
    with torch.no_grad():
        feats = segformer.features(core.images)
        expected = segformer.decode(feats["out"], torch.zeros_like(feats["out"]), core.image_size, segformer.skips(feats))
    out = core.score(core.zero_action())
    torch.testing.assert_close(out["logits"], expected.float())
    torch.testing.assert_close(out["reward_zero"], core.reward_fn(expected.float(), core.masks)["total"])
    torch.testing.assert_close(out["reward"], torch.zeros(3))  # the paired reward: the gain of s = 0 over s = 0
    env.close()


def test_a_partial_reset_of_a_segformer_env_replaces_the_pass_through_stages_of_those_rows_only(segformer):
    env = SegBanditVectorEnv(num_envs=3, model=segformer, image_size=SIZE, dataset_kwargs=TINY)
    env.reset(seed=0)
    core = env.core
    before = [t.clone() for t in core.skips]
    core.reset_rows(torch.tensor([False, True, False]))
    with torch.no_grad():
        fresh = segformer.skips(segformer.features(core.images))
    for old, new, want in zip(before, core.skips, fresh):
        torch.testing.assert_close(new[[0, 2]], old[[0, 2]])
        torch.testing.assert_close(new[1], want[1])
    env.close()


def test_latent_caching_refuses_a_segmentor_whose_decoder_reads_pass_through_stages():
    with pytest.raises(ValueError, match="pass-through features"):
        SegBanditVectorEnv(num_envs=1, segmentor="random", model="segformer_mit_b0", image_size=SIZE,
                           dataset_kwargs=TINY, cache_latents=True, model_kwargs={"attn_dim": 32, "num_heads": 4})
