"""Specification tests for the Cityscapes and ADE20K datasets: layout, label mapping, presets, and their errors."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import PIL.Image
import pytest
import torch
from torch.utils.data import default_collate
from torchvision import tv_tensors
from torchvision.transforms import v2

from agents.config import DATASET_NAMES
from tests.conftest import ROOT
from agents.datasets import build_datasets
from segbandit.data import (
    ADE20K_CLASSES,
    CITYSCAPES_CLASSES,
    DATASETS,
    ADE20KSegmentation,
    CityscapesSegmentation,
    RandomRescale,
    make_dataset,
)
from segbandit.errors import DataError

# ------------------------------------------------------------------------------------------------ Cityscapes tree

CH, CW = 32, 64  # Cityscapes test image size (H, W): the release's 1:2 aspect
CITIES = {"train": {"bochum": ["bochum_000000_000313", "bochum_000000_000600"],
                    "aachen": ["aachen_000001_000019", "aachen_000000_000019"]},
          "val": {"frankfurt": ["frankfurt_000000_000294"]}}  # fmt: skip
TRAIN_ORDER = ["aachen_000000_000019", "aachen_000001_000019", "bochum_000000_000313", "bochum_000000_000600"]

# cityscapesScripts helpers/labels.py, column trainId for labelIds 0..33 (written out here independently of the code)
OFFICIAL_TRAIN_ID = [
    255, 255, 255, 255, 255, 255, 255,  # 0-6 (void): unlabeled, ego vehicle, ..., static, dynamic, ground
    0, 1, 255, 255,  # 7 road, 8 sidewalk, 9 parking, 10 rail track
    2, 3, 4, 255, 255, 255,  # 11 building, 12 wall, 13 fence, 14 guard rail, 15 bridge, 16 tunnel
    5, 255, 6, 7,  # 17 pole, 18 polegroup, 19 traffic light, 20 traffic sign
    8, 9, 10, 11, 12,  # 21 vegetation, 22 terrain, 23 sky, 24 person, 25 rider
    13, 14, 15, 255, 255,  # 26 car, 27 truck, 28 bus, 29 caravan, 30 trailer
    16, 17, 18,  # 31 train, 32 motorcycle, 33 bicycle
]  # fmt: skip
CS_LAYOUT = r"expected <root>/leftImg8bit/\{train,val,test\}/<city>/<stem>_leftImg8bit\.png"
ADE_LAYOUT = r"expected ADEChallengeData2016/images/\{training,validation\}/<id>\.jpg"


def _every_label_id(seed: int) -> np.ndarray:
    """(CH, CW) uint8 labelIds map holding every id 0..33 and 255 (license plate, -1 as 8-bit), rolled by ``seed``."""
    values = np.array(list(range(34)) + [255], dtype=np.uint8)
    return np.roll(np.resize(values, CH * CW), seed).reshape(CH, CW)


def _train_id_map() -> np.ndarray:
    """(CH, CW) uint8 labelTrainIds map: train ids 0..18 and 255 in vertical bands."""
    return np.resize(np.array(list(range(19)) + [255], dtype=np.uint8), CW)[None].repeat(CH, 0)


@pytest.fixture
def cs_root(tmp_path: Path) -> Path:
    """Cityscapes tree: train 2 cities x 2 images, val 1 image; 32x64 PNGs, labelIds for all, one labelTrainIds."""
    rng = np.random.default_rng(0)
    k = 0
    for split, cities in CITIES.items():
        for city, stems in cities.items():
            (tmp_path / "leftImg8bit" / split / city).mkdir(parents=True)
            (tmp_path / "gtFine" / split / city).mkdir(parents=True)
            for stem in stems:
                image = rng.integers(0, 256, (CH, CW, 3), dtype=np.uint8)
                PIL.Image.fromarray(image).save(tmp_path / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png")
                gt = tmp_path / "gtFine" / split / city
                PIL.Image.fromarray(_every_label_id(k)).save(gt / f"{stem}_gtFine_labelIds.png")
                PIL.Image.fromarray(np.zeros((CH, CW, 3), np.uint8)).save(gt / f"{stem}_gtFine_color.png")
                k += 1
    gt = tmp_path / "gtFine" / "train" / "bochum"
    PIL.Image.fromarray(_train_id_map()).save(gt / "bochum_000000_000600_gtFine_labelTrainIds.png")
    (tmp_path / "leftImg8bit" / "train" / "aachen" / "notes.txt").write_text("not an image")
    return tmp_path


def _cs_mask(root: Path, split: str, stem: str, kind: str = "labelIds") -> Path:
    return root / "gtFine" / split / stem.split("_")[0] / f"{stem}_gtFine_{kind}.png"


def _cs_image(root: Path, split: str, stem: str) -> Path:
    return root / "leftImg8bit" / split / stem.split("_")[0] / f"{stem}_leftImg8bit.png"


def _assert_one_line_naming(exc: pytest.ExceptionInfo, path: Path, layout: str) -> None:
    text = str(exc.value)
    assert str(path) in text, text
    assert re.search(layout, text), text
    assert "\n" not in text


# ----------------------------------------------------------------------------------------------- Cityscapes loading


def test_cityscapes_lists_train_split_sorted_by_city_then_stem(cs_root):
    ds = CityscapesSegmentation(cs_root, "train")
    assert ds.ids == TRAIN_ORDER and len(ds) == 4
    assert ds.images == [_cs_image(cs_root, "train", s) for s in TRAIN_ORDER]
    assert ds.list_file == cs_root / "leftImg8bit" / "train"
    assert len(CityscapesSegmentation(cs_root, "val")) == 1


def test_cityscapes_has_the_nineteen_evaluation_classes():
    assert CityscapesSegmentation.num_classes == 19 == len(CITYSCAPES_CLASSES)
    assert CITYSCAPES_CLASSES[0] == "road" and CITYSCAPES_CLASSES[10] == "sky" and CITYSCAPES_CLASSES[18] == "bicycle"
    assert CityscapesSegmentation.ignore_index == 255


def test_cityscapes_sample_is_uint8_image_and_int64_mask(cs_root):
    image, mask = CityscapesSegmentation(cs_root, "val")[0]
    assert isinstance(image, tv_tensors.Image) and image.dtype == torch.uint8 and tuple(image.shape) == (3, CH, CW)
    assert isinstance(mask, tv_tensors.Mask) and mask.dtype == torch.int64 and tuple(mask.shape) == (CH, CW)
    expected = np.array(PIL.Image.open(_cs_image(cs_root, "val", "frankfurt_000000_000294")).convert("RGB"))
    np.testing.assert_array_equal(image.permute(1, 2, 0).numpy(), expected)


def test_cityscapes_label_ids_map_to_train_ids_as_the_official_table(cs_root):
    assert len(OFFICIAL_TRAIN_ID) == 34
    ds = CityscapesSegmentation(cs_root, "train")
    label_ids = np.array(PIL.Image.open(ds.masks[0]))  # aachen_000000_000019's labelIds PNG, as written
    assert ds.masks[0].name.endswith("_gtFine_labelIds.png")
    assert set(np.unique(label_ids).tolist()) == set(range(34)) | {255}
    _, mask = ds[0]
    mask = mask.numpy()
    for (y, x), label_id in np.ndenumerate(label_ids):
        expected = 255 if label_id == 255 else OFFICIAL_TRAIN_ID[label_id]
        assert mask[y, x] == expected, (y, x, label_id, mask[y, x])


def test_cityscapes_uses_label_train_ids_when_present(cs_root):
    ds = CityscapesSegmentation(cs_root, "train")
    i = ds.ids.index("bochum_000000_000600")
    assert ds.masks[i] == _cs_mask(cs_root, "train", "bochum_000000_000600", "labelTrainIds")
    assert ds.masks[0] == _cs_mask(cs_root, "train", TRAIN_ORDER[0], "labelIds")
    np.testing.assert_array_equal(ds[i][1].numpy(), _train_id_map().astype(np.int64))


@pytest.mark.parametrize("layout", ["root", "parent"])
def test_cityscapes_accepts_its_folder_or_a_parent_with_cityscapes(cs_root, tmp_path_factory, layout):
    if layout == "parent":
        parent = tmp_path_factory.mktemp("data")
        cs_root.rename(parent / "cityscapes")
        cs_root = parent
    assert CityscapesSegmentation(cs_root, "train").ids == TRAIN_ORDER


def test_cityscapes_unknown_split_raises_value_error_listing_splits(cs_root):
    with pytest.raises(ValueError, match="train, val, test"):
        CityscapesSegmentation(cs_root, "trainaug")


# ------------------------------------------------------------------------------------------------ Cityscapes errors


def test_cityscapes_missing_root_names_it_and_the_layout(tmp_path):
    with pytest.raises(DataError) as exc:
        CityscapesSegmentation(tmp_path / "nowhere", "train")
    _assert_one_line_naming(exc, tmp_path / "nowhere", CS_LAYOUT)
    with pytest.raises(DataError, match=CS_LAYOUT):
        CityscapesSegmentation(None, "train")


def test_cityscapes_root_without_leftimg8bit_and_gtfine_names_it_and_the_layout(tmp_path):
    (tmp_path / "leftImg8bit").mkdir()
    with pytest.raises(DataError, match="no leftImg8bit and gtFine") as exc:
        CityscapesSegmentation(tmp_path, "train")
    _assert_one_line_naming(exc, tmp_path, CS_LAYOUT)


@pytest.mark.parametrize("folder", ["leftImg8bit", "gtFine"])
def test_cityscapes_missing_split_folder_names_it_and_the_layout(cs_root, folder):
    for path in sorted((cs_root / folder / "val").rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    (cs_root / folder / "val").rmdir()
    with pytest.raises(DataError, match="folder of split 'val' not found") as exc:
        CityscapesSegmentation(cs_root, "val")
    _assert_one_line_naming(exc, cs_root / folder / "val", CS_LAYOUT)


def test_cityscapes_missing_label_file_names_it_its_image_and_the_layout(cs_root):
    stem = TRAIN_ORDER[1]
    _cs_mask(cs_root, "train", stem).unlink()
    with pytest.raises(DataError, match="label file of image") as exc:
        CityscapesSegmentation(cs_root, "train")
    _assert_one_line_naming(exc, _cs_mask(cs_root, "train", stem), CS_LAYOUT)
    assert str(_cs_image(cs_root, "train", stem)) in str(exc.value)


def test_cityscapes_city_without_label_folder_names_it_and_the_layout(cs_root):
    (cs_root / "leftImg8bit" / "train" / "dusseldorf").mkdir()
    PIL.Image.new("RGB", (CW, CH)).save(_cs_image(cs_root, "train", "dusseldorf_000000_000019"))
    with pytest.raises(DataError, match="label folder of city 'dusseldorf'") as exc:
        CityscapesSegmentation(cs_root, "train")
    _assert_one_line_naming(exc, cs_root / "gtFine" / "train" / "dusseldorf", CS_LAYOUT)


def test_cityscapes_empty_split_names_the_folder_and_the_layout(cs_root):
    (cs_root / "leftImg8bit" / "test" / "berlin").mkdir(parents=True)
    (cs_root / "gtFine" / "test").mkdir()
    with pytest.raises(DataError, match="has no") as exc:
        CityscapesSegmentation(cs_root, "test")
    _assert_one_line_naming(exc, cs_root / "leftImg8bit" / "test", CS_LAYOUT)


@pytest.mark.parametrize(("kind", "value"), [("labelIds", 34), ("labelIds", 200), ("labelTrainIds", 19)])
def test_cityscapes_bad_label_value_names_file_value_and_layout(cs_root, kind, value):
    stem = "bochum_000000_000600" if kind == "labelTrainIds" else "bochum_000000_000313"  # has / lacks trainIds
    labels = _train_id_map() if kind == "labelTrainIds" else _every_label_id(0)
    labels[3, 4] = value
    PIL.Image.fromarray(labels).save(_cs_mask(cs_root, "train", stem, kind))
    ds = CityscapesSegmentation(cs_root, "train")
    with pytest.raises(DataError, match=rf"_gtFine_{kind}\.png: label value {value} ") as exc:
        ds[ds.ids.index(stem)]
    _assert_one_line_naming(exc, _cs_mask(cs_root, "train", stem, kind), CS_LAYOUT)


def test_cityscapes_mask_size_mismatch_names_both_files_sizes_and_layout(cs_root):
    stem = "frankfurt_000000_000294"
    PIL.Image.fromarray(np.zeros((CH + 2, CW), np.uint8)).save(_cs_mask(cs_root, "val", stem))
    with pytest.raises(DataError, match=rf"mask size {CW}x{CH + 2} .*differs from image .*size {CW}x{CH}") as exc:
        CityscapesSegmentation(cs_root, "val")[0]
    _assert_one_line_naming(exc, _cs_mask(cs_root, "val", stem), CS_LAYOUT)
    assert str(_cs_image(cs_root, "val", stem)) in str(exc.value)


def test_cityscapes_colour_mask_is_rejected_as_not_single_channel(cs_root):
    stem = "frankfurt_000000_000294"
    PIL.Image.fromarray(np.zeros((CH, CW, 3), np.uint8)).save(_cs_mask(cs_root, "val", stem))
    with pytest.raises(DataError, match="mode 'RGB'.*single-channel") as exc:
        CityscapesSegmentation(cs_root, "val")[0]
    _assert_one_line_naming(exc, _cs_mask(cs_root, "val", stem), CS_LAYOUT)


@pytest.mark.parametrize("which", ["image", "mask"])
def test_cityscapes_corrupt_file_names_it_and_the_layout(cs_root, which):
    stem = "frankfurt_000000_000294"
    bad = _cs_image(cs_root, "val", stem) if which == "image" else _cs_mask(cs_root, "val", stem)
    bad.write_bytes(b"\x89PNG not really " * 10)
    with pytest.raises(DataError, match=f"cannot read {which}") as exc:
        CityscapesSegmentation(cs_root, "val")[0]
    _assert_one_line_naming(exc, bad, CS_LAYOUT)


# ---------------------------------------------------------------------------------------------------- ADE20K tree

AH, AW = 24, 40
ADE_IDS = {"training": ["ADE_train_00000003", "ADE_train_00000001", "ADE_train_00000002"],
           "validation": ["ADE_val_00000002", "ADE_val_00000003", "ADE_val_00000001"]}  # fmt: skip


def _ade_annotation(seed: int) -> np.ndarray:
    """(AH, AW) uint8 annotation holding every value 0..150 and 255, rolled by ``seed``."""
    values = np.array(list(range(151)) + [255], dtype=np.uint8)
    return np.roll(np.resize(values, AH * AW), seed).reshape(AH, AW)


@pytest.fixture
def ade_root(tmp_path: Path) -> Path:
    return write_ade_tree(tmp_path)


def write_ade_tree(tmp_path: Path) -> Path:
    """<tmp>/ADEChallengeData2016 with 3 images (40x24 JPEGs) + annotations per split."""
    ade = tmp_path / "ADEChallengeData2016"
    rng = np.random.default_rng(1)
    for k, (folder, ids) in enumerate(ADE_IDS.items()):
        (ade / "images" / folder).mkdir(parents=True)
        (ade / "annotations" / folder).mkdir(parents=True)
        for j, i in enumerate(ids):
            image = rng.integers(0, 256, (AH, AW, 3), dtype=np.uint8)
            PIL.Image.fromarray(image).save(ade / "images" / folder / f"{i}.jpg")
            PIL.Image.fromarray(_ade_annotation(3 * k + j)).save(ade / "annotations" / folder / f"{i}.png")
    return tmp_path


def _ade(root: Path, kind: str, folder: str, i: str) -> Path:
    return root / "ADEChallengeData2016" / kind / folder / f"{i}.{'jpg' if kind == 'images' else 'png'}"


# --------------------------------------------------------------------------------------------------- ADE20K loading


def test_ade20k_classes_are_mmsegs_150_in_order():
    assert len(ADE20K_CLASSES) == 150 == ADE20KSegmentation.num_classes and len(set(ADE20K_CLASSES)) == 150
    assert ADE20K_CLASSES[:7] == ("wall", "building", "sky", "floor", "tree", "ceiling", "road")
    assert ADE20K_CLASSES[-3:] == ("glass", "clock", "flag") and ADE20K_CLASSES[12] == "person"
    assert ADE20KSegmentation.ignore_index == 255


@pytest.mark.parametrize(("split", "folder"), [("train", "training"), ("val", "validation")])
def test_ade20k_lists_three_sorted_samples_per_split(ade_root, split, folder):
    ds = ADE20KSegmentation(ade_root, split)
    assert ds.ids == sorted(ADE_IDS[folder]) and len(ds) == 3
    assert ds.masks == [_ade(ade_root, "annotations", folder, i) for i in sorted(ADE_IDS[folder])]
    assert ds.list_file == ade_root / "ADEChallengeData2016" / "images" / folder


def test_ade20k_reduces_zero_label_pixel_by_pixel(ade_root):
    ds = ADE20KSegmentation(ade_root, "val")
    image, mask = ds[0]  # ADE_val_00000001: index 2 of the fixture's list, rolled by 3 * 1 + 2
    assert isinstance(image, tv_tensors.Image) and image.dtype == torch.uint8 and tuple(image.shape) == (3, AH, AW)
    assert isinstance(mask, tv_tensors.Mask) and mask.dtype == torch.int64 and tuple(mask.shape) == (AH, AW)
    raw = _ade_annotation(5)
    expected = np.where(raw == 0, 255, np.where(raw == 255, 255, raw.astype(np.int64) - 1))
    np.testing.assert_array_equal(mask.numpy(), expected)
    m = mask.numpy()
    assert set(m[raw == 0].tolist()) == {255} and set(m[raw == 1].tolist()) == {0}
    assert set(m[raw == 150].tolist()) == {149} and set(m[raw == 255].tolist()) == {255}


@pytest.mark.parametrize("form", ["parent", "ADEChallengeData2016"])
def test_ade20k_accepts_parent_or_the_challenge_folder(ade_root, form):
    root = ade_root if form == "parent" else ade_root / "ADEChallengeData2016"
    ds = ADE20KSegmentation(root, "train")
    assert ds.root == ade_root / "ADEChallengeData2016" and len(ds) == 3


def test_ade20k_unknown_split_raises_value_error_listing_splits(ade_root):
    with pytest.raises(ValueError, match="train, val"):
        ADE20KSegmentation(ade_root, "test")


# ---------------------------------------------------------------------------------------------------- ADE20K errors


def test_ade20k_missing_root_names_it_and_the_layout(tmp_path):
    with pytest.raises(DataError) as exc:
        ADE20KSegmentation(tmp_path / "nowhere", "train")
    _assert_one_line_naming(exc, tmp_path / "nowhere", ADE_LAYOUT)
    with pytest.raises(DataError) as exc:
        ADE20KSegmentation(tmp_path, "train")
    _assert_one_line_naming(exc, tmp_path, ADE_LAYOUT)


@pytest.mark.parametrize("kind", ["images", "annotations"])
def test_ade20k_missing_split_folder_names_it_and_the_layout(ade_root, kind):
    folder = ade_root / "ADEChallengeData2016" / kind / "validation"
    for path in folder.iterdir():
        path.unlink()
    folder.rmdir()
    with pytest.raises(DataError, match="folder of split 'val' not found") as exc:
        ADE20KSegmentation(ade_root, "val")
    _assert_one_line_naming(exc, folder, ADE_LAYOUT)


def test_ade20k_missing_annotation_names_it_its_image_and_the_layout(ade_root):
    missing = _ade(ade_root, "annotations", "training", "ADE_train_00000002")
    missing.unlink()
    with pytest.raises(DataError, match="annotation of image") as exc:
        ADE20KSegmentation(ade_root, "train")
    _assert_one_line_naming(exc, missing, ADE_LAYOUT)
    assert str(_ade(ade_root, "images", "training", "ADE_train_00000002")) in str(exc.value)


def test_ade20k_empty_split_names_the_folder_and_the_layout(ade_root):
    folder = ade_root / "ADEChallengeData2016" / "images" / "validation"
    for path in folder.iterdir():
        path.unlink()
    with pytest.raises(DataError, match="has no") as exc:
        ADE20KSegmentation(ade_root, "val")
    _assert_one_line_naming(exc, folder, ADE_LAYOUT)


@pytest.mark.parametrize("value", [151, 254])
def test_ade20k_label_value_above_150_names_file_value_and_layout(ade_root, value):
    path = _ade(ade_root, "annotations", "training", "ADE_train_00000001")
    labels = _ade_annotation(0)
    labels[2, 3] = value
    PIL.Image.fromarray(labels).save(path)
    with pytest.raises(DataError, match=rf"label value {value} is not an ADE20K annotation value") as exc:
        ADE20KSegmentation(ade_root, "train")[0]
    _assert_one_line_naming(exc, path, ADE_LAYOUT)


def test_ade20k_annotation_size_mismatch_names_both_files_sizes_and_layout(ade_root):
    path = _ade(ade_root, "annotations", "training", "ADE_train_00000001")
    PIL.Image.fromarray(np.ones((AH, AW + 1), np.uint8)).save(path)
    with pytest.raises(DataError, match=rf"annotation size {AW + 1}x{AH} .*differs from image .*size {AW}x{AH}") as exc:
        ADE20KSegmentation(ade_root, "train")[0]
    _assert_one_line_naming(exc, path, ADE_LAYOUT)
    assert str(_ade(ade_root, "images", "training", "ADE_train_00000001")) in str(exc.value)


def test_ade20k_corrupt_jpeg_names_it_and_the_layout(ade_root):
    bad = _ade(ade_root, "images", "training", "ADE_train_00000002")
    bad.write_bytes(b"\xff\xd8 this is not a jpeg " * 10)
    ds = ADE20KSegmentation(ade_root, "train")
    ds[0]  # the intact one still loads
    with pytest.raises(DataError, match="cannot read image") as exc:
        ds[1]
    _assert_one_line_naming(exc, bad, ADE_LAYOUT)


# ------------------------------------------------------------------------------------- make_dataset, presets, config


def test_registry_and_config_know_every_trainable_dataset():
    # the night sets are evaluation-only (--eval-domains); every dataset with a train split is a --dataset
    assert set(DATASETS) - set(DATASET_NAMES) == {"dark_zurich", "nighttime_driving"}
    assert set(DATASET_NAMES) <= set(DATASETS)
    with pytest.raises(ValueError, match=", ".join(sorted(DATASETS))):
        make_dataset("coco", "train")


@pytest.mark.parametrize("name", ["cityscapes", "ade20k"])
def test_make_dataset_without_root_raises_data_error_with_layout(name):
    with pytest.raises(DataError, match=CS_LAYOUT if name == "cityscapes" else ADE_LAYOUT):
        make_dataset(name, "train")


def test_make_dataset_cityscapes_crops_and_evaluates_at_size_by_twice_size_and_collates(cs_root):
    train = make_dataset("cityscapes", "train", root=cs_root, image_size=16)
    val = make_dataset("cityscapes", "val", root=cs_root, image_size=16)
    assert "RandomCrop" in repr(train.transforms) and "RandomCrop" not in repr(val.transforms)
    for ds in (train, val):
        image, mask = ds[0]
        assert image.dtype == torch.float32 and tuple(image.shape) == (3, 16, 32)
        assert mask.dtype == torch.int64 and tuple(mask.shape) == (16, 32)
        assert set(mask.unique().tolist()) <= set(range(19)) | {255}
    images, masks = default_collate([train[i] for i in range(len(train))])
    assert tuple(images.shape) == (4, 3, 16, 32) and tuple(masks.shape) == (4, 16, 32)


def test_make_dataset_cityscapes_default_is_mmsegs_512_by_1024_recipe(cs_root):
    train = make_dataset("cityscapes", "train", root=cs_root)
    steps = train.transforms.pipeline.transforms
    crop = next(t for t in steps if isinstance(t, v2.RandomCrop))
    rescale = next(t for t in steps if isinstance(t, RandomRescale))
    assert tuple(crop.size) == (512, 1024)
    assert rescale.base_size == (1024, 2048) and rescale.scale_range == (0.5, 2.0)
    assert any(isinstance(t, v2.RandomHorizontalFlip) for t in steps)
    assert any(isinstance(t, v2.RandomPhotometricDistort) for t in steps)
    image, mask = make_dataset("cityscapes", "val", root=cs_root)[0]
    assert tuple(image.shape) == (3, 512, 1024) and tuple(mask.shape) == (512, 1024)


def test_make_dataset_ade20k_crops_square_like_voc_and_collates(ade_root):
    train = make_dataset("ade20k", "train", root=ade_root, image_size=16)
    val = make_dataset("ade20k", "val", root=ade_root, image_size=16)
    steps = train.transforms.pipeline.transforms
    rescale = next(t for t in steps if isinstance(t, RandomRescale))
    assert rescale.base_size == (16, 64) and any(isinstance(t, v2.RandomPhotometricDistort) for t in steps)
    for ds in (train, val):
        image, mask = ds[0]
        assert image.dtype == torch.float32 and tuple(image.shape) == (3, 16, 16)
        assert mask.dtype == torch.int64 and tuple(mask.shape) == (16, 16)
        assert set(mask.unique().tolist()) <= set(range(150)) | {255}
    images, masks = default_collate([val[i] for i in range(len(val))])
    assert tuple(images.shape) == (3, 3, 16, 16) and masks.dtype == torch.int64


def _cfg(**kw):
    base = dict(dataset="voc", data_root=None, train_split="trainaug", val_split="val", crop_size=16, val_size=None,
                augment=True, seed=0, train_size=None)  # fmt: skip
    return SimpleNamespace(**{**base, **kw})


@pytest.mark.parametrize(("name", "count", "classes"), [("cityscapes", 4, 19), ("ade20k", 3, 150)])
def test_build_datasets_maps_default_trainaug_split_to_train(cs_root, ade_root, name, count, classes):
    root = cs_root if name == "cityscapes" else ade_root
    train, val, k, names = build_datasets(_cfg(dataset=name, data_root=str(root), val_size=1))
    assert train.split == "train" and len(train) == count and len(val) == 1
    assert k == classes and names == train.class_names
    assert "RandomCrop" in repr(train.transforms) and "RandomCrop" not in repr(val.dataset.transforms)


def test_build_datasets_no_augment_gives_train_split_the_eval_transforms(ade_root):
    train, _, _, _ = build_datasets(_cfg(dataset="ade20k", data_root=str(ade_root), train_split="train", augment=False))
    assert "RandomCrop" not in repr(train.transforms) and tuple(train[0][0].shape) == (3, 16, 16)


# ------------------------------------------------------------------------------- the main job on the tiny trees
def _main_job():
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_voc_bandit", Path(ROOT) / "examples" / "train_voc_bandit.py")
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    return job


TINY_RUN = ["--crop-size", "32", "--batch-size", "2", "--max-iters", "2", "--eval-every", "2", "--save-every", "2",
            "--num-workers", "0", "--device", "cpu", "--num-overlays", "1", "--no-pretrained-backbone",
            "--policy-hidden", "16", "--attn-dim", "32"]  # fmt: skip


def test_the_main_job_trains_a_tiny_segformer_with_the_cityscapes_recipe_on_a_cityscapes_tree(cs_root, tmp_path):
    result = _main_job().main(["--preset", "cityscapes-segformer-b1", "--model", "segformer_mit_b0",
                               "--data-root", str(cs_root), "--out", str(tmp_path / "run"), *TINY_RUN])  # fmt: skip
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["dataset"] == "cityscapes" and saved["head_lr_mult"] == 10.0
    assert 0.0 <= result["miou"] <= 1.0 and len(result["per_class_iou"]) == 19


def test_the_main_job_trains_a_tiny_setr_with_the_ade20k_recipe_on_an_ade20k_tree(ade_root, tmp_path):
    result = _main_job().main(["--preset", "ade20k-setr-vit-l", "--model", "setr_naive_vit_tiny",
                               "--data-root", str(ade_root), "--out", str(tmp_path / "run"), *TINY_RUN])  # fmt: skip
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["dataset"] == "ade20k" and saved["backbone_lr_mult"] == 0.1
    assert 0.0 <= result["miou"] <= 1.0 and len(result["per_class_iou"]) == 150


def test_ade20k_without_reduce_zero_label_keeps_background_for_plops_tasks(ade_root):
    ds = ADE20KSegmentation(ade_root, "val", reduce_zero_label=False)
    raw = np.array(PIL.Image.open(ds.masks[0]))
    assert ds.num_classes == 151 and ds.class_names[0] == "background"
    assert np.array_equal(ds[0][1].numpy(), raw.astype(np.int64))  # 0 stays background, k stays k
    assert np.array_equal(ds.raw_mask(0), raw.astype(np.int64))
    assert ADE20KSegmentation(ade_root, "val").num_classes == 150  # mmseg's layout is the default
