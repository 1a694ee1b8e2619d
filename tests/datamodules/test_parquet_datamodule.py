import numpy as np
import pytest
import torch

from prismrl.data.batches import ImageTextBatch
from prismrl.data.loaders import LoaderSettings
from prismrl.datamodules.parquet import ParquetDataModule, ParquetRowGroupDataset

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def module(path, batch_size=4, **kwargs):
    options = dict(loader=LoaderSettings(batch_size=batch_size), image_size=12, val_fraction=0.25, seed=0)
    options.update(kwargs)
    return ParquetDataModule(train_path=str(path), **options)


def unnormalize(pixels: torch.Tensor) -> torch.Tensor:
    return pixels * torch.tensor(STD).view(3, 1, 1) + torch.tensor(MEAN).view(3, 1, 1)  # [3, H, W] in [0, 1]


def test_batches_have_the_right_shapes_and_types(parquet_file, writers):
    dm = module(parquet_file)
    dm.setup("fit")
    assert len(dm.train_dataset) == 30 and len(dm.val_dataset) == 10
    train = list(dm.train_dataloader())
    assert len(train) == 7  # 30 // 4 with drop_last
    for batch in train:
        assert isinstance(batch, ImageTextBatch)
        assert batch.pixel_values.shape == (4, 3, 12, 12) and batch.pixel_values.dtype == torch.float32
        assert batch.labels.dtype == torch.long and batch.labels.shape == (4,)
        assert len(batch.captions) == 4 and all(isinstance(c, str) for c in batch.captions)
    train_ids = [i for b in train for i in b.sample_ids]
    val = list(dm.val_dataloader())
    val_ids = [i for b in val for i in b.sample_ids]
    assert len(set(train_ids)) == 28 and len(val_ids) == 10  # the val loader keeps the last partial batch
    assert not set(train_ids) & set(val_ids)
    for batch in train:  # label i % 3 of row i
        rows = [int(s.split(":")[1]) for s in batch.sample_ids]
        assert batch.labels.tolist() == [r % 3 for r in rows]
        assert batch.captions == [f"picture {r} in mode {writers.modes[r % 7]}" for r in rows]


def test_every_image_mode_becomes_rgb(parquet_file):
    dm = module(parquet_file, val_path=str(parquet_file), image_size=7)
    dm.setup("fit")
    by_mode = {}
    for i in range(7):
        sample = dm.train_dataset[i]
        assert sample.pixel_values.shape == (3, 7, 7)
        by_mode[sample.caption.rsplit(" ", 1)[1]] = unnormalize(sample.pixel_values)
    for grey in ("L", "LA", "I;16"):
        channels = by_mode[grey]
        torch.testing.assert_close(channels[0], channels[1], atol=1e-5, rtol=0)
        torch.testing.assert_close(channels[1], channels[2], atol=1e-5, rtol=0)
    assert not torch.allclose(by_mode["RGB"][0], by_mode["RGB"][1])


def test_alpha_is_composited_on_white(tmp_path, writers):
    import io

    from PIL import Image

    clear = Image.new("RGBA", (5, 5), (0, 0, 0, 0))
    buffer = io.BytesIO()
    clear.save(buffer, format="PNG")
    rows = writers.make_rows(8)
    rows[0]["image"] = buffer.getvalue()
    path = writers.write_parquet(tmp_path / "alpha.parquet", rows)
    dm = module(path, val_path=str(path), image_size=5)
    dm.setup("fit")
    torch.testing.assert_close(unnormalize(dm.train_dataset[0].pixel_values), torch.ones(3, 5, 5))


def test_undecodable_image_names_the_row(tmp_path, writers):
    rows = writers.make_rows(16)
    rows[5]["image"] = b"not an image at all"
    path = writers.write_parquet(tmp_path / "train.parquet", rows)
    with pytest.raises(ValueError, match=r"row 5 of column 'image' in train\.parquet: could not decode"):
        module(path, val_path=str(path)).setup("fit")  # found by the check pass, before training
    dm = module(path, val_path=str(path), image_check_rows=5)
    dm.setup("fit")
    with pytest.raises(ValueError, match=r"row 5 of column 'image' in train\.parquet: could not decode"):
        dm.train_dataset[5]  # and when read, if the check pass did not reach it


