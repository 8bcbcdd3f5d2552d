"""Class-incremental segmentation: PLOP's tasks, masking, Local POD, pseudo-labels, and the continual steps."""
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from agents.config import make_config
from conftest import load_example
from agents.continual import (
    METHODS,
    FeatureTap,
    MaskedSubset,
    PLOPDistiller,
    class_presence,
    make_method,
    prepare,
    step_config,
    step_datasets,
    train_continual,
)
from agents.cotraining import CoTrainingLoss
from agents.trainer import CoTrainer
from segbandit.continual import (
    continual_miou,
    entropy_thresholds,
    eval_lut,
    expand_classifier,
    keep_for_eval,
    keep_for_training,
    local_pod,
    make_task,
    pod_loss,
    pseudo_entropy,
    pseudo_labels,
    training_lut,
)
from segbandit.data import DigitScenes
from segbandit.models import build_segmentor

pytestmark = pytest.mark.usefixtures("one_thread")

script = load_example("train_continual")

TINY = dict(crop_size=32, batch_size=4, train_size=48, val_size=16, policy_hidden=16, attn_dim=32, num_heads=4,
            num_overlays=0, device="cpu", num_workers=0, log_every=1)  # fmt: skip


# -- tasks and masking


def test_voc_tasks_split_classes_by_ascending_index_as_plop():
    t = make_task("voc", "15-5", 21)
    assert t.steps == (tuple(range(16)), (16, 17, 18, 19, 20))
    t = make_task("voc", "15-1", 21)
    assert t.num_steps == 6 and t.steps[1:] == ((16,), (17,), (18,), (19,), (20,))
    t = make_task("voc", "10-1", 21)
    assert t.num_steps == 11 and t.seen(3) == tuple(range(14))


def test_ade20k_and_digit_tasks_have_the_paper_and_issue_step_counts():
    assert make_task("ade20k", "100-50", 151).num_steps == 2
    assert make_task("ade20k", "100-10", 151).num_steps == 6
    assert make_task("ade20k", "100-5", 151).num_steps == 11
    t = make_task("digits", "6-4", 11)
    assert t.steps == (tuple(range(7)), (7, 8, 9, 10)) and t.num_initial == 7
    assert make_task("digits", "6-1", 11).num_steps == 5


def test_unknown_task_lists_valid_names():
    with pytest.raises(ValueError, match="6-4, 6-2, 6-1"):
        make_task("digits", "6-5", 11)


def test_training_labels_keep_only_the_steps_classes_and_eval_labels_void_the_unseen():
    t = make_task("digits", "6-1", 11)
    mask = torch.tensor([0, 3, 7, 8, 9, 255])
    assert torch.as_tensor(training_lut(t, 2))[mask].tolist() == [0, 0, 0, 8, 0, 255]
    assert torch.as_tensor(eval_lut(t, 2))[mask].tolist() == [0, 3, 7, 8, 255, 255]


def test_overlap_keeps_images_with_future_classes_and_disjoint_drops_them():
    t = make_task("digits", "6-4", 11)
    with_future = np.array([0, 3, 8])  # step 0 classes and a future digit
    assert keep_for_training(with_future, t, 0, overlap=True)
    assert not keep_for_training(with_future, t, 0, overlap=False)
    assert not keep_for_training(np.array([0, 255]), t, 0, overlap=True)  # no class of the step
    assert keep_for_eval(np.array([0, 8]), t, 1) and not keep_for_eval(np.array([0, 8]), t, 0)


def test_step_datasets_filter_and_mask_digit_scenes():
    train = DigitScenes("train", size=32, num_samples=40)
    val = DigitScenes("val", size=32, num_samples=16)
    t = make_task("digits", "6-4", 11)
    tr, va = step_datasets(t, 1, train, val, class_presence(train), class_presence(val))
    assert 0 < len(tr) < len(train)
    labels = torch.cat([tr[i][1].flatten() for i in range(len(tr))]).unique().tolist()
    assert set(labels) <= {0, 7, 8, 9, 10, 255} and set(labels) & {7, 8, 9, 10}
    assert len(va) == len(val)  # every val scene shows a digit


