"""SegPixelBandit-v0: reward-only segmentation as a one-step bandit (images in, label maps out).

Everything runs on 32 px digit scenes (16 samples) or a tiny custom dataset with a known void region.
"""
from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch

from envs import ImageStream, SegBanditVectorEnv, SegPixelBanditEnv, SegPixelBanditTorchEnv, SegPixelBanditVectorEnv
from segbandit.rewards import iou_reward
from segbandit.rss import mode_pool

SIZE = 32
K = 11
TINY = {"num_samples": 16}
ENV_ID = "SegPixelBandit-v0"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def make_vec():
    built = []

    def make(num_envs=2, **kw):
        kw.setdefault("image_size", SIZE)
        kw.setdefault("dataset_kwargs", TINY)
        env = SegPixelBanditVectorEnv(num_envs=num_envs, **kw)
        built.append(env)
        return env

    yield make
    for env in built:
        env.close()


class VoidDataset(torch.utils.data.Dataset):
    """Random images (3, 32, 32) and masks (32, 32) whose top-left 8x8 block is void (255)."""

    num_classes = K

    def __init__(self, n=4, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.images = torch.randn(n, 3, SIZE, SIZE, generator=g)
        self.masks = torch.randint(0, K, (n, SIZE, SIZE), generator=g)
        self.masks[:, :8, :8] = 255

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i], self.masks[i]


def _perfect(env) -> np.ndarray:
    """The mode-pooled target with its all-void cells labelled 0 (they are not scored): the best action (B, h, w)."""
    y = env.core.targets
    return torch.where(y == 255, torch.zeros_like(y), y).numpy()


# ---------------------------------------------------------------------------- library checkers and registration


def test_registry_has_the_pixel_env_with_its_entry_points():
    spec = gym.spec(ENV_ID)
    assert spec.entry_point == "envs.pixel:SegPixelBanditEnv"
    assert spec.vector_entry_point == "envs.pixel:SegPixelBanditVectorEnv"


def test_single_env_passes_gymnasium_check_env_with_render():
    from gymnasium.utils.env_checker import check_env

    env = gym.make(ENV_ID, image_size=SIZE, dataset_kwargs=TINY, render_mode="rgb_array").unwrapped
    assert isinstance(env, SegPixelBanditEnv)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*infinity.*")  # normalised images: an unbounded Box, by design
        check_env(env, skip_render_check=False)
    env.close()


@pytest.mark.parametrize("reward_info", [False, True])
def test_torchrl_env_passes_check_env_specs(reward_info):
    from torchrl.envs.utils import check_env_specs

    env = SegPixelBanditTorchEnv(num_envs=2, image_size=SIZE, dataset_kwargs=TINY, reward_info=reward_info)
    assert env.action_spec.n == K and env.action_spec.shape == (2, SIZE, SIZE) and env.action_spec.dtype == torch.int64
    check_env_specs(env, break_when_any_done="both")


def test_torchrl_reward_info_holds_the_pixel_reward_map():
    env = SegPixelBanditTorchEnv(num_envs=2, image_size=SIZE, dataset_kwargs=TINY, reward_info=True, scale=4)
    td = env.reset()
    td["action"] = torch.as_tensor(_perfect(env))
    out = env.step(td)["next"]
    assert out["reward"].shape == (2, 1) and torch.allclose(out["reward"], torch.ones(2, 1))
    assert torch.equal(out["info", "pixel_reward"], out["info", "valid"].float())


def test_torchrl_partial_reset_replaces_only_the_masked_rows():
    env = SegPixelBanditTorchEnv(num_envs=2, image_size=SIZE, dataset_kwargs=TINY, scale=4)
    td = env.reset()
    before, targets = td["observation"].clone(), env.core.targets.clone()
    td.set("_reset", torch.tensor([[False], [True]]))
    after = env.reset(td)["observation"]
    assert torch.equal(after[0], before[0]) and not torch.equal(after[1], before[1])
    assert torch.equal(env.core.targets[0], targets[0])
    assert torch.equal(env.core.targets[1], mode_pool(env.core.masks[1:], 4, K)[0])


# ---------------------------------------------------------------------------- spaces and rewards


