import json

import numpy as np
import pytest
import torch

from mlcdf.data.dataset import (
    Augment,
    CachedSource,
    EpochSampler,
    FileSource,
    MultiLabelImages,
    RowSource,
    build_image_cache,
    cache_path,
    collate_batch,
    holdout_rows,
    to_model_input,
)
from mlcdf.data.images import load_rgb
from mlcdf.data.prepared import load_prepared
from mlcdf.data.seqdeepfake import PrepareConfig, prepare


@pytest.fixture
def prepared(release, tmp_path):
    prepare(PrepareConfig(root=release, out=tmp_path / "prepared", subsets=("facial_components",)))
    return load_prepared(tmp_path / "prepared" / "facial_components")


def test_cache_matches_decoding_and_is_reused(prepared):
    table = prepared.read_split("train")
    path = build_image_cache(prepared, "train", 8, table=table, workers=2)
    assert path == cache_path(prepared, "train", 8)
    cached = np.load(path, allow_pickle=False)
    assert cached.shape == (6, 8, 8, 3) and cached.dtype == np.uint8
    for row, file_path in enumerate(table.file_paths):
        np.testing.assert_array_equal(cached[row], load_rgb(prepared.image_path(file_path), 8))
    stamp = path.stat().st_mtime_ns
    assert build_image_cache(prepared, "train", 8, table=table) == path
    assert path.stat().st_mtime_ns == stamp
    # a different file list invalidates the cache
    build_image_cache(prepared, "train", 8, table=table.subset(np.arange(3)))
    assert json.loads(path.with_suffix(".json").read_text())["rows"] == 3


def test_cached_and_file_sources_agree(prepared):
    table = prepared.read_split("val")
    cached = CachedSource(build_image_cache(prepared, "val", 12, table=table))
    files = FileSource([prepared.image_path(p) for p in table.file_paths], 12)
    order = [4, 0, 5, 2]
    np.testing.assert_array_equal(cached.read(order), files.read(order))
    rows = RowSource(cached, np.array([5, 1]))
    np.testing.assert_array_equal(rows.read([1, 0]), files.read([1, 5]))


def test_sampler_shards_partition_the_single_process_order():
    single = list(EpochSampler(10, shuffle=True, seed=3))
    ranks = [list(EpochSampler(10, shuffle=True, seed=3, rank=r, world_size=2)) for r in range(2)]
    assert sorted(ranks[0] + ranks[1]) == sorted(single)
    assert [i for _, i in ranks[0]] == [i for _, i in single][0::2]
    # evaluation never pads: 7 items over 2 ranks give 4 + 3, each once
    evals = [list(EpochSampler(7, shuffle=False, rank=r, world_size=2, pad=False)) for r in range(2)]
    assert sorted(i for part in evals for _, i in part) == list(range(7))
    # training pads to equal shard sizes
    assert len(EpochSampler(7, shuffle=True, rank=1, world_size=2)) == 4
    sampler = EpochSampler(10, shuffle=True, seed=3)
    sampler.set_epoch(1)
    assert [i for _, i in sampler] != [i for _, i in single]


def test_augmentation_depends_only_on_seed_epoch_and_index():
    images = FakeSource(6)
    dataset = MultiLabelImages(images, np.zeros((6, 5)), augment=Augment(brightness=(0.8, 1.2)), seed=1)
    batch = dataset.__getitems__([(0, 1), (0, 4)])
    again = dataset.__getitems__([(0, 4)])
    assert float(batch["brightness"][1]) == float(again["brightness"][0])
    other_epoch = dataset.__getitems__([(1, 4)])
    assert float(other_epoch["brightness"][0]) != float(again["brightness"][0])
    assert ((batch["brightness"] >= 0.8) & (batch["brightness"] <= 1.2)).all()
    plain = MultiLabelImages(images, np.zeros((6, 5))).__getitems__([(0, 1)])
    assert not plain["flip"].any() and float(plain["contrast"][0]) == 1.0


class FakeSource:
    def __init__(self, n):
        self.images = np.random.default_rng(0).integers(0, 256, (n, 4, 4, 3), dtype=np.uint8)

    def __len__(self):
        return len(self.images)

    def read(self, indices):
        return self.images[indices]


def test_to_model_input_normalises_and_flips():
    source = FakeSource(2)
    dataset = MultiLabelImages(source, np.zeros((2, 5)))
    batch = collate_batch(dataset.__getitems__([(0, 0), (0, 1)]))
    x = to_model_input(batch, torch.device("cpu"), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), channels_last=True)
    assert x.shape == (2, 3, 4, 4) and x.is_contiguous(memory_format=torch.channels_last)
    expected = (torch.from_numpy(source.images).permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.25
    torch.testing.assert_close(x, expected)
    batch["flip"] = torch.tensor([True, False])
    flipped = to_model_input(batch, torch.device("cpu"), (0.5,) * 3, (0.25,) * 3)
    torch.testing.assert_close(flipped[0], expected[0].flip(2))
    torch.testing.assert_close(flipped[1], expected[1])


def test_holdout_rows_deterministic_and_disjoint():
    kept, held = holdout_rows(20, 0.1, seed=0)
    assert len(held) == 2 and len(kept) == 18 and not set(kept) & set(held)
    np.testing.assert_array_equal(held, holdout_rows(20, 0.1, seed=0)[1])


@pytest.mark.parametrize("pad", [True, False])
def test_sampler_length_is_what_it_yields(pad):
    for size in range(0, 12):
        for world_size in range(1, 5):
            for rank in range(world_size):
                sampler = EpochSampler(size, shuffle=True, rank=rank, world_size=world_size, pad=pad)
                assert len(sampler) == len(list(sampler)), (size, world_size, rank)
