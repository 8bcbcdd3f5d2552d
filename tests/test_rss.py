"""Reward-only segmentation (segbandit.rss): the pixel policy, its rewards, PSR scales and PSD credit."""
import pytest
import torch

from segbandit.constants import IGNORE_INDEX
from segbandit.rss import (
    RSSConfig,
    ScaleSchedule,
    action_log_prob,
    group_advantage,
    image_rewards,
    make_image_reward,
    mode_pool,
    normalize_advantage,
    pixel_advantage,
    policy_gradient_loss,
    psd_advantage,
    rss_loss,
    sample_actions,
    window_rewards,
)


def _scene(b: int = 4, h: int = 16) -> torch.Tensor:
    target = torch.zeros(b, h, h, dtype=torch.long)  # (B, H, W)
    target[:, 2:8, 2:10] = 1
    target[:, 9:14, 6:15] = 2
    target[:, 0, :] = IGNORE_INDEX
    return target


def test_sampled_maps_have_one_label_per_pixel_and_sample():
    actions = sample_actions(torch.randn(2, 5, 8, 8), num_samples=3)
    assert actions.shape == (3, 2, 8, 8) and actions.dtype == torch.int64
    assert int(actions.min()) >= 0 and int(actions.max()) < 5


def test_sampling_from_a_seeded_generator_repeats_and_follows_the_policy():
    logits = torch.tensor([0.0, 2.0, -1.0]).log_softmax(0)[None, :, None, None].expand(1, 3, 64, 64)  # (1, 3, 64, 64)
    draw = lambda: sample_actions(logits, 4, generator=torch.Generator().manual_seed(3))  # noqa: E731
    a = draw()
    assert torch.equal(a, draw())
    freq = torch.bincount(a.flatten(), minlength=3).float() / a.numel()
    assert torch.allclose(freq, logits[0, :, 0, 0].exp(), atol=0.01)


def test_class_weighted_policy_gradient_is_the_weighted_mean_over_valid_pixels():
    logp, adv = torch.tensor([-1.0, -2.0, -3.0]), torch.tensor([1.0, 1.0, 1.0])
    valid, weight = torch.tensor([True, True, False]), torch.tensor([1.0, 5.0, 9.0])
    assert torch.isclose(policy_gradient_loss(logp, adv, valid, weight), torch.tensor((1.0 + 10.0) / 6.0))
    assert torch.isclose(policy_gradient_loss(logp, adv, valid), torch.tensor(1.5))


def test_a_class_weight_of_the_wrong_length_is_a_value_error():
    with pytest.raises(ValueError, match=r"class_weight of shape \(3,\), got \(2,\)"):
        rss_loss(torch.randn(1, 3, 16, 16), _scene(1), RSSConfig(), class_weight=torch.ones(2))


def test_action_log_prob_is_the_log_softmax_of_the_taken_label():
    logits = torch.randn(1, 3, 2, 2)
    actions = torch.tensor([[[[0, 1], [2, 0]]]])  # (G=1, B=1, 2, 2)
    want = torch.log_softmax(logits / 2.0, 1)[0, actions[0, 0], torch.arange(2)[:, None], torch.arange(2)[None]]
    torch.testing.assert_close(action_log_prob(logits, actions, temperature=2.0)[0, 0], want)


def test_mode_pool_takes_the_majority_label_and_ignores_void():
    target = torch.tensor([[[1, 1, 2, 255], [255, 255, 255, 255]]])  # (1, 2, 4)
    assert mode_pool(target, 2, num_classes=3).tolist() == [[[1, 2]]]
    assert mode_pool(torch.full((1, 2, 2), 255), 2, num_classes=3).tolist() == [[[255]]]


def test_a_scale_that_does_not_divide_the_image_is_a_value_error():
    with pytest.raises(ValueError, match="divide the image size 16x16, got factor 3"):
        rss_loss(torch.randn(1, 3, 16, 16), _scene(1), RSSConfig(), factors=(3,))


