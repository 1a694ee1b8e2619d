import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from sklearn.datasets import load_digits
from torch.utils.data import Dataset, DistributedSampler

from prismrl.data.loaders import LoaderSettings, ResumableDataLoader, ResumableSampler, block_shuffle


class CountingDataset(Dataset):
    """Digits features with their row index; counts reads."""

    def __init__(self, n: int = 200) -> None:
        digits = load_digits()
        self.x = torch.tensor(digits.data[:n], dtype=torch.float32) / 16.0  # [N, 64]
        self.y = torch.tensor(digits.target[:n], dtype=torch.long)  # [N]
        self.reads = 0

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        self.reads += 1
        return i, self.x[i], self.y[i]


def batches(loader):
    return [b[0].tolist() for b in loader]


def test_order_is_a_function_of_seed_and_epoch_and_matches_distributed_sampler():
    data = range(50)
    sampler = ResumableSampler(data, seed=3)
    sampler.set_epoch(2)
    reference = DistributedSampler(data, num_replicas=1, rank=0, shuffle=True, seed=3)
    reference.set_epoch(2)
    assert list(sampler) == list(reference)
    again = ResumableSampler(data, seed=3)
    again.set_epoch(2)
    assert list(again) == list(sampler)
    again.set_epoch(3)
    assert list(again) != list(sampler) and sorted(again) == list(range(50))
    assert list(ResumableSampler(data, shuffle=False)) == list(range(50))


@pytest.mark.parametrize("drop_last, per_rank", [(True, 16), (False, 17)])
def test_ranks_partition_the_epoch(drop_last, per_rank):
    shards = []
    for rank in range(3):
        sampler = ResumableSampler(range(50), num_replicas=3, rank=rank, seed=1, drop_last=drop_last)
        sampler.set_epoch(4)
        shards.append(list(sampler))
    assert all(len(s) == per_rank for s in shards)
    flat = [i for s in shards for i in s]
    if drop_last:
        assert len(set(flat)) == 48
    else:
        assert set(flat) == set(range(50)) and len(flat) == 51  # one index wraps around


def test_block_shuffle_reads_each_block_once_with_a_window_sized_cache():
    sizes, window = [4, 4, 5, 4, 3, 4, 4], 3
    order = block_shuffle(sizes, window, torch.Generator().manual_seed(0)).tolist()
    assert sorted(order) == list(range(sum(sizes)))
    starts = torch.cumsum(torch.tensor(sizes), 0).tolist()
    blocks = [sum(p >= s for s in starts) for p in order]
    cache, misses = [], 0
    for b in blocks:  # LRU cache holding `window` blocks
        if b in cache:
            cache.remove(b)
        else:
            misses += 1
        cache = (cache + [b])[-window:]
    assert misses == len(sizes)
    assert order != sorted(order)
    other = block_shuffle(sizes, window, torch.Generator().manual_seed(1)).tolist()
    assert other != order


def test_mid_epoch_resume_skips_at_the_sampler_level():
    full_loader = ResumableDataLoader(CountingDataset(40), 4, seed=1)
    full_loader.set_epoch(1)
    full = batches(full_loader)
    assert len(full) == 10
    first = ResumableDataLoader(CountingDataset(40), 4, seed=1)
    first.set_epoch(1)
    iterator = iter(first)
    head = [next(iterator)[0].tolist() for _ in range(3)]
    state = first.state_dict()
    assert state == {"epoch": 1, "batches_done": 3}
    dataset = CountingDataset(40)
    resumed = ResumableDataLoader(dataset, 4, seed=1)
    resumed.load_state_dict(state)
    tail = batches(resumed)
    assert head + tail == full
    assert dataset.reads == 7 * 4  # skipped samples were never read
    assert resumed.state_dict() == {"epoch": 1, "batches_done": 10}
    resumed.set_epoch(2)
    assert len(batches(resumed)) == 10  # the next epoch starts from its first batch


def test_state_applies_only_to_its_epoch():
    loader = ResumableDataLoader(CountingDataset(40), 4, seed=1)
    loader.set_epoch(2)
    epoch2 = batches(loader)
    loader.load_state_dict({"epoch": 1, "batches_done": 3})
    loader.set_epoch(2)  # Lightning moved on: the skip does not apply
    assert batches(loader) == epoch2
    loader.load_state_dict({"epoch": 1, "batches_done": 10})  # a finished epoch: resume at epoch 2
    assert loader.sampler.epoch == 2 and batches(loader) == epoch2
    with pytest.raises(ValueError, match="missing key 'batches_done'"):
        loader.load_state_dict({"epoch": 1})