def test_missing_column_lists_the_available_ones(parquet_file):
    dm = module(parquet_file, caption_column="text")
    with pytest.raises(ValueError, match=r"caption_column: column 'text' not found in train\.parquet; "
                                         r"available columns: \['image', 'caption', 'label', 'label_name'\]"):
        dm.setup("fit")
    with pytest.raises(ValueError, match="label_column: column 'y' not found"):
        module(parquet_file, label_column="y", class_names=["a", "b", "c"]).setup("fit")


def test_exactly_one_image_column(parquet_file):
    with pytest.raises(ValueError, match="exactly one"):
        module(parquet_file, image_column=None)
    with pytest.raises(ValueError, match="exactly one"):
        module(parquet_file, image_path_column="path")


def test_wrong_column_type(tmp_path, writers):
    rows = writers.make_rows(8)
    for row in rows:
        row["label"] = str(row["label"])
    path = writers.write_parquet(tmp_path / "train.parquet", rows)
    with pytest.raises(ValueError, match="label_column: column 'label' of train.parquet should hold integers, got type string"):
        module(path, class_names=["a", "b", "c"]).setup("fit")


def test_empty_caption_names_the_row(tmp_path, writers):
    rows = writers.make_rows(24)
    rows[13]["caption"] = "   "
    path = writers.write_parquet(tmp_path / "train.parquet", rows)
    with pytest.raises(ValueError, match=r"caption_column: caption 'caption' is empty at row 13 of train\.parquet"):
        module(path).setup("fit")


def test_batch_size_larger_than_the_dataset(parquet_file):
    with pytest.raises(ValueError, match=r"loader.batch_size: 64 is larger than the training set \(30 rows\)"):
        module(parquet_file, batch_size=64).setup("fit")


def test_labels_outside_class_names(parquet_file):
    with pytest.raises(ValueError, match=r"label_column: label 2 at row 2 of train\.parquet is outside \[0, 2\)"):
        module(parquet_file, class_names=["a", "b"]).setup("fit")


def test_class_names_from_argument_or_label_name_column(parquet_file):
    assert module(parquet_file).class_names == ["class0", "class1", "class2"]
    assert module(parquet_file, class_names=["x", "y", "z"]).class_names == ["x", "y", "z"]
    assert module(parquet_file, label_column=None).class_names is None


def test_split_is_deterministic(parquet_file):
    def val_rows(seed):
        dm = module(parquet_file, seed=seed)
        dm.setup("fit")
        return dm.val_dataset.rows.rows.tolist()

    assert val_rows(0) == val_rows(0)
    assert val_rows(0) != val_rows(1)
    assert len(val_rows(0)) == 10


def test_reads_only_the_needed_row_group(parquet_file):
    dataset = ParquetRowGroupDataset(parquet_file, ["caption", "label"], cache_row_groups=2)
    assert dataset.block_sizes() == [8] * 5
    modes = ["L", "LA", "P", "RGBA", "RGB", "I;16", "CMYK"]
    assert [dataset[i]["caption"] for i in (17, 16, 23)] == [f"picture {i} in mode {modes[i % 7]}" for i in (17, 16, 23)]
    assert dataset.row_group_reads == 1 and list(dataset._cache) == [2]
    dataset[0]
    dataset[9]
    assert dataset.row_group_reads == 3 and list(dataset._cache) == [0, 1]  # LRU keeps 2 groups


def test_one_epoch_reads_each_row_group_once(parquet_file):
    dm = module(parquet_file, val_path=str(parquet_file), row_group_window=2)
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert sum(len(b) for b in loader) == 40
    assert dm.train_dataset.rows.row_group_reads == 5


