"""Specification tests for segbandit.data: VOC loading and errors, joint transforms, DigitScenes, make_dataset."""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from torch.utils.data import DataLoader, default_collate
from torchvision import tv_tensors

from segbandit.data import (
    DATASETS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    DigitScenes,
    VOCSegmentation,
    digits_preset,
    eval_transforms,
    make_dataset,
    train_transforms,
    voc_aug_preset,
)
from segbandit.data.digits import load_source_digits
from segbandit.errors import DataError

H, W = 30, 40
IDS = ["2007_000001", "2007_000002", "2007_000003"]


def _voc_palette() -> list[int]:
    """The standard VOC colour map (index -> RGB) as a flat PIL palette."""
    pal = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal += [r, g, b]
    return pal


def _label_map(k: int) -> np.ndarray:
    """(H, W) uint8 index map: classes k, k+1, k+2 in vertical bands, a 255 border."""
    m = np.full((H, W), k, dtype=np.uint8)
    m[:, W // 3 :] = k + 1
    m[:, 2 * W // 3 :] = k + 2
    m[0, :] = m[-1, :] = m[:, 0] = m[:, -1] = 255
    return m


def _save_palette_png(path: Path, labels: np.ndarray) -> None:
    im = PIL.Image.frombytes("P", (labels.shape[1], labels.shape[0]), np.ascontiguousarray(labels).tobytes())
    im.putpalette(_voc_palette())
    im.save(path)


@pytest.fixture
def voc_root(tmp_path: Path) -> Path:
    """A tiny VOCdevkit tree: 3 images of 40x30, palette + Aug masks, train/val/trainval/trainaug lists."""
    voc = tmp_path / "VOCdevkit" / "VOC2012"
    for d in ("JPEGImages", "SegmentationClass", "SegmentationClassAug", "ImageSets/Segmentation"):
        (voc / d).mkdir(parents=True)
    rng = np.random.default_rng(0)
    for k, i in enumerate(IDS):
        PIL.Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)).save(voc / "JPEGImages" / f"{i}.jpg")
        _save_palette_png(voc / "SegmentationClass" / f"{i}.png", _label_map(5 * k + 1))
        PIL.Image.fromarray(_label_map(5 * k + 2)).save(voc / "SegmentationClassAug" / f"{i}.png")
    seg = voc / "ImageSets" / "Segmentation"
    (seg / "train.txt").write_text(f"{IDS[0]}\n{IDS[1]}\n")
    (seg / "val.txt").write_text(f"{IDS[2]}\n")
    (seg / "trainval.txt").write_text("\n".join(IDS) + "\n")
    (seg / "trainaug.txt").write_text(
        f"/JPEGImages/{IDS[0]}.jpg /SegmentationClassAug/{IDS[0]}.png\n{IDS[2]}\n\n"
    )
    return tmp_path


# ----------------------------------------------------------------------------------------------- VOC loading


@pytest.mark.parametrize(
    ("split", "ids", "offset"),
    [("train", IDS[:2], 1), ("val", IDS[2:], 1), ("trainval", IDS, 1), ("trainaug", [IDS[0], IDS[2]], 2)],
)
def test_voc_split_loads_ids_raw_uint8_image_and_palette_index_mask(voc_root, split, ids, offset):
    ds = VOCSegmentation(voc_root, split)
    assert ds.ids == ids and len(ds) == len(ids)
    assert ds.num_classes == 21 and ds.class_names[0] == "background" and ds.class_names[20] == "tvmonitor"
    for j, i in enumerate(ids):
        image, mask = ds[j]
        assert isinstance(image, tv_tensors.Image) and isinstance(mask, tv_tensors.Mask)
        assert image.dtype == torch.uint8 and tuple(image.shape) == (3, H, W)
        assert mask.dtype == torch.int64 and tuple(mask.shape) == (H, W)
        expected = _label_map(5 * IDS.index(i) + offset).astype(np.int64)  # indices, not RGB palette colours
        np.testing.assert_array_equal(mask.numpy(), expected)
        assert set(mask.unique().tolist()) >= {255}


