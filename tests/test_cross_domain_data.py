"""Specification tests for the cross-domain datasets (Dark Zurich, Nighttime Driving, LIP, CIHP) and the
left/right-swapping horizontal flip of human parsing."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from segbandit.data import (
    CITYSCAPES_CLASSES,
    DATASETS,
    FLIP_LUT,
    FLIP_PAIRS,
    HUMAN_PARSING_CLASSES,
    CIHPSegmentation,
    DarkZurichSegmentation,
    LIPSegmentation,
    NighttimeDrivingSegmentation,
    RandomHorizontalFlipSwap,
    human_parsing_preset,
    make_dataset,
    train_transforms,
)
from segbandit.errors import DataError

H, W = 24, 32
DZ_LAYOUT = r"expected <root>/rgb_anon/val/night/<sequence>/<stem>_rgb_anon\.png"
ND_LAYOUT = r"expected <root>/leftImg8bit/test/night/<stem>_leftImg8bit\.png"
LIP_LAYOUT = r"expected <root>/TrainVal_images/\{train,val\}_images/<id>\.jpg"
CIHP_LAYOUT = r"expected <root>/\{Training,Validation\}/Images/<id>\.jpg"


def _assert_one_line_naming(exc: pytest.ExceptionInfo, path: Path, layout: str) -> None:
    text = str(exc.value)
    assert str(path) in text, text
    assert re.search(layout, text), text
    assert "\n" not in text


def _image(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    PIL.Image.fromarray(np.random.default_rng(seed).integers(0, 256, (H, W, 3), dtype=np.uint8)).save(path)


def _label(path: Path, values: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    PIL.Image.fromarray(values.astype(np.uint8)).save(path)  # (H, W) uint8 -> mode L


def _bands(values: list[int], k: int = 0) -> np.ndarray:
    """(H, W) uint8 vertical bands cycling through ``values``, rolled by ``k`` columns."""
    return np.roll(np.resize(np.array(values, dtype=np.uint8), W), k)[None].repeat(H, 0)


CS_TRAIN_IDS = list(range(19)) + [255]

# ------------------------------------------------------------------------------------------------------ Dark Zurich

DZ_SEQS = {"GOPR0356": ["GOPR0356_frame_000339", "GOPR0356_frame_000321"], "GOPR0351": ["GOPR0351_frame_000159"]}
DZ_ORDER = ["GOPR0351_frame_000159", "GOPR0356_frame_000321", "GOPR0356_frame_000339"]


@pytest.fixture
def dz_parent(tmp_path: Path) -> Path:
    """A folder holding Dark_Zurich_val_anon/ with 3 night frames in 2 sequences (plus color maps to ignore)."""
    root = tmp_path / "Dark_Zurich_val_anon"
    for k, (seq, stems) in enumerate(DZ_SEQS.items()):
        for j, stem in enumerate(stems):
            _image(root / "rgb_anon" / "val" / "night" / seq / f"{stem}_rgb_anon.png", 10 * k + j)
            gt = root / "gt" / "val" / "night" / seq
            _label(gt / f"{stem}_gt_labelTrainIds.png", _bands(CS_TRAIN_IDS, DZ_ORDER.index(stem)))
            _label(gt / f"{stem}_gt_labelIds.png", _bands([7, 8, 11]))  # present in the release, not read
    return tmp_path


def test_dark_zurich_lists_by_sequence_then_stem_and_reads_train_ids(dz_parent):
    ds = DarkZurichSegmentation(dz_parent, "val")  # the parent of Dark_Zurich_val_anon
    root = dz_parent / "Dark_Zurich_val_anon"
    assert ds.root == root and len(ds) == 3 and ds.ids == DZ_ORDER
    assert ds.masks[0] == root / "gt/val/night/GOPR0351/GOPR0351_frame_000159_gt_labelTrainIds.png"
    assert DarkZurichSegmentation(root, "val").ids == DZ_ORDER  # the release folder itself
    assert ds.class_names == CITYSCAPES_CLASSES and ds.num_classes == 19
    for i, stem in enumerate(DZ_ORDER):
        image, mask = ds[i]
        assert isinstance(image, tv_tensors.Image) and image.dtype == torch.uint8 and image.shape == (3, H, W)
        seq = stem.split("_")[0]
        written = np.array(PIL.Image.open(root / "rgb_anon/val/night" / seq / f"{stem}_rgb_anon.png"))
        assert torch.equal(image.permute(1, 2, 0), torch.from_numpy(written))
        assert mask.dtype == torch.int64 and torch.equal(mask, torch.from_numpy(_bands(CS_TRAIN_IDS, i)).long())
    with pytest.raises(ValueError, match="valid splits: val"):
        DarkZurichSegmentation(dz_parent, "train")


def test_dark_zurich_missing_label_root_and_bad_value_are_one_line_data_errors(dz_parent, tmp_path):
    root = dz_parent / "Dark_Zurich_val_anon"
    bad = root / "gt/val/night/GOPR0356/GOPR0356_frame_000321_gt_labelTrainIds.png"
    _label(bad, _bands([0, 19]))  # 19 is not a train id
    with pytest.raises(DataError, match=r"label value 19 is not a Cityscapes train id") as exc:
        DarkZurichSegmentation(root, "val")[1]
    _assert_one_line_naming(exc, bad, DZ_LAYOUT)
    bad.unlink()
    with pytest.raises(DataError, match="label file of image .* not found") as exc:
        DarkZurichSegmentation(root, "val")
    _assert_one_line_naming(exc, bad, DZ_LAYOUT)
    with pytest.raises(DataError, match="root does not exist") as exc:
        DarkZurichSegmentation(tmp_path / "nowhere", "val")
    _assert_one_line_naming(exc, tmp_path / "nowhere", DZ_LAYOUT)
    with pytest.raises(DataError, match="no rgb_anon and gt folders") as exc:
        DarkZurichSegmentation(root / "gt", "val")
    _assert_one_line_naming(exc, root / "gt", DZ_LAYOUT)


# ------------------------------------------------------------------------------------------------ Nighttime Driving

ND_STEMS = ["0_frame_0200", "0_frame_0100", "1_frame_0050"]
ND_ORDER = sorted(ND_STEMS)  # 0_frame_0100, 0_frame_0200, 1_frame_0050
# labelIds -> trainIds (cityscapesScripts helpers/labels.py, written out independently of the code)
ND_LABEL_IDS = [0, 7, 8, 9, 11, 24, 26, 33, 255]
ND_LABEL_TRAIN = [255, 0, 1, 255, 2, 11, 13, 18, 255]


@pytest.fixture
def nd_parent(tmp_path: Path) -> Path:
    """A folder holding NighttimeDrivingTest/: 2 images with labelTrainIds, 1 (1_frame_0050) with labelIds only."""
    root = tmp_path / "NighttimeDrivingTest"
    for k, stem in enumerate(ND_STEMS):
        _image(root / "leftImg8bit/test/night" / f"{stem}_leftImg8bit.png", k)
        gt = root / "gtCoarse_daytime_trainvaltest/test/night"
        if stem == "1_frame_0050":
            _label(gt / f"{stem}_gtCoarse_labelIds.png", _bands(ND_LABEL_IDS))
        else:
            _label(gt / f"{stem}_gtCoarse_labelTrainIds.png", _bands(CS_TRAIN_IDS, k))
            _label(gt / f"{stem}_gtCoarse_labelIds.png", _bands([0]))  # the trainIds file wins
    return tmp_path


def test_nighttime_driving_sorts_stems_and_maps_label_ids_to_train_ids(nd_parent):
    ds = NighttimeDrivingSegmentation(nd_parent, "test")
    assert ds.root == nd_parent / "NighttimeDrivingTest" and len(ds) == 3 and ds.ids == ND_ORDER
    assert [p.name for p in ds.masks] == [
        "0_frame_0100_gtCoarse_labelTrainIds.png", "0_frame_0200_gtCoarse_labelTrainIds.png",
        "1_frame_0050_gtCoarse_labelIds.png",
    ]  # fmt: skip
    assert ds.class_names == CITYSCAPES_CLASSES
    _, m0 = ds[0]  # 0_frame_0100 was written second (roll 1)
    assert torch.equal(m0, torch.from_numpy(_bands(CS_TRAIN_IDS, 1)).long())
    _, m2 = ds[2]
    assert m2.dtype == torch.int64 and torch.equal(m2, torch.from_numpy(_bands(ND_LABEL_TRAIN)).long())
    with pytest.raises(ValueError, match="valid splits: test"):
        NighttimeDrivingSegmentation(nd_parent, "val")


def test_nighttime_driving_errors_name_the_file_and_layout(nd_parent, tmp_path):
    root = nd_parent / "NighttimeDrivingTest"
    gt = root / "gtCoarse_daytime_trainvaltest/test/night"
    _label(gt / "1_frame_0050_gtCoarse_labelIds.png", _bands([7, 34]))  # 34 is not a labelId
    with pytest.raises(DataError, match="label value 34 is not a Cityscapes labelId") as exc:
        NighttimeDrivingSegmentation(root, "test")[2]
    _assert_one_line_naming(exc, gt / "1_frame_0050_gtCoarse_labelIds.png", ND_LAYOUT)
    (gt / "1_frame_0050_gtCoarse_labelIds.png").unlink()
    with pytest.raises(DataError, match=r"not found \(nor 1_frame_0050_gtCoarse_labelIds\.png\)") as exc:
        NighttimeDrivingSegmentation(root, "test")
    _assert_one_line_naming(exc, gt / "1_frame_0050_gtCoarse_labelTrainIds.png", ND_LAYOUT)
    with pytest.raises(DataError, match="no Nighttime Driving root given") as exc:
        NighttimeDrivingSegmentation(None, "test")
    assert re.search(ND_LAYOUT, str(exc.value))
    with pytest.raises(DataError, match="root does not exist") as exc:
        make_dataset("nighttime_driving", "test", root=tmp_path / "absent")
    _assert_one_line_naming(exc, tmp_path / "absent", ND_LAYOUT)


# ------------------------------------------------------------------------------------------------------ LIP / CIHP

HP_VALUES = list(range(20)) + [255]


def _hp_mask(k: int) -> np.ndarray:
    return _bands(HP_VALUES, k)


@pytest.fixture
def lip_root(tmp_path: Path) -> Path:
    """LIP: train 3 images (listing order 10_1, 2_5, 77_471474), val 2 images; no id lists."""
    root = tmp_path / "LIP"
    for split, ids in {"train": ["77_471474", "10_1", "2_5"], "val": ["100034_483681", "100142_449784"]}.items():
        for k, i in enumerate(ids):
            _image(root / "TrainVal_images" / f"{split}_images" / f"{i}.jpg", k)
            _label(root / "TrainVal_parsing_annotations" / f"{split}_segmentations" / f"{i}.png", _hp_mask(k))
    return root


def test_lip_lists_sorted_without_id_list_and_reads_class_indices(lip_root):
    ds = LIPSegmentation(lip_root.parent, "train")  # the parent holding LIP/
    assert ds.root == lip_root and ds.ids == ["10_1", "2_5", "77_471474"]
    assert ds.list_file == lip_root / "TrainVal_images" / "train_images"
    assert ds.images[2] == lip_root / "TrainVal_images/train_images/77_471474.jpg"
    assert ds.class_names == HUMAN_PARSING_CLASSES and ds.num_classes == 20 and len(HUMAN_PARSING_CLASSES) == 20
    image, mask = ds[2]  # 77_471474 was written first: roll 0
    assert image.dtype == torch.uint8 and image.shape == (3, H, W)
    assert mask.dtype == torch.int64 and torch.equal(mask, torch.from_numpy(_hp_mask(0)).long())
    assert len(LIPSegmentation(lip_root, "val")) == 2


def test_lip_and_cihp_honour_id_lists(lip_root, tmp_path):
    (lip_root / "train_id.txt").write_text("2_5\n77_471474\n\n")  # a subset, in list order
    ds = LIPSegmentation(lip_root, "train")
    assert ds.ids == ["2_5", "77_471474"] and ds.list_file == lip_root / "train_id.txt"
    assert torch.equal(ds[0][1], torch.from_numpy(_hp_mask(2)).long())
    (lip_root / "TrainVal_images" / "val_id.txt").write_text("100142_449784\n")  # the release's place for it
    assert LIPSegmentation(lip_root, "val").ids == ["100142_449784"]
    (lip_root / "train_id.txt").write_text("2_5\n3_3\n")
    with pytest.raises(DataError, match="image listed in .*train_id.txt not found") as exc:
        LIPSegmentation(lip_root, "train")
    _assert_one_line_naming(exc, lip_root / "TrainVal_images/train_images/3_3.jpg", LIP_LAYOUT)

    cihp = tmp_path / "instance-level_human_parsing"
    for k, i in enumerate(["0000003", "0000001", "0000002"]):
        _image(cihp / "Training/Images" / f"{i}.jpg", k)
        _label(cihp / "Training/Category_ids" / f"{i}.png", _hp_mask(k))
    _image(cihp / "Validation/Images/0000005.jpg", 9)
    _label(cihp / "Validation/Category_ids/0000005.png", _hp_mask(5))
    assert CIHPSegmentation(tmp_path, "train").ids == ["0000001", "0000002", "0000003"]  # sorted listing
    (cihp / "Training/train_id.txt").write_text("0000003\n0000001\n")
    ds = CIHPSegmentation(cihp, "train")
    assert ds.ids == ["0000003", "0000001"] and ds.list_file == cihp / "Training/train_id.txt"
    assert ds.masks[1] == cihp / "Training/Category_ids/0000001.png"
    assert torch.equal(ds[1][1], torch.from_numpy(_hp_mask(1)).long())
    val = CIHPSegmentation(cihp, "val")
    assert val.ids == ["0000005"] and torch.equal(val[0][1], torch.from_numpy(_hp_mask(5)).long())


def test_human_parsing_errors_name_the_file_and_layout(lip_root, tmp_path):
    bad = lip_root / "TrainVal_parsing_annotations/train_segmentations/2_5.png"
    _label(bad, _bands([1, 20, 254]))
    with pytest.raises(DataError, match=r"label value 20 is not a LIP class index \(0\.\.19, or 255\)") as exc:
        LIPSegmentation(lip_root, "train")[1]
    _assert_one_line_naming(exc, bad, LIP_LAYOUT)
    bad.unlink()
    with pytest.raises(DataError, match="annotation of image .*2_5.jpg not found") as exc:
        LIPSegmentation(lip_root, "train")
    _assert_one_line_naming(exc, bad, LIP_LAYOUT)
    with pytest.raises(DataError, match="no TrainVal_images and TrainVal_parsing_annotations") as exc:
        LIPSegmentation(tmp_path / "LIP" / "TrainVal_images", "train")
    _assert_one_line_naming(exc, tmp_path / "LIP" / "TrainVal_images", LIP_LAYOUT)

    cihp = tmp_path / "CIHP"
    _image(cihp / "Training/Images/0000001.jpg", 0)
    (cihp / "Training/Category_ids").mkdir(parents=True)
    with pytest.raises(DataError, match="annotation of image") as exc:
        CIHPSegmentation(cihp, "train")
    _assert_one_line_naming(exc, cihp / "Training/Category_ids/0000001.png", CIHP_LAYOUT)
    with pytest.raises(DataError, match="folder of split 'val' not found") as exc:
        CIHPSegmentation(tmp_path, "val")  # found via CIHP/, which has no Validation
    _assert_one_line_naming(exc, cihp / "Validation", CIHP_LAYOUT)
    with pytest.raises(DataError, match="root does not exist") as exc:
        make_dataset("cihp", "train", root=tmp_path / "absent")
    _assert_one_line_naming(exc, tmp_path / "absent", CIHP_LAYOUT)


# ----------------------------------------------------------------------------------------- flip swap, presets, registry


def test_flip_pairs_and_lut_mirror_left_and_right_parts():
    assert FLIP_PAIRS == ((14, 15), (16, 17), (18, 19))
    expected = np.arange(256)
    expected[[14, 15, 16, 17, 18, 19]] = [15, 14, 17, 16, 19, 18]
    assert FLIP_LUT.shape == (256,) and np.array_equal(FLIP_LUT, expected)
    assert all(HUMAN_PARSING_CLASSES[a].startswith("left-") for a, _ in FLIP_PAIRS)
    assert all(HUMAN_PARSING_CLASSES[b] == HUMAN_PARSING_CLASSES[a].replace("left", "right") for a, b in FLIP_PAIRS)


def test_random_horizontal_flip_swap_mirrors_image_and_swaps_left_right_labels():
    image = tv_tensors.Image(torch.arange(3 * 2 * 4, dtype=torch.uint8).reshape(3, 2, 4))
    mask = tv_tensors.Mask(torch.tensor([[14, 14, 0, 255], [16, 2, 19, 18]]))
    out_image, out_mask = RandomHorizontalFlipSwap(p=1.0, flip_pairs=FLIP_PAIRS)(image, mask)
    assert isinstance(out_image, tv_tensors.Image) and isinstance(out_mask, tv_tensors.Mask)
    assert torch.equal(out_image, image.flip(-1))  # pixels mirrored, values untouched
    # left arm (14) on the left becomes right arm (15) on the right; 16 -> 17, 19 -> 18, 18 -> 19; 0, 2, 255 kept
    assert torch.equal(out_mask.as_subclass(torch.Tensor), torch.tensor([[255, 0, 15, 15], [19, 18, 2, 17]]))
    same_image, same_mask = RandomHorizontalFlipSwap(p=0.0)(image, mask)
    assert torch.equal(same_image, image) and torch.equal(same_mask, mask)
    # one draw per sample: image and mask are flipped together or not at all
    flip = RandomHorizontalFlipSwap(p=0.5, flip_pairs=FLIP_PAIRS)
    img = tv_tensors.Image(torch.tensor([[[1, 2]]] * 3, dtype=torch.uint8))
    msk = tv_tensors.Mask(torch.tensor([[14, 0]]))
    outcomes = set()
    for _ in range(32):
        oi, om = flip(img, msk)
        flipped = bool(oi[0, 0, 0] == 2)
        assert om.tolist() == ([[0, 15]] if flipped else [[14, 0]])
        outcomes.add(flipped)
    assert outcomes == {True, False}
    with pytest.raises(ValueError, match="flip_pairs"):
        RandomHorizontalFlipSwap(flip_pairs=((14, 15), (15, 16)))


def test_train_transforms_flip_pairs_picks_the_swapping_flip_and_none_keeps_the_plain_one():
    def flips(tf):
        return [type(t) for t in tf.pipeline.transforms if "Flip" in type(t).__name__]

    assert flips(train_transforms(16)) == [v2.RandomHorizontalFlip]
    assert flips(train_transforms(16, flip_pairs=FLIP_PAIRS)) == [RandomHorizontalFlipSwap]
    assert flips(train_transforms(16, flip=False, flip_pairs=FLIP_PAIRS)) == []
    hp_train, hp_eval = human_parsing_preset(16, eval_size=(16, 16))
    swap = next(t for t in hp_train.pipeline.transforms if isinstance(t, RandomHorizontalFlipSwap))
    assert swap.flip_pairs == FLIP_PAIRS and swap.p == 0.5
    # a full pipeline on a mask of constant left arm gives left or right arm only (never a mix, never void here)
    image = tv_tensors.Image(torch.zeros(3, 16, 16, dtype=torch.uint8))
    _, out = train_transforms(16, scale_range=(1.0, 1.0), photometric=False, flip_pairs=FLIP_PAIRS)(
        image, torch.full((16, 16), 14)
    )
    assert out.dtype == torch.int64 and out.unique().numel() == 1 and int(out[0, 0]) in (14, 15)


def test_registry_builds_lip_with_human_parsing_preset_and_night_sets_with_cityscapes_eval(lip_root, dz_parent,
                                                                                          nd_parent):
    assert {"dark_zurich", "nighttime_driving", "lip", "cihp"} <= set(DATASETS)
    train = make_dataset("lip", "train", root=lip_root, image_size=16)
    assert any(isinstance(t, RandomHorizontalFlipSwap) for t in train.transforms.pipeline.transforms)
    val = make_dataset("lip", "val", root=lip_root, image_size=16)
    for ds in (train, val):
        image, mask = ds[0]
        assert image.dtype == torch.float32 and tuple(image.shape) == (3, 16, 16)
        assert mask.dtype == torch.int64 and tuple(mask.shape) == (16, 16)
        assert set(mask.unique().tolist()) <= set(range(20)) | {255}
    for name, split, parent in (("dark_zurich", "val", dz_parent), ("nighttime_driving", "test", nd_parent)):
        ds = make_dataset(name, split, root=parent, image_size=8)
        assert "RandomCrop" not in repr(ds.transforms)
        image, mask = ds[0]
        assert image.dtype == torch.float32 and tuple(image.shape) == (3, 8, 16)
        assert mask.dtype == torch.int64 and tuple(mask.shape) == (8, 16)
