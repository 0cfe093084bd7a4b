"""MONAI preprocessing per modality and the no-pickle, content-keyed cache."""

from __future__ import annotations

import json
import shutil
import struct

import pytest
import torch
from helpers.pipeline import cohort_config
from monai.data import DataLoader, MetaTensor

from pipelines.data.dataset import IMAGE, LABEL, build_dataset, preprocess_digest
from pipelines.data.manifest import read_manifest
from pipelines.stages.ingest import run_ingest


@pytest.fixture(scope="module")
def xray(xray_cohort, tmp_path_factory):
    config = cohort_config(xray_cohort, "xray", tmp_path_factory.mktemp("data_xray"))
    return config, read_manifest(run_ingest(config).manifest_path)


@pytest.fixture(scope="module")
def mri(mri_cohort, tmp_path_factory):
    config = cohort_config(mri_cohort, "mri", tmp_path_factory.mktemp("data_mri"))
    return config, read_manifest(run_ingest(config).manifest_path)


def test_xray_items_are_square_unit_range_tensors(xray):
    config, manifest = xray
    item = build_dataset(manifest, config, train=False, cache=False)[0]
    image = item[IMAGE]
    assert isinstance(image, MetaTensor) and image.shape == (1, 32, 32) and image.dtype == torch.float32
    assert float(image.min()) >= 0.0 and float(image.max()) <= 1.0 and float(image.std()) > 0.05
    assert item[LABEL] in (0.0, 1.0)


def test_mri_items_are_ras_resampled_zscored_volumes(mri):
    config, manifest = mri
    image = build_dataset(manifest, config, train=False, cache=False)[0][IMAGE]
    assert image.shape == (1, 16, 16, 16)
    foreground = image[image != 0]
    assert abs(float(foreground.mean())) < 0.2 and 0.7 < float(foreground.std()) < 1.3
    spacing = torch.linalg.norm(torch.as_tensor(image.affine)[:3, :3], dim=0)
    torch.testing.assert_close(spacing, torch.full((3,), 4.0, dtype=spacing.dtype))
    assert torch.as_tensor(image.affine)[0, 0] > 0  # RAS: the first axis runs towards patient right


def test_cache_hit_equals_uncached_and_is_safetensors(xray):
    config, manifest = xray
    uncached = build_dataset(manifest, config, train=False, cache=False)
    cached = build_dataset(manifest, config, train=False, cache=True)
    first = cached[3][IMAGE]
    path = cached.cache_path(cached.items[3])
    assert path.is_file() and path.suffix == ".safetensors"
    header_len = struct.unpack("<Q", path.read_bytes()[:8])[0]
    header = json.loads(path.read_bytes()[8:8 + header_len])  # safetensors: a JSON header, no pickle
    assert set(header) >= {"image", "affine", "__metadata__"}
    again = build_dataset(manifest, config, train=False, cache=True)[3][IMAGE]
    torch.testing.assert_close(again.as_tensor(), first.as_tensor())
    torch.testing.assert_close(again.as_tensor(), uncached[3][IMAGE].as_tensor())
    torch.testing.assert_close(torch.as_tensor(again.affine), torch.as_tensor(first.affine))


def test_cache_key_follows_file_content_and_config(xray, tmp_path):
    config, manifest = xray
    dataset = build_dataset(manifest, config, train=False)
    key = dataset.cache_path(dataset.items[0])
    other = config.model_copy(deep=True)
    other.preprocess.xray.img_size = 48
    assert preprocess_digest(other) != preprocess_digest(config)
    assert build_dataset(manifest, other, train=False).cache_path(dataset.items[0]) != key
    copy = tmp_path / "copy.dcm"
    shutil.copy(dataset.items[0][IMAGE], copy)
    moved = dict(dataset.items[0], image=str(copy))
    assert dataset.cache_path(moved) == key  # same bytes elsewhere: same entry
    with open(copy, "r+b") as handle:  # change one byte of pixel data
        handle.seek(-10, 2)
        byte = handle.read(1)
        handle.seek(-10, 2)
        handle.write(bytes([byte[0] ^ 0xFF]))
    assert dataset.cache_path(moved) != key


def test_training_items_are_augmented_and_eval_items_are_not(xray):
    config, manifest = xray
    train = build_dataset(manifest, config.model_copy(update={}), train=True)
    plain = build_dataset(manifest, config, train=False)
    torch.manual_seed(0)
    train.random.set_random_state(seed=1)
    differs = [not torch.equal(train[i][IMAGE].as_tensor(), plain[i][IMAGE].as_tensor()) for i in range(6)]
    assert any(differs)
    assert torch.equal(plain[0][IMAGE].as_tensor(), plain[0][IMAGE].as_tensor())


def test_batches_through_a_dataloader_with_workers(mri):
    config, manifest = mri
    loader = DataLoader(build_dataset(manifest, config, train=True), batch_size=2, num_workers=2)
    batch = next(iter(loader))
    assert batch[IMAGE].shape == (2, 1, 16, 16, 16) and batch[LABEL].shape == (2,)