def test_pixel_advantage_is_hit_minus_the_probability_of_the_truth():
    logits = torch.zeros(1, 2, 1, 2)  # pi(y) = 0.5 everywhere
    actions = torch.tensor([[[[1, 0]]]])
    target = torch.tensor([[[1, IGNORE_INDEX]]])
    assert pixel_advantage(logits, actions, target).tolist() == [[[[0.5, 0.0]]]]


def test_group_advantage_subtracts_the_mean_of_the_other_samples():
    rewards = torch.tensor([[1.0], [0.0], [0.5]])  # (G=3, B=1)
    torch.testing.assert_close(group_advantage(rewards), torch.tensor([[0.75], [-0.75], [0.0]]))


def test_psd_credits_only_pixels_where_samples_disagree():
    rewards = torch.tensor([[1.0], [0.0]])  # (G=2, B=1)
    actions = torch.tensor([[[[0, 1]]], [[[0, 2]]]])  # pixel 0 agrees, pixel 1 differs
    adv = psd_advantage(rewards, actions)
    assert adv.tolist() == [[[[0.0, 1.0]]], [[[0.0, -1.0]]]]
    norm = normalize_advantage(adv, torch.ones_like(adv, dtype=torch.bool), center=False)
    assert norm[:, :, :, 0].abs().max() == 0  # agreement keeps zero credit after normalisation


def test_window_rewards_score_each_tile_and_spread_it_over_its_pixels():
    accuracy = lambda p, t: (p == t).float().mean((1, 2))  # noqa: E731
    target = torch.zeros(1, 4, 4, dtype=torch.long)
    actions = torch.zeros(1, 1, 4, 4, dtype=torch.long)
    actions[0, 0, 0, 2:] = 1  # one wrong row in the top-right 2 x 2 window
    out = window_rewards(accuracy, actions, target, factor=2)
    assert out[0, 0].tolist() == [[1.0, 1.0, 0.5, 0.5], [1.0, 1.0, 0.5, 0.5], [1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]]
    assert torch.equal(window_rewards(accuracy, actions, target, factor=1), torch.full((1, 1, 4, 4), 0.875))


def test_psd_with_window_rewards_credits_each_pixel_by_its_own_window():
    rewards = torch.tensor([[[[1.0, 0.0]]], [[[0.0, 0.0]]]])  # (G=2, B=1, 1, 2): the windows disagree on pixel 0 only
    actions = torch.tensor([[[[0, 1]]], [[[2, 0]]]])  # both pixels differ between the samples
    assert psd_advantage(rewards, actions).tolist() == [[[[1.0, 0.0]]], [[[-1.0, 0.0]]]]


def test_image_level_loss_ignores_class_weights_which_would_reveal_pixel_labels():
    logits, target = torch.randn(2, 3, 16, 16), _scene(2)
    loss = lambda w: rss_loss(logits, target, RSSConfig(), (1,), class_weight=w,  # noqa: E731
                              generator=torch.Generator().manual_seed(0))[0]
    assert torch.equal(loss(None), loss(torch.tensor([1.0, 5.0, 5.0])))


def test_an_unknown_psr_mode_lists_the_valid_modes():
    with pytest.raises(ValueError, match=r"\['grid', 'window'\]"):
        RSSConfig(psr_mode="pyramid")


