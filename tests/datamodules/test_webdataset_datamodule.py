import json

import pytest
import torch

from prismrl.data.batches import ImageTextBatch
from prismrl.datamodules.webdataset import WebDataModule, expand_shards
from prismrl.data.loaders import LoaderSettings


def shard_samples(writers, num_shards, per_shard, modes=("RGB",)):
    return [
        [writers.make_sample(f"s{s}-{i}", label=(s + i) % 3, mode=modes[i % len(modes)], seed=s * 100 + i)
         for i in range(per_shard)]
        for s in range(num_shards)
    ]


@pytest.fixture
def shards(tmp_path, writers):
    return writers.write_shards(tmp_path, shard_samples(writers, 8, 10, modes=("RGB", "L", "RGBA", "P")))


def module(pattern, num_workers=0, **kwargs):
    options = dict(loader=LoaderSettings(batch_size=4, num_workers=num_workers), image_size=8, samples_per_epoch=40,
                   shuffle_buffer=16, class_names=["a", "b", "c"])
    options.update(kwargs)
    return WebDataModule(train_shards=pattern, **options)


def keys(loader):
    return [k for batch in loader for k in batch.sample_ids]


def test_batches_have_the_right_shapes_and_types(shards, tmp_path, writers):
    val = writers.write_shards(tmp_path, shard_samples(writers, 2, 5), prefix="val")
    dm = module(shards, val_shards=val)
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert len(loader) == 10
    batches = list(loader)
    assert len(batches) == 10
    for batch in batches:
        assert isinstance(batch, ImageTextBatch)
        assert batch.pixel_values.shape == (4, 3, 8, 8) and batch.pixel_values.dtype == torch.float32
        assert batch.labels.dtype == torch.long
        for key, caption, label in zip(batch.sample_ids, batch.captions, batch.labels.tolist()):
            shard, index = (int(x) for x in key[1:].split("-"))
            assert caption == f"caption of {key}" and label == (shard + index) % 3
    assert sorted(keys(dm.val_dataloader())) == sorted(f"s{s}-{i}" for s in range(2) for i in range(5))


def test_json_caption_and_no_label(shards):
    dm = module(shards, caption_key="json:caption", label_key=None)
    batch = next(iter(dm.train_dataloader()))
    assert batch.captions[0] == f"json caption of {batch.sample_ids[0]}"
    assert batch.labels.tolist() == [-1] * 4


def test_pattern_matching_nothing(tmp_path, shards):
    pattern = str(tmp_path / "nothing-{000000..000003}.tar")
    with pytest.raises(FileNotFoundError, match=r"train_shards: pattern .*nothing-\{000000\.\.000003\}\.tar.* matched no files"):
        module(pattern).setup("fit")
    with pytest.raises(FileNotFoundError, match="val_shards: pattern"):
        module(shards, val_shards=pattern).setup("fit")
    with pytest.raises(FileNotFoundError, match="train_shards: 2 of 10 shards"):
        expand_shards(str(tmp_path / "train-{000000..000009}.tar"), "train_shards")


def test_missing_keys_name_the_sample(tmp_path, writers):
    samples = shard_samples(writers, 1, 4)
    del samples[0][2]["txt"]
    pattern = writers.write_shards(tmp_path, samples)
    with pytest.raises(ValueError, match=r"sample 's0-2' .*caption_key 'txt' is missing; keys present: \['json', 'png'\]"):
        list(module(pattern, shuffle_buffer=0, samples_per_epoch=4).train_dataloader())
    with pytest.raises(ValueError, match=r"sample 's0-0' .*no image under image_keys \['jpg'\]; keys present: \['json', 'png', 'txt'\]"):
        list(module(pattern, image_keys="jpg", shuffle_buffer=0, samples_per_epoch=4).train_dataloader())


def test_undecodable_image_and_bad_label(tmp_path, writers):
    samples = shard_samples(writers, 1, 4)
    samples[0][1]["png"] = b"garbage"
    samples[0][3]["json"] = json.dumps({"label": 7})
    pattern = writers.write_shards(tmp_path, samples)
    with pytest.raises(ValueError, match=r"sample 's0-1' key 'png': could not decode"):
        list(module(pattern, shuffle_buffer=0, samples_per_epoch=4).train_dataloader())
    samples[0][1]["png"] = writers.image_bytes("RGB")
    pattern = writers.write_shards(tmp_path, samples)
    with pytest.raises(ValueError, match=r"sample 's0-3': label 7 is outside \[0, 3\)"):
        list(module(pattern, shuffle_buffer=0, samples_per_epoch=4).train_dataloader())