# -- Local POD


def _plop_local_pod(x, scales=(1, 2, 4)):
    """PLOP's official _local_pod loop (square maps), for comparison."""
    b, w = x.shape[0], x.shape[-1]
    emb = []
    for scale in scales:
        k = w // scale
        for i in range(scale):
            for j in range(scale):
                t = x[..., i * k:(i + 1) * k, j * k:(j + 1) * k]
                emb += [t.mean(dim=3).view(b, -1), t.mean(dim=2).view(b, -1)]
    return torch.cat(emb, dim=1)


def test_local_pod_distance_equals_plops_loop():
    a, b = torch.randn(2, 5, 8, 8), torch.randn(2, 5, 8, 8)
    ours = torch.linalg.vector_norm(local_pod(a) - local_pod(b), dim=-1)
    theirs = torch.linalg.vector_norm(_plop_local_pod(a) - _plop_local_pod(b), dim=-1)
    assert torch.allclose(ours, theirs, atol=1e-5)
    assert local_pod(a).shape == _plop_local_pod(a).shape


def test_pod_loss_is_zero_for_the_same_maps_and_weights_the_logits_by_their_factor():
    maps = [torch.randn(2, 4, 8, 8), torch.randn(2, 3, 8, 8)]
    assert float(pod_loss(maps, maps, num_old=3, num_seen=5)) == 0.0
    new = [maps[0] + 1.0, maps[1]]
    loss = pod_loss(maps, new, num_old=3, num_seen=5, factor=0.01)
    a, b = maps[0].pow(2), new[0].pow(2)
    expected = 0.01 * math.sqrt(5 / 2) * torch.linalg.vector_norm(local_pod(a) - local_pod(b), dim=-1).mean() / 2
    assert torch.allclose(loss, expected)


def test_pod_loss_sums_the_new_classes_logits_into_background():
    old_logits = torch.randn(2, 3, 4, 4)
    extra = torch.randn(2, 2, 4, 4)
    new_logits = torch.cat([old_logits[:, :1] - extra.sum(1, keepdim=True), old_logits[:, 1:], extra], dim=1)
    assert float(pod_loss([old_logits], [new_logits], num_old=3, num_seen=5)) < 1e-6


# -- pseudo-labels


def test_entropy_thresholds_are_histogram_medians_with_a_floor():
    hist = torch.zeros(3, 10, dtype=torch.long)
    hist[0, 2] = 10  # all in bin [0.2, 0.3): median at 0.25
    hist[1, 0] = 1
    hist[1, 6] = 1  # two values: the median interpolates to the end of bin 0
    th = entropy_thresholds(hist, floor=0.001)
    assert th[0] == pytest.approx(0.25)
    assert th[1] == pytest.approx(0.1)
    assert th[2] == pytest.approx(0.001)  # never predicted: 0, then the floor
    assert entropy_thresholds(hist, top=0.1, floor=0.0)[0] == pytest.approx(0.025)  # bins over [0, top]


def test_thresholds_split_background_at_its_median_even_when_its_uncertainty_is_narrow():
    from segbandit.continual import entropy_histogram, max_pseudo_entropy

    logits = torch.zeros(2, 8, 16, 16)
    logits[:, 0] = 3.0 + 0.2 * torch.rand(2, 16, 16)  # background, a near-tied old class: narrow uncertainty
    logits[:, 7] = 2.2
    labels = torch.zeros(2, 16, 16, dtype=torch.long)
    hist = entropy_histogram(logits, labels, num_seen=9)
    th = entropy_thresholds(hist, max_pseudo_entropy(8, 9))
    _, factor = pseudo_labels(labels, logits, th, num_seen=9)
    assert factor.mean() == pytest.approx(0.5, abs=0.05)  # half the background keeps its label, as PLOP intends