@pytest.mark.parametrize("form", ["parent", "VOCdevkit", "VOC2012"])
def test_voc_accepts_parent_devkit_and_voc2012_roots(voc_root, form):
    root = {"parent": voc_root, "VOCdevkit": voc_root / "VOCdevkit", "VOC2012": voc_root / "VOCdevkit" / "VOC2012"}
    ds = VOCSegmentation(root[form], "train")
    assert ds.ids == IDS[:2]
    assert ds.root == voc_root / "VOCdevkit" / "VOC2012"


def test_voc_trainaug_accepts_train_aug_list_name(voc_root):
    seg = voc_root / "VOCdevkit" / "VOC2012" / "ImageSets" / "Segmentation"
    (seg / "trainaug.txt").rename(seg / "train_aug.txt")
    assert VOCSegmentation(voc_root, "trainaug").ids == [IDS[0], IDS[2]]


# ------------------------------------------------------------------------------------------------ VOC errors


def test_voc_missing_root_raises_data_error_mentioning_vocdevkit_and_digits(tmp_path):
    with pytest.raises(DataError, match="VOCdevkit") as exc:
        VOCSegmentation(tmp_path / "nowhere", "train")
    assert "digits" in str(exc.value) and "\n" not in str(exc.value)


def test_voc_root_without_voc2012_raises_data_error_with_layout(tmp_path):
    with pytest.raises(DataError, match=r"VOCdevkit/VOC2012/\{JPEGImages"):
        VOCSegmentation(tmp_path, "train")


def test_voc_missing_split_file_names_the_file(voc_root):
    (voc_root / "VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt").unlink()
    with pytest.raises(DataError, match=r"ImageSets/Segmentation/val\.txt"):
        VOCSegmentation(voc_root, "val")


def test_voc_unknown_split_raises_value_error_listing_splits(voc_root):
    with pytest.raises(ValueError, match="train, val, trainval, trainaug"):
        VOCSegmentation(voc_root, "test")


def test_voc_corrupt_jpeg_raises_data_error_naming_the_file(voc_root):
    bad = voc_root / "VOCdevkit/VOC2012/JPEGImages" / f"{IDS[1]}.jpg"
    bad.write_bytes(b"\xff\xd8 this is not a jpeg " * 10)
    ds = VOCSegmentation(voc_root, "train")
    ds[0]  # the intact one still loads
    with pytest.raises(DataError, match=f"{IDS[1]}.jpg") as exc:
        ds[1]
    assert "\n" not in str(exc.value)


def test_voc_mask_size_mismatch_raises_data_error_naming_sizes(voc_root):
    PIL.Image.fromarray(np.zeros((H + 2, W), np.uint8)).save(
        voc_root / "VOCdevkit/VOC2012/SegmentationClass" / f"{IDS[0]}.png"
    )
    with pytest.raises(DataError, match=rf"{IDS[0]}.png.*{W}x{H + 2}.*{IDS[0]}.jpg.*{W}x{H}"):
        VOCSegmentation(voc_root, "train")[0]


def test_voc_label_out_of_range_raises_data_error_naming_file_and_value(voc_root):
    labels = _label_map(1)
    labels[5, 5] = 30
    _save_palette_png(voc_root / "VOCdevkit/VOC2012/SegmentationClass" / f"{IDS[2]}.png", labels)
    with pytest.raises(DataError, match=rf"{IDS[2]}\.png: label value 30"):
        VOCSegmentation(voc_root, "val")[0]


# ------------------------------------------------------------------------------------------------ transforms


def _raw_pair(h: int, w: int, labels=(0, 3, 7, 255), seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    image = tv_tensors.Image(torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g))
    lab = torch.tensor(labels)[torch.randint(0, len(labels), (h, w), generator=g)]
    return image, tv_tensors.Mask(lab)


def test_train_transforms_give_float_image_and_int64_mask_of_crop_size():
    torch.manual_seed(0)
    image, mask = _raw_pair(H, W)
    out_img, out_mask = train_transforms(24)(image, mask)
    assert type(out_img) is torch.Tensor and type(out_mask) is torch.Tensor  # plain tensors, not tv_tensors
    assert out_img.dtype == torch.float32 and tuple(out_img.shape) == (3, 24, 24)
    assert out_mask.dtype == torch.int64 and tuple(out_mask.shape) == (24, 24)