def test_training_needs_a_fixed_epoch_length(shards):
    with pytest.raises(ValueError, match="samples_per_epoch: required for training"):
        module(shards, samples_per_epoch=None).train_dataloader()
    with pytest.raises(ValueError, match="loader.batch_size: 4 x world_size 2 exceeds samples_per_epoch 6"):
        module(shards, samples_per_epoch=6).make_train_loader(0, 2)


def shard_of(key):
    return int(key[1:].split("-")[0])


def test_each_shard_is_read_by_exactly_one_rank_and_worker(shards, monkeypatch):
    """Simulated ranks (explicit) x workers (webdataset reads WORKER / NUM_WORKERS from the env)."""
    readers = {}
    for rank in range(2):
        for worker in range(2):
            monkeypatch.setenv("WORKER", str(worker))
            monkeypatch.setenv("NUM_WORKERS", "2")
            dm = module(shards, val_shards=shards)
            val_keys = keys(dm.make_val_loader(rank, 2))
            train_keys = keys(dm.make_train_loader(rank, 2))  # 40 // (2 x 4) = 5 batches: 2 shards x 10 samples
            assert len(val_keys) == len(set(val_keys)) == 20
            assert sorted(train_keys) == sorted(val_keys)
            readers[(rank, worker)] = {shard_of(k) for k in val_keys}
    monkeypatch.delenv("WORKER")
    monkeypatch.delenv("NUM_WORKERS")
    assert sorted(s for shards_read in readers.values() for s in shards_read) == list(range(8))


def test_ranks_with_real_workers_run_equal_epochs_on_disjoint_shards(shards):
    per_rank = []
    for rank in range(2):
        dm = module(shards, num_workers=2, samples_per_epoch=80)
        loader = dm.make_train_loader(rank, 2)
        assert len(loader) == 10  # 80 // (2 ranks x 4)
        seen = keys(loader)
        assert len(seen) == 40 and len(set(seen)) == 40  # exactly one pass over this rank's 4 shards
        per_rank.append({shard_of(k) for k in seen})
    assert per_rank[0] == {0, 2, 4, 6} and per_rank[1] == {1, 3, 5, 7}


@pytest.mark.parametrize("num_workers", [0, 2])
def test_epochs_reshuffle_the_same_samples(shards, num_workers):
    loader = module(shards, samples_per_epoch=80, num_workers=num_workers).make_train_loader(0, 1)
    first, second = keys(loader), keys(loader)
    assert len(first) == 80 and sorted(first) == sorted(second) and first != second
    again = keys(module(shards, samples_per_epoch=80, num_workers=num_workers).make_train_loader(0, 1))
    assert again == first  # deterministic for a seed
    epoch = {"value": 1}
    pinned = module(shards, samples_per_epoch=80, num_workers=num_workers).make_train_loader(0, 1, lambda: epoch["value"])
    assert keys(pinned) == second and keys(pinned) == second  # the epoch comes from epoch_fn (the trainer)


@pytest.mark.parametrize("num_workers,stop_after", [(0, 7), (2, 7), (2, 10), (3, 13)])
def test_mid_epoch_resume_is_exact(shards, num_workers, stop_after):
    """Stop an epoch after k batches, hand the loader's state to a fresh loader (a new process would build one): it
    yields exactly the batches the uninterrupted run yields from k on, then the next epochs as usual."""
    epoch = {"value": 0}

    def loader():
        return module(shards, samples_per_epoch=80, num_workers=num_workers, shuffle_buffer=8).make_train_loader(
            0, 1, lambda: epoch["value"])

    whole = [keys(loader()) for epoch["value"] in (0, 1)]
    epoch["value"] = 0
    interrupted = loader()
    batches = iter(interrupted)
    seen = [k for _, batch in zip(range(stop_after), batches) for k in batch.sample_ids]
    state = interrupted.state_dict()
    assert state == {"epoch": 0, "batches_done": stop_after}
    del batches
    resumed = loader()
    resumed.load_state_dict(state)
    rest = keys(resumed)
    assert seen + rest == whole[0]  # no sample repeated or skipped
    epoch["value"] = 1
    assert keys(resumed) == whole[1]


def test_a_finished_epoch_resumes_at_the_next_one(shards):
    loader = module(shards, samples_per_epoch=80).make_train_loader(0, 1)
    loader.load_state_dict({"epoch": 0, "batches_done": 20})
    assert loader._resume == (1, 0)
    with pytest.raises(ValueError, match="EpochLoader state: expected keys epoch, batches_done"):
        loader.load_state_dict({"epoch": 0})