def test_pseudo_labels_take_certain_old_predictions_and_void_uncertain_background():
    labels = torch.tensor([[[0, 0, 5, 255]]])  # (1, 1, 4): background x2, a new class, void
    old = torch.zeros(1, 3, 1, 4)
    old[0, 2, 0, 0] = 20.0  # certain: class 2
    old[0, :, 0, 1] = 0.0  # uniform: uncertain
    out, factor = pseudo_labels(labels, old, torch.full((3,), 0.01), num_seen=6)
    assert out.tolist() == [[[2, 255, 5, 255]]]
    assert factor.tolist() == pytest.approx([0.5], abs=1e-5)


def test_pseudo_entropy_is_plops_doubly_normalised_entropy():
    uniform = torch.full((1, 4, 1, 1), 0.25)
    assert float(pseudo_entropy(uniform, num_seen=6)) == pytest.approx(1 / 4 / math.log(6), rel=1e-4)


# -- the grown classifier and the metrics


def test_expand_classifier_initialises_new_classes_from_background():
    old = build_segmentor("fcn_resnet_tiny", 7, modulation="none").state_dict()
    new = build_segmentor("fcn_resnet_tiny", 11, modulation="none").state_dict()
    grown = expand_classifier(old, new, num_old=7, balanced=True)
    w, b = grown["classifier.4.weight"], grown["classifier.4.bias"]
    assert torch.equal(w[1:7], old["classifier.4.weight"][1:7]) and torch.equal(w[7], old["classifier.4.weight"][0])
    expected = old["classifier.4.bias"][0] - math.log(5)
    assert torch.allclose(b[7:], expected.expand(4)) and torch.allclose(b[0], expected)
    assert torch.equal(grown["backbone.layer1.0.conv1.weight"], old["backbone.layer1.0.conv1.weight"])
    random = expand_classifier(old, new, num_old=7, balanced=False)
    assert torch.equal(random["classifier.4.weight"][7:], new["classifier.4.weight"][7:])


def test_continual_miou_counts_background_among_the_initial_classes():
    out = continual_miou([0.9, 0.5, 0.7, float("nan"), 0.1], num_initial=3)
    assert out["old"] == pytest.approx(0.7) and out["new"] == pytest.approx(0.1)
    assert out["all"] == pytest.approx((0.9 + 0.5 + 0.7 + 0.1) / 4)


def test_ce_image_weight_scales_each_images_loss_and_keeps_the_denominator():
    objective = torch.nn.Module()
    loss = CoTrainingLoss.__new__(CoTrainingLoss)
    torch.nn.Module.__init__(loss)
    loss.num_classes, loss.class_weight = 5, None
    from segbandit.distributed import SINGLE

    loss.dist_info = SINGLE
    logits, masks = torch.randn(2, 5, 4, 4), torch.randint(0, 5, (2, 4, 4))
    plain = F.cross_entropy(logits, masks)
    assert torch.allclose(loss.cross_entropy(logits, masks, torch.ones(2)), plain)
    per_image = F.cross_entropy(logits, masks, reduction="none").mean(dim=(1, 2))
    assert torch.allclose(loss.cross_entropy(logits, masks, torch.tensor([1.0, 0.0])), per_image[0] / 2)
    del objective


# -- the step with the old model


def test_feature_tap_records_stages_latent_and_head_resolution_logits():
    seg = build_segmentor("fcn_resnet_tiny", 7, modulation="none").eval()
    tap = FeatureTap(seg)
    with tap.record():
        seg(torch.randn(2, 3, 32, 32))
    maps = tap.maps()
    z = seg.encode(torch.randn(1, 3, 32, 32))
    assert maps[-1].shape == (2, 7, *z.shape[-2:])  # logits before upsampling
    assert maps[-2].shape[1] == seg.latent_channels
    assert len(maps) == len(tap.stages) + 1  # stages 1..n-1, z (= stage n), logits