def test_spaces_are_the_image_box_and_a_label_map_at_the_scale(make_vec):
    env = make_vec(num_envs=2, scale=4)
    assert env.single_observation_space.shape == (3, SIZE, SIZE) and env.single_observation_space.dtype == np.float32
    assert isinstance(env.single_action_space, gym.spaces.MultiDiscrete)
    assert env.single_action_space.shape == (SIZE // 4, SIZE // 4) and np.all(env.single_action_space.nvec == K)
    obs, _ = env.reset(seed=0)
    np.testing.assert_array_equal(obs, env.core.images.numpy())


@pytest.mark.parametrize("level,scale", [("pixel", 1), ("image", 1), ("pixel", 4), ("image", 4)])
def test_the_mode_pooled_target_gets_reward_one(make_vec, level, scale):
    env = make_vec(num_envs=2, reward_level=level, scale=scale)
    env.reset(seed=0)
    assert torch.equal(env.core.targets, mode_pool(env.core.masks, scale, K))
    _, reward, _, _, _ = env.step(_perfect(env))
    np.testing.assert_allclose(reward, np.ones(2), rtol=0, atol=1e-6)


def test_constant_background_gets_the_background_fraction_at_pixel_level(make_vec):
    env = make_vec(num_envs=2, scale=2)
    env.reset(seed=0)
    y = env.core.targets
    expected = ((y == 0).sum((1, 2)) / (y != 255).sum((1, 2))).numpy()
    _, reward, _, _, _ = env.step(np.zeros((2, SIZE // 2, SIZE // 2), np.int64))
    np.testing.assert_allclose(reward, expected, rtol=1e-6)
    assert np.all(reward < 1.0)


def test_constant_background_gets_its_miou_at_image_level(make_vec):
    env = make_vec(num_envs=2, reward_level="image", image_reward="miou")
    env.reset(seed=0)
    zeros = torch.zeros(2, SIZE, SIZE, dtype=torch.int64)
    expected = iou_reward(zeros, env.core.targets, K).numpy()
    _, reward, _, _, _ = env.step(zeros.numpy())
    np.testing.assert_allclose(reward, expected, rtol=1e-6)
    assert np.all(reward < 0.5)


def test_pixel_reward_map_is_the_hit_map_and_zero_on_void(make_vec):
    env = make_vec(num_envs=2, dataset=VoidDataset(), shuffle=False, scale=4)
    env.reset(seed=0)
    y = env.core.targets.numpy()
    assert np.all(y[:, :2, :2] == 255)  # the 8x8 void block is 2x2 all-void cells
    action = np.random.default_rng(0).integers(0, K, size=(2, SIZE // 4, SIZE // 4))
    action[:, :2, :2] = 0
    _, reward, _, _, info = env.step(action)
    valid = y != 255
    np.testing.assert_array_equal(info["valid"], valid)
    np.testing.assert_array_equal(info["pixel_reward"], ((action == y) & valid).astype(np.float32))
    assert np.all(info["pixel_reward"][~valid] == 0.0)
    np.testing.assert_allclose(reward, info["pixel_reward"].sum((1, 2)) / valid.sum((1, 2)), rtol=1e-6)
    np.testing.assert_array_equal(info["final_info"]["pixel_reward"], info["pixel_reward"])


def test_single_env_info_holds_one_images_maps():
    env = SegPixelBanditEnv(image_size=SIZE, dataset_kwargs=TINY, scale=2)
    env.reset(seed=0)
    _, reward, terminated, truncated, info = env.step(env.action_space.sample())
    assert isinstance(reward, float) and terminated and not truncated
    assert info["pixel_reward"].shape == (SIZE // 2, SIZE // 2) and info["valid"].dtype == np.bool_
    assert reward == pytest.approx(float(info["pixel_reward"].sum() / info["valid"].sum()))


def test_user_image_reward_callable_is_used(make_vec):
    calls = []

    def fraction_of_ones(pred, target):
        calls.append(tuple(pred.shape))
        return (pred == 1).float().mean(dim=(1, 2))

    env = make_vec(num_envs=2, reward_level="image", image_reward=fraction_of_ones)
    env.reset(seed=0)
    action = np.zeros((2, SIZE, SIZE), np.int64)
    action[0, :, : SIZE // 4] = 1
    _, reward, _, _, _ = env.step(action)
    np.testing.assert_allclose(reward, [0.25, 0.0])
    assert calls == [(2, SIZE, SIZE)]


@pytest.mark.parametrize(
    "fn,match",
    [
        (lambda pred, target: torch.ones(pred.shape[0], 2), "shape"),
        (lambda pred, target: torch.full((pred.shape[0],), float("nan")), "finite"),
        (lambda pred, target: torch.full((pred.shape[0],), 1.5), r"\[0.0, 1.0\]"),
    ],
    ids=["wrong-shape", "nan", "above-one"],
)
def test_bad_user_reward_callable_raises_value_error(make_vec, fn, match):
    env = make_vec(num_envs=2, reward_level="image", image_reward=fn)
    env.reset(seed=0)
    with pytest.raises(ValueError, match=match):
        env.step(np.zeros((2, SIZE, SIZE), np.int64))


# ---------------------------------------------------------------------------- seeding and autoreset


def _rollout(env, seed, steps=3):
    obs, _ = env.reset(seed=seed)
    seen = [obs]
    for _ in range(steps):
        obs, *_ = env.step(np.zeros(env.action_space.shape, np.int64))
        seen.append(obs)
    return np.stack(seen)


def test_same_seed_gives_same_observations(make_vec):
    a, b = _rollout(make_vec(num_envs=2), seed=7), _rollout(make_vec(num_envs=2), seed=7)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, _rollout(make_vec(num_envs=2), seed=8))


def test_pixel_and_latent_envs_stream_the_same_images_for_a_seed(make_vec):
    pixel = make_vec(num_envs=2)
    latent = SegBanditVectorEnv(num_envs=2, image_size=SIZE, dataset_kwargs=TINY, segmentor="random")
    assert isinstance(pixel.core.stream, ImageStream) and isinstance(latent.core.stream, ImageStream)
    pixel.reset(seed=3)
    latent.reset(seed=3)
    assert torch.equal(pixel.core.images, latent.core.images) and torch.equal(pixel.core.masks, latent.core.masks)
    latent.close()


def test_make_vec_batch_of_4_autoresets_in_the_same_step():
    env = gym.make_vec(ENV_ID, num_envs=4, vectorization_mode="vector_entry_point", image_size=SIZE, dataset_kwargs=TINY)
    assert isinstance(env, SegPixelBanditVectorEnv) and env.num_envs == 4
    first, _ = env.reset(seed=0)
    obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
    assert reward.shape == (4,) and reward.dtype == np.float32 and terminated.all() and not truncated.any()
    assert info["final_obs"].dtype == object and info["_final_obs"].all() and info["_final_info"].all()
    np.testing.assert_array_equal(np.stack(info["final_obs"]), first)  # the scored images
    assert not np.array_equal(obs, first)  # the next images
    assert env.core.batches_drawn == 2
    env.close()


def test_render_shows_image_truth_and_the_upsampled_action(make_vec):
    env = make_vec(num_envs=1, scale=4, render_mode="rgb_array")
    env.reset(seed=0)
    action = _perfect(env)
    env.step(action)
    (frame,) = env.render()
    assert frame.shape == (SIZE, 3 * SIZE, 3) and frame.dtype == np.uint8
    expected = torch.as_tensor(action).repeat_interleave(4, 1).repeat_interleave(4, 2)
    assert torch.equal(env.core.last_scored["preds"], expected)


# ---------------------------------------------------------------------------- invalid actions and configs


@pytest.mark.parametrize(
    "action,match",
    [
        (np.zeros((2, SIZE // 2, SIZE // 2 + 1), np.int64), r"\(2, 16, 16\).*\(2, 16, 17\)"),
        (np.zeros((2, SIZE // 2, SIZE // 2), np.float32), "integer.*float32"),
        (np.full((2, SIZE // 2, SIZE // 2), K, np.int64), rf"\[0, {K}\).*{K}"),
        (np.full((2, SIZE // 2, SIZE // 2), -1, np.int64), rf"\[0, {K}\).*-1"),
    ],
    ids=["shape", "float", "too-large", "negative"],
)
def test_invalid_action_raises_value_error_naming_expected_and_actual(make_vec, action, match):
    env = make_vec(num_envs=2, scale=2)
    env.reset(seed=0)
    with pytest.raises(ValueError, match=match):
        env.step(action)


def test_single_env_wrong_action_shape_names_the_single_shape():
    env = SegPixelBanditEnv(image_size=SIZE, dataset_kwargs=TINY)
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"\(32, 32\).*\(1, 32, 32\)"):
        env.step(np.zeros((1, SIZE, SIZE), np.int64))


def test_scale_that_does_not_divide_the_image_raises_value_error():
    with pytest.raises(ValueError, match="divide the image size 32x32.*factor 5"):
        SegPixelBanditVectorEnv(num_envs=1, image_size=SIZE, dataset_kwargs=TINY, scale=5)


@pytest.mark.parametrize(
    "kw,match",
    [
        ({"reward_level": "region"}, "reward_level 'region'.*pixel, image"),
        ({"image_reward": "accuracy"}, "image_reward 'accuracy'.*miou"),
        ({"image_reward": 3}, "image_reward must be"),
        ({"scale": 0}, "scale must be a positive int"),
    ],
    ids=["level", "reward-name", "reward-type", "scale"],
)
def test_invalid_config_raises_value_error(kw, match):
    with pytest.raises(ValueError, match=match):
        SegPixelBanditVectorEnv(num_envs=1, image_size=SIZE, dataset_kwargs=TINY, **kw)