def test_psd_with_fewer_than_two_samples_is_a_value_error():
    with pytest.raises(ValueError, match="G >= 2"):
        psd_advantage(torch.ones(1, 2), torch.zeros(1, 2, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="G >= 2"):
        RSSConfig(level="image", num_samples=1)


@pytest.mark.parametrize(
    "bad, match",
    [
        (lambda p, t: torch.ones(p.shape[0], 2), r"return shape \(6,\)"),
        (lambda p, t: torch.full((p.shape[0],), float("nan")), "finite"),
        (lambda p, t: torch.full((p.shape[0],), 2.0), r"in \[0.0, 1.0\]"),
    ],
)
def test_a_bad_reward_callable_is_a_value_error(bad, match):
    with pytest.raises(ValueError, match=match):
        image_rewards(bad, torch.zeros(3, 2, 4, 4, dtype=torch.long), torch.zeros(2, 4, 4, dtype=torch.long))


def test_an_unknown_image_reward_lists_the_valid_names():
    with pytest.raises(ValueError, match="'boundary', 'dice', 'miou'"):
        make_image_reward("ce", 3)


def test_normalized_advantage_has_zero_mean_and_unit_std_over_valid_entries():
    adv = torch.randn(4, 2, 8, 8) * 3 + 1
    valid = torch.rand(4, 2, 8, 8) > 0.3
    out = normalize_advantage(adv, valid)
    assert abs(float(out[valid].mean())) < 1e-4 and abs(float(out[valid].std(unbiased=False)) - 1) < 1e-3
    assert out[~valid].abs().max() == 0


def test_milestone_schedule_moves_coarse_to_fine_keeping_coarse_scales_active():
    sched = ScaleSchedule(factors=(4, 2, 1), milestones=(2, 4))
    seen = []
    for it in range(5):
        seen.append(sched.active())
        sched.step(it)
    assert seen == [(4,), (4,), (4, 2), (4, 2), (4, 2, 1)]


def test_plateau_schedule_moves_when_the_reward_stops_improving():
    sched = ScaleSchedule(factors=(2, 1), patience=2)
    assert [sched.step(i, r) for i, r in enumerate([0.1, 0.2, 0.2, 0.2])] == [False, False, False, True]
    assert sched.active() == (2, 1)


@pytest.mark.parametrize(
    "level, psd, mode", [("image", True, "grid"), ("image", False, "grid"), ("pixel", False, "grid"),
                         ("image", True, "window")]
)
def test_reward_only_training_learns_a_scene_beyond_background(level, psd, mode):
    torch.manual_seed(0)
    target = _scene()
    valid = target != IGNORE_INDEX
    background = float((target[valid] == 0).float().mean())  # accuracy of predicting background everywhere
    logits = torch.zeros(4, 3, 16, 16, requires_grad=True)
    opt = torch.optim.Adam([logits], lr=0.1)
    sched = ScaleSchedule(factors=(4, 2, 1), milestones=(50, 100))
    for it in range(200):
        loss, _ = rss_loss(logits, target, RSSConfig(level=level, psd=psd, psr_mode=mode), factors=sched.active())
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step(it)
    acc = float((logits.argmax(1) == target)[valid].float().mean())
    assert acc > background + 0.15, (acc, background)


def _normalize_worker(rank: int, world: int, port: int, tmp: str) -> None:
    import torch.distributed as dist

    from segbandit.distributed import DistInfo

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        adv, valid = _rank_advantages()
        out = normalize_advantage(adv[rank], valid[rank], DistInfo(rank, world, rank))
        torch.save(out, f"{tmp}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _rank_advantages() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    adv = torch.randn(2, 4, 2, 8, 8, generator=g) * torch.tensor([1.0, 5.0]).view(2, 1, 1, 1, 1)  # ranks differ
    return adv, torch.rand(2, 4, 2, 8, 8, generator=g) > 0.2


def test_advantage_normalisation_is_global_across_ranks(tmp_path):
    import torch.multiprocessing as mp

    from conftest import free_port

    mp.spawn(_normalize_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    adv, valid = _rank_advantages()
    want = normalize_advantage(adv.reshape(8, 2, 8, 8), valid.reshape(8, 2, 8, 8)).reshape(2, 4, 2, 8, 8)
    for rank in range(2):
        torch.testing.assert_close(torch.load(tmp_path / f"rank{rank}.pt"), want[rank])