def test_iterator_with_workers_is_created_after_set_epoch():
    loader = ResumableDataLoader(CountingDataset(40), 4, seed=1, num_workers=2)
    iterator = iter(loader)  # Lightning creates the iterator before calling set_epoch on resume
    loader.set_epoch(5)
    reference = ResumableSampler(range(40), seed=1)
    reference.set_epoch(5)
    got = [i for b in iterator for i in b[0].tolist()]
    assert got == list(reference)


class Recorder(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(64, 10)
        self.seen: list[list[int]] = []

    def training_step(self, batch, batch_idx):
        index, x, y = batch
        self.seen.append(index.tolist())
        return torch.nn.functional.cross_entropy(self.linear(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)


def fit(max_steps, root, num_workers=0, callbacks=(), ckpt_path=None, dataset=None):
    torch.manual_seed(0)
    model = Recorder()
    loader = ResumableDataLoader(dataset or CountingDataset(), 16, seed=7, num_workers=num_workers)
    trainer = L.Trainer(max_steps=max_steps, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=bool(callbacks), callbacks=list(callbacks),
                        default_root_dir=root)
    trainer.fit(model, loader, ckpt_path=ckpt_path)
    return model


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    return fit(30, tmp_path_factory.mktemp("full"))  # 12 batches per epoch: 2.5 epochs


@pytest.mark.parametrize("stop_step, num_workers", [(17, 0), (12, 0), (17, 2)])
def test_lightning_resume_reproduces_the_uninterrupted_run(uninterrupted, tmp_path, stop_step, num_workers):
    checkpoint = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=stop_step, save_top_k=-1)
    crashed = fit(stop_step + 3, tmp_path, num_workers, callbacks=[checkpoint])  # runs past the checkpoint
    (path,) = [p for p in tmp_path.glob("*.ckpt") if f"step={stop_step}" in p.name]
    dataset = CountingDataset()
    resumed = fit(30, tmp_path, num_workers, ckpt_path=str(path), dataset=dataset)
    assert crashed.seen[:stop_step] + resumed.seen == uninterrupted.seen
    if num_workers == 0:
        assert dataset.reads == (30 - stop_step) * 16  # consumed batches were skipped, not read
    for a, b in zip(resumed.parameters(), uninterrupted.parameters()):
        torch.testing.assert_close(a, b)


def test_lightning_can_swap_in_its_own_sampler_for_overfit_batches(tmp_path):
    torch.manual_seed(0)
    model = Recorder()
    trainer = L.Trainer(max_steps=4, overfit_batches=2, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False, default_root_dir=tmp_path)
    trainer.fit(model, ResumableDataLoader(CountingDataset(), 16, seed=7))
    first, second = list(range(16)), list(range(16, 32))
    assert model.seen == [first, second, first, second]
    assert trainer.train_dataloader.state_dict()["batches_done"] == 2


def test_loader_settings_validate_and_default_the_eval_batch_size(tmp_path):
    assert LoaderSettings(batch_size=8).eval_batch_size == 8
    settings = LoaderSettings(batch_size=8, val_batch_size=3, num_workers=2, pin_memory=True)
    assert settings.eval_batch_size == 3 and settings.worker_kwargs() == {"num_workers": 2, "pin_memory": True}
    for kwargs, message in (({"batch_size": 0}, "loader.batch_size: expected an int >= 1, received 0"),
                            ({"val_batch_size": 2.5}, "loader.val_batch_size: expected an int >= 1, received 2.5"),
                            ({"num_workers": -1}, "loader.num_workers: expected an int >= 0, received -1"),
                            ({"pin_memory": "yes"}, "loader.pin_memory: expected a bool, received 'yes'")):
        with pytest.raises(ValueError, match=message):
            LoaderSettings(**kwargs)
    torch.save({"loader": settings}, tmp_path / "hparams.pt")  # as in a checkpoint of a DataModule built in Python
    assert torch.load(tmp_path / "hparams.pt", weights_only=True)["loader"] == settings