def test_image_path_column(tmp_path, writers):
    (tmp_path / "images").mkdir()
    rows = []
    for i in range(12):
        (tmp_path / "images" / f"{i}.png").write_bytes(writers.image_bytes("RGB", seed=i))
        rows.append({"path": f"images/{i}.png", "caption": f"file {i}", "label": i % 2})
    rows[7]["path"] = "images/missing.png"
    path = writers.write_parquet(tmp_path / "files.parquet", rows, row_group_size=4)
    with pytest.raises(FileNotFoundError, match=r"row 7 of column 'path' in files\.parquet: no image file"):
        module(path, val_path=str(path), image_column=None, image_path_column="path", label_column="label").setup("fit")
    dm = module(path, val_path=str(path), image_column=None, image_path_column="path", label_column="label",
                image_check_rows=0)
    dm.setup("fit")
    assert dm.train_dataset[3].pixel_values.shape == (3, 12, 12)
    assert dm.class_names is None
    with pytest.raises(FileNotFoundError, match=r"row 7 of column 'path' in files\.parquet: no image file"):
        dm.train_dataset[7]


def test_missing_file_names_the_field(tmp_path):
    with pytest.raises(FileNotFoundError, match="train_path: expected a Parquet file, received .*nope.parquet. \\(no such file\\)"):
        module(tmp_path / "nope.parquet", class_names=["a"]).setup("fit")


def test_rank_shards_do_not_overlap(parquet_file):
    class FakeTrainer:
        world_size, global_rank = 2, 0

    seen = []
    for rank in range(2):
        dm = module(parquet_file, val_path=str(parquet_file))
        dm.trainer = FakeTrainer()
        dm.trainer.global_rank = rank
        dm.setup("fit")
        ids = [i for b in dm.train_dataloader() for i in b.sample_ids]
        assert len(ids) == 20
        seen.append(set(ids))
    assert not seen[0] & seen[1]
    assert np.all([len(s) == 20 for s in seen])


def test_logged_reward_and_action_columns_reach_the_batch(tmp_path, writers):
    rows = writers.make_rows(12)
    for i, row in enumerate(rows):
        row["action"], row["reward"] = i % 4, float(i % 4 == row["label"])
    path = writers.write_parquet(tmp_path / "logged.parquet", rows)
    dm = module(path, val_path=str(path), reward_column="reward", action_column="action")
    dm.setup("fit")
    for batch in dm.val_dataloader():
        index = [int(s.split(":")[1]) for s in batch.sample_ids]
        assert batch.actions.dtype == torch.long and batch.actions.tolist() == [i % 4 for i in index]
        assert batch.rewards.dtype == torch.float32
        assert batch.rewards.tolist() == [float(i % 4 == i % 3) for i in index]
    plain = module(path, val_path=str(path))
    plain.setup("fit")
    assert next(iter(plain.val_dataloader())).rewards.numel() == 0  # no column: an empty tensor


@pytest.mark.parametrize("edit,match", [
    (lambda r: r.update(reward=float("nan")), "reward_column: row 5 .* expected a finite number"),
    (lambda r: r.update(reward=None), "reward_column: row 5"),
    (lambda r: r.update(action=-2), "action_column: row 5 .* expected an id >= 0"),
    (lambda r: r.update(reward="good"), "reward_column: column 'reward' .* should hold numbers"),
])
def test_bad_logged_feedback_is_named_before_training(tmp_path, writers, edit, match):
    rows = writers.make_rows(8)
    for row in rows:
        row["action"], row["reward"] = 1, 0.0
    edit(rows[5])
    if isinstance(rows[5]["reward"], str):
        for row in rows:
            row["reward"] = str(row["reward"])
    path = writers.write_parquet(tmp_path / "bad.parquet", rows)
    with pytest.raises(ValueError, match=match):
        module(path, val_path=str(path), reward_column="reward", action_column="action").setup("fit")


def test_logged_actions_need_rewards(parquet_file):
    with pytest.raises(ValueError, match="action_column: logged actions need their rewards"):
        module(parquet_file, action_column="label").setup("fit")