def test_random_crop_pads_mask_with_void_and_image_with_zero():
    torch.manual_seed(0)
    image, _ = _raw_pair(20, 20)
    mask = tv_tensors.Mask(torch.zeros(20, 20, dtype=torch.int64))
    tf = train_transforms(32, scale_range=(1.0, 1.0), photometric=False)
    out_img, out_mask = tf(image, mask)
    assert int((out_mask == 255).sum()) == 32 * 32 - 20 * 20
    assert int((out_mask == 0).sum()) == 20 * 20
    pad_value = (0.0 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)  # normalised 0
    torch.testing.assert_close(out_img[:, out_mask == 255], pad_value[:, None].expand(3, 32 * 32 - 400))


def test_rescale_and_crop_keep_mask_values_in_label_set():
    torch.manual_seed(1)
    tf = train_transforms(24, scale_range=(0.37, 1.9))
    for seed in range(6):
        image, mask = _raw_pair(H, W, labels=(0, 3, 7, 255), seed=seed)
        _, out_mask = tf(image, mask)
        assert set(out_mask.unique().tolist()) <= {0, 3, 7, 255}  # nearest: no blended labels


def test_eval_resize_uses_nearest_for_masks_and_bilinear_for_images():
    _, mask = _raw_pair(H, W, labels=(0, 3, 7, 255))
    two_level = (torch.rand(3, H, W, generator=torch.Generator().manual_seed(0)) > 0.5).to(torch.uint8) * 200
    out_img, out_mask = eval_transforms((17, 23))(tv_tensors.Image(two_level), mask)
    assert tuple(out_img.shape) == (3, 17, 23) and tuple(out_mask.shape) == (17, 23)
    assert set(out_mask.unique().tolist()) <= {0, 3, 7, 255}  # nearest: only source labels
    raw_back = out_img * torch.tensor(IMAGENET_STD)[:, None, None] + torch.tensor(IMAGENET_MEAN)[:, None, None]
    levels = torch.round(raw_back * 255)
    assert ((levels > 5) & (levels < 195)).float().mean() > 0.5  # bilinear blends the two source levels


def test_flip_is_applied_to_image_and_mask_jointly():
    # the image's red channel and the mask both encode the column index: after any joint op they must agree
    w = 20
    cols = torch.arange(w).expand(16, w)  # (16, 20)
    image = tv_tensors.Image(torch.stack([cols * 10, torch.zeros_like(cols), torch.zeros_like(cols)]).to(torch.uint8))
    mask = tv_tensors.Mask(cols.clone())
    tf = train_transforms((16, w), scale_range=(1.0, 1.0), photometric=False)
    flipped = 0
    for seed in range(12):
        torch.manual_seed(seed)
        out_img, out_mask = tf(image, mask)
        red = torch.round((out_img[0] * IMAGENET_STD[0] + IMAGENET_MEAN[0]) * 255 / 10).long()
        assert torch.equal(red, out_mask)
        flipped += int(out_mask[0, 0] == w - 1)
    assert 0 < flipped < 12  # both flipped and unflipped outcomes occurred


def test_digits_preset_has_no_flip_and_voc_preset_has_one():
    digits_train, _ = digits_preset(32)
    voc_train, _ = voc_aug_preset(32)
    names = lambda tf: [type(t).__name__ for t in tf.pipeline.transforms]  # noqa: E731
    assert "RandomHorizontalFlip" not in names(digits_train)
    assert "RandomHorizontalFlip" in names(voc_train) and "RandomPhotometricDistort" in names(voc_train)


def test_voc_preset_eval_resizes_short_side_or_to_fixed_size():
    image, mask = _raw_pair(H, W)
    _, eval_tf = voc_aug_preset(60)
    assert tuple(eval_tf(image, mask)[1].shape) == (60, 80)  # short side 30 -> 60, aspect kept
    _, fixed_tf = voc_aug_preset(60, eval_size=(60, 60))
    out_img, out_mask = fixed_tf(image, mask)
    assert tuple(out_img.shape) == (3, 60, 60) and tuple(out_mask.shape) == (60, 60)