def _trainer(num_classes, method="plop+rl", **kw):
    over = {} if make_method(method).rl else {"lambda_policy": 0.0, "lambda_kl": 0.0, "modulation": "none"}
    cfg = make_config("digits", **{**TINY, **over, "max_iters": 4, "class_weights": None, **kw})
    return CoTrainer.from_config(cfg, num_classes, device="cpu")


def test_plop_step_relabels_with_the_old_model_and_adds_a_finite_pod_term():
    old, new = _trainer(7), _trainer(11)
    distiller = PLOPDistiller(old, 11)
    assert not any(p.requires_grad for p in old.segmentor.parameters())  # frozen
    new.distiller = distiller
    x, y = torch.randn(4, 3, 32, 32), torch.randint(7, 11, (4, 32, 32))
    y[:, :16] = 0
    stats = new.train_step(x, y)
    assert math.isfinite(stats["loss_pod"]) and stats["loss_pod"] > 0
    assert math.isfinite(stats["loss_policy"]) and stats["skipped"] == 0.0


def test_step_config_lowers_lr_and_budget_after_the_first_step_and_switches_rl_off_for_plop():
    cfg = make_config("digits", continual_method="plop", task="6-4", out="/tmp/x", max_iters=300)
    task = make_task("digits", "6-4", 11)
    first, later = step_config(cfg, task, 0), step_config(cfg, task, 1)
    assert first.max_iters == 300 and later.max_iters == 100 and later.lr == pytest.approx(cfg.lr * 0.1)
    assert later.modulation == "none" and later.lambda_policy == 0.0 and len(later.class_weights) == 11
    assert len(first.class_weights) == 7 and later.out.endswith("step_1")
    assert step_config(make_config("digits", continual_method="plop+rl"), task, 1).modulation == "attention"


def test_train_continual_runs_both_steps_and_writes_the_table(tmp_path):
    cfg = make_config("digits", **TINY, task="6-4", continual_method="plop+rl", max_iters=6, step_iters=3,
                      eval_every=6, out=str(tmp_path))  # fmt: skip
    res = train_continual(cfg, log=lambda s: None)
    assert [r["step"] for r in res["steps"]] == [0, 1]
    assert len(res["final"]["per_class_iou"]) == 11 and res["steps"][1]["iterations"] == 3
    assert math.isnan(res["steps"][0]["miou_new"]) and math.isfinite(res["final"]["miou_new"])
    table = (tmp_path / "continual.md").read_text()
    assert "| 1 | 7-10 | 3 |" in table
    assert json.loads((tmp_path / "continual.json").read_text())["task"] == "6-4"


def test_every_method_is_a_registry_entry_the_script_accepts():
    assert set(METHODS) >= {"finetune", "plop", "plop+rl"}
    with pytest.raises(ValueError, match="finetune, finetune\\+rl, plop, plop\\+rl"):
        make_method("ewc")


def test_continual_script_rejects_an_unknown_task_with_exit_code_2(capsys):
    with pytest.raises(SystemExit) as exc:
        script.main(["--task", "6-5", "--out", "/tmp/never"])
    assert exc.value.code == 2
    assert "valid names: 6-4, 6-2, 6-1" in capsys.readouterr().err


def test_masked_subset_maps_masks_through_its_table():
    ds = DigitScenes("val", size=32, num_samples=4)
    lut = np.arange(256)
    lut[1:11] = 0
    sub = MaskedSubset(ds, [2, 3], lut)
    assert len(sub) == 2 and set(sub[0][1].unique().tolist()) <= {0, 255}