def test_voc_preset_rescale_follows_mmseg_keep_ratio_rule():
    # base (crop, 4 crop) at ratio 1: a landscape 30x40 image is scaled by min(4c/40, c/30) -> short side c
    from segbandit.data import RandomRescale

    image, mask = _raw_pair(H, W)
    out_img, out_mask = RandomRescale((1.0, 1.0), base_size=(60, 240))(image, mask)
    assert tuple(out_img.shape) == (3, 60, 80) and tuple(out_mask.shape) == (60, 80)
    portrait_img, portrait_mask = _raw_pair(W, H)
    out_img, _ = RandomRescale((1.0, 1.0), base_size=(60, 240))(portrait_img, portrait_mask)
    assert tuple(out_img.shape) == (3, 80, 60)  # same rule for either orientation


# ------------------------------------------------------------------------------------------------ DigitScenes


def test_digit_scenes_have_eleven_classes_background_first():
    ds = DigitScenes("val", num_samples=4)
    assert ds.num_classes == 11 and len(ds.class_names) == 11
    assert ds.class_names == ("background", "0", "1", "2", "3", "4", "5", "6", "7", "8", "9")
    assert len(DigitScenes("train")) == 2000 and len(DigitScenes("val")) == 256


def test_digit_scene_is_uint8_image_and_int64_mask_in_label_range():
    ds = DigitScenes("train", num_samples=8)
    for i in range(len(ds)):
        image, mask = ds[i]
        assert isinstance(image, tv_tensors.Image) and image.dtype == torch.uint8 and tuple(image.shape) == (3, 64, 64)
        assert isinstance(mask, tv_tensors.Mask) and mask.dtype == torch.int64 and tuple(mask.shape) == (64, 64)
        assert set(mask.unique().tolist()) <= set(range(11)) | {255}
        assert (mask == 0).any() and ((mask >= 1) & (mask <= 10)).any()  # background and at least one digit


def test_digit_scenes_same_seed_same_tensors_and_different_seed_differs():
    a, b, c = DigitScenes(seed=3), DigitScenes(seed=3), DigitScenes(seed=4)
    for i in (0, 7, 1999):
        assert torch.equal(a[i][0], b[i][0]) and torch.equal(a[i][1], b[i][1])
        assert not torch.equal(a[i][0], c[i][0])
    assert not torch.equal(a[0][0], a[1][0])


def test_digit_scenes_identical_in_dataloader_worker_processes():
    ds = DigitScenes("val", seed=1, num_samples=4)
    images, masks = next(iter(DataLoader(ds, batch_size=4, num_workers=2)))
    for i in range(4):
        assert torch.equal(images[i], ds[i][0].as_subclass(torch.Tensor)) and torch.equal(masks[i], ds[i][1])


def test_digit_scene_train_and_val_source_digits_are_disjoint_and_fixed():
    train, val = DigitScenes("train", seed=0), DigitScenes("val", seed=99)
    n = len(load_source_digits()[1])
    assert n == 1797
    assert len(set(train.source_indices.tolist()) & set(val.source_indices.tolist())) == 0
    assert len(train.source_indices) + len(val.source_indices) == n
    assert len(train.source_indices) == round(0.8 * n)
    expected = np.random.default_rng(12345).permutation(n)
    np.testing.assert_array_equal(np.concatenate([train.source_indices, val.source_indices]), expected)
    np.testing.assert_array_equal(DigitScenes("train", seed=5).source_indices, train.source_indices)


def test_digit_scene_clutter_is_background_labelled_ink():
    with_c = DigitScenes("train", seed=2, num_samples=6, clutter=True)
    without = DigitScenes("train", seed=2, num_samples=6, clutter=False)
    found = 0
    for i in range(6):
        img_c, mask_c = with_c.scene(i)
        img_n, mask_n = without.scene(i)
        diff = np.abs(img_c.astype(int) - img_n.astype(int)).max(axis=2)  # (H, W)
        clutter_px = (diff > 60) & (mask_n == 0)  # strong clutter ink away from digits
        assert (mask_c[clutter_px] == 0).all()  # clutter is labelled background
        found += int(clutter_px.sum() > 0)
        np.testing.assert_array_equal(mask_c == 0, (mask_n == 0) | (mask_c == 0))  # digits unchanged by clutter
    assert found >= 5  # clutter is visible ink in (almost) every scene


def test_digit_scenes_render_the_same_pixels_as_when_the_figures_were_measured():
    # sha256 of scenes 0-7 (train, seed 0, 64 px): the published figures were measured on exactly these scenes
    ds = DigitScenes("train", seed=0, size=64, num_samples=8)
    digest = hashlib.sha256()
    for i in range(8):
        image, mask = ds.scene(i)
        digest.update(image.tobytes())
        digest.update(mask.tobytes())
    assert digest.hexdigest() == "22d7fd5f57f2dfb803947f2745bfa449cadb1c2664c589d7fca56e9b14cec61c"


def test_cached_digit_scenes_equal_uncached_ones_and_are_rendered_once():
    plain = DigitScenes("val", seed=3, size=32, num_samples=6)
    cached = DigitScenes("val", seed=3, size=32, num_samples=6, cache=True)
    calls = []
    original = cached.scene
    cached.scene = lambda i: calls.append(i) or original(i)  # count renders
    for _ in range(2):
        for i in range(6):
            (a, m), (b, n) = plain[i], cached[i]
            assert torch.equal(a, b) and torch.equal(m, n) and n.dtype == torch.int64
    assert sorted(calls) == list(range(6))  # the second pass read the bank
    assert torch.equal(cached[-1][0], plain[5][0])
    with pytest.raises(IndexError):
        cached[6]


def test_cached_digit_scenes_bank_is_not_copied_into_dataloader_workers():
    ds = DigitScenes("val", seed=1, size=32, num_samples=4, cache=True)
    ds[0]
    assert pickle.loads(pickle.dumps(ds))._bank is None  # each worker process fills its own bank
    images, masks = next(iter(DataLoader(ds, batch_size=4, num_workers=1)))
    assert torch.equal(images[0], ds[0][0].as_subclass(torch.Tensor)) and torch.equal(masks[3], ds[3][1])


def test_digit_scenes_unknown_split_lists_valid_splits():
    with pytest.raises(ValueError, match="train, val"):
        DigitScenes("test")


def test_digit_scenes_with_digits_preset_collate_into_a_batch():
    train_tf, eval_tf = digits_preset(32)
    ds = DigitScenes("train", size=32, num_samples=4, transforms=train_tf)
    images, masks = default_collate([ds[i] for i in range(4)])
    assert images.dtype == torch.float32 and tuple(images.shape) == (4, 3, 32, 32)
    assert masks.dtype == torch.int64 and tuple(masks.shape) == (4, 32, 32)
    assert set(masks.unique().tolist()) <= set(range(11)) | {255}


# ----------------------------------------------------------------------------------------------- make_dataset


def test_make_dataset_unknown_name_lists_valid_names():
    assert {"digits", "voc", "cityscapes", "ade20k"} <= set(DATASETS)
    with pytest.raises(ValueError, match=", ".join(sorted(DATASETS))):
        make_dataset("coco", "train")


def test_make_dataset_voc_without_root_raises_data_error():
    with pytest.raises(DataError, match="VOCdevkit.*digits"):
        make_dataset("voc", "train")


def test_make_dataset_picks_train_transforms_for_train_and_eval_otherwise(voc_root):
    digits_train = make_dataset("digits", "train", image_size=32, num_samples=3)
    digits_val = make_dataset("digits", "val", image_size=32, num_samples=3)
    assert tuple(digits_train[0][0].shape) == (3, 32, 32) and digits_train[0][0].dtype == torch.float32
    assert torch.equal(digits_val[1][0], digits_val[1][0])  # eval transforms are deterministic
    assert "RandomCrop" in repr(digits_train.transforms) and "RandomCrop" not in repr(digits_val.transforms)
    voc_train = make_dataset("voc", "trainaug", root=voc_root, image_size=24)
    voc_val = make_dataset("voc", "val", root=voc_root, image_size=24)
    assert tuple(voc_train[0][0].shape) == (3, 24, 24) and tuple(voc_train[0][1].shape) == (24, 24)
    assert tuple(voc_val[0][0].shape) == (3, 24, 24) and voc_val[0][1].dtype == torch.int64
    raw = make_dataset("voc", "val", root=voc_root, transforms=None)
    assert raw[0][0].dtype == torch.uint8


def test_make_dataset_train_false_forces_eval_transforms_on_a_train_split(voc_root):
    ds = make_dataset("voc", "train", root=voc_root / "VOCdevkit", image_size=16, train=False)
    assert tuple(ds[1][0].shape) == (3, 16, 16) and tuple(ds[1][1].shape) == (16, 16)
    assert "RandomCrop" not in repr(ds.transforms)