def _voc_tree(root):
    """A tiny VOCdevkit: 4 images of 40x32 showing {0, 3}, {0, 17}, {0, 4, 18}, {0, 2, 19} (trainaug and val)."""
    import PIL.Image
    from test_data import _save_palette_png

    voc = root / "VOCdevkit" / "VOC2012"
    for d in ("JPEGImages", "SegmentationClass", "SegmentationClassAug", "ImageSets/Segmentation"):
        (voc / d).mkdir(parents=True)
    rng = np.random.default_rng(0)
    ids = ["2007_000001", "2007_000002", "2007_000003", "2007_000004"]
    for i, classes in zip(ids, ([3], [17], [4, 18], [2, 19])):
        m = np.zeros((32, 40), dtype=np.uint8)
        for j, c in enumerate(classes):
            m[8:24, 4 + 18 * j: 18 + 18 * j] = c
        m[0] = 255
        PIL.Image.fromarray(rng.integers(0, 256, (32, 40, 3), dtype=np.uint8)).save(voc / "JPEGImages" / f"{i}.jpg")
        PIL.Image.fromarray(m).save(voc / "SegmentationClassAug" / f"{i}.png")
        _save_palette_png(voc / "SegmentationClass" / f"{i}.png", m)
    for split in ("trainaug", "val"):
        (voc / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    return root


def test_voc_15_5_runs_plop_on_a_tiny_tree_with_the_overlap_filter(tmp_path):
    root = _voc_tree(tmp_path / "data")
    cfg = make_config("voc-fcn-r50", model="fcn_resnet_tiny", pretrained_backbone=False, data_root=str(root),
                      task="15-5", continual_method="plop", crop_size=32, batch_size=2, eval_batch_size=2,
                      max_iters=2, step_iters=1, eval_every=2, num_overlays=0, num_workers=0, attn_dim=32,
                      policy_hidden=16, num_heads=4, out=str(tmp_path / "run"))  # fmt: skip
    res = train_continual(cfg, log=lambda s: None)
    assert [r["classes"][-1] for r in res["steps"]] == [15, 20]
    assert len(res["final"]["per_class_iou"]) == 21 and math.isfinite(res["final"]["miou_old"])
    assert "| 1 | 16-20 | 1 |" in (tmp_path / "run" / "continual.md").read_text()
    task, train, val, _, train_present, val_present = prepare(cfg)
    sizes = {(step, overlap): len(step_datasets(task, step, train, val, train_present, val_present, overlap)[0])
             for step in (0, 1) for overlap in (True, False)}  # fmt: skip
    assert sizes == {(0, True): 3, (0, False): 1, (1, True): 3, (1, False): 3}  # disjoint drops future classes


def test_ade20k_100_50_keeps_background_and_trains_both_steps(tmp_path):
    from test_cityscapes_ade20k import write_ade_tree

    root = write_ade_tree(tmp_path / "data")  # every value 0..150 in each annotation
    cfg = make_config("ade20k-fcn-r50", model="fcn_resnet_tiny", pretrained_backbone=False, data_root=str(root),
                      task="100-50", continual_method="finetune", crop_size=32, batch_size=2, eval_batch_size=2,
                      max_iters=1, step_iters=1, eval_every=1, num_overlays=0, num_workers=0,
                      out=str(tmp_path / "run"))  # fmt: skip
    res = train_continual(cfg, log=lambda s: None)
    assert [r["classes"][0] for r in res["steps"]] == [0, 101]
    assert list(res["final"]["per_class_iou"])[0] == "background" and len(res["final"]["per_class_iou"]) == 151


def test_continual_script_runs_the_digit_task_end_to_end(tmp_path):
    args = ["--crop-size", "32", "--batch-size", "4", "--train-size", "48", "--val-size", "8", "--policy-hidden",
            "16", "--attn-dim", "32", "--num-heads", "4", "--num-overlays", "0", "--num-workers", "0",
            "--max-iters", "3", "--step-iters", "2", "--eval-every", "3", "--task", "6-4", "--out", str(tmp_path)]
    assert script.cli(args) == 0
    result = json.loads((tmp_path / "continual.json").read_text())
    assert result["method"] == "plop+rl" and [s["iterations"] for s in result["steps"]] == [3, 2]
