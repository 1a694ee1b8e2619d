"""The fusion digits set: deterministic build, hints that contain the label, and fusion beating either modality."""

from __future__ import annotations

import io

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from prismrl.data.batches import ImageTextBatch
from prismrl.data.fusion_digits import (
    FusionDigitsConfig,
    degrade_digit,
    ensure_fusion_digits,
    make_hint,
)
from prismrl.data.loaders import LoaderSettings
from prismrl.datamodules.fusion import FusionDigitsDataModule


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return ensure_fusion_digits(tmp_path_factory.mktemp("fusion"))


def test_build_writes_stratified_parquet_with_hint_sets(built):
    train, val = pq.read_table(built.train_parquet).to_pylist(), pq.read_table(built.val_parquet).to_pylist()
    assert (built.num_train, built.num_val) == (len(train), len(val)) and len(train) + len(val) == 1797
    assert set(train[0]) == {"image", "caption", "label", "label_name", "hint_set", "logged_action", "logged_reward"}
    assert np.bincount([r["label"] for r in val], minlength=10).min() >= 35  # every class held out
    for row in train + val:
        assert row["label"] in row["hint_set"] and row["hint_set"] == sorted(row["hint_set"])
        assert 3 <= len(row["hint_set"]) <= 6 and row["caption"].strip()
    assert Image.open(io.BytesIO(train[0]["image"])).size == (32, 32)
    actions = np.array([r["logged_action"] for r in train])  # a uniform logging policy over the 10 digits
    assert np.bincount(actions, minlength=10).min() > 0.6 * len(train) / 10
    assert all(r["logged_reward"] == float(r["logged_action"] == r["label"]) for r in train + val)


def test_build_is_deterministic_and_seed_dependent(built, tmp_path):
    again = ensure_fusion_digits(tmp_path)
    assert pq.read_table(again.train_parquet).equals(pq.read_table(built.train_parquet))
    other = ensure_fusion_digits(tmp_path, FusionDigitsConfig(seed=1))
    assert other.root != again.root
    assert pq.read_table(other.val_parquet).column("caption") != pq.read_table(again.val_parquet).column("caption")


def test_degrade_adds_noise_and_wipes_one_block():
    image = np.full((8, 8), 10.0)
    clean = degrade_digit(image, np.random.default_rng(0), noise_std=0.0, occlusion_size=0)
    np.testing.assert_array_equal(clean, image)
    occluded = degrade_digit(image, np.random.default_rng(0), noise_std=0.0, occlusion_size=3)
    assert (occluded == 0).sum() == 9 and (occluded == 10).sum() == 55
    noisy = degrade_digit(image, np.random.default_rng(0), noise_std=4.0, occlusion_size=0)
    assert noisy.min() >= 0 and noisy.max() <= 16 and np.abs(noisy - image).mean() > 1


def test_hints_are_true_coarse_sets():
    rng = np.random.default_rng(0)
    texts = set()
    for label in list(range(10)) * 20:
        text, candidates = make_hint(label, rng, FusionDigitsConfig())
        texts.add(text.split(": ", 1)[1])
        assert label in candidates
        if "one of" in text:
            assert len(candidates) == 3 and all(str(d) in text for d in candidates)
        elif "odd" in text:
            assert candidates == [1, 3, 5, 7, 9]
        elif "greater than five" in text:
            assert candidates == [6, 7, 8, 9]
    assert {"an odd digit", "an even digit", "a digit greater than five", "a digit of five or less"} <= texts


def test_bad_config_is_rejected():
    with pytest.raises(ValueError, match="occlusion_size"):
        FusionDigitsConfig(occlusion_size=9)
    with pytest.raises(ValueError, match="set_hint_probability"):
        FusionDigitsConfig(set_hint_probability=1.5)


def test_fusion_beats_text_alone_and_image_alone(built):
    """A linear (LDA) model on the decoded images vs the hint's candidate set vs both (the set as a mask on the posterior)."""
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

    def load(path):
        rows = pq.read_table(path).to_pylist()
        pixels = np.stack([np.asarray(Image.open(io.BytesIO(r["image"])).resize((8, 8)), dtype=np.float64).ravel() for r in rows])
        masks = np.array([[d in r["hint_set"] for d in range(10)] for r in rows], dtype=np.float64)
        return pixels / 255.0, masks, np.array([r["label"] for r in rows])

    x_train, _, y_train = load(built.train_parquet)
    x_val, masks, y_val = load(built.val_parquet)
    posterior = LinearDiscriminantAnalysis().fit(x_train, y_train).predict_proba(x_val)  # [N, 10]
    image_acc = (posterior.argmax(1) == y_val).mean()
    text_acc = (1.0 / masks.sum(1)).mean()  # Bayes: uniform over the candidate set
    fused_acc = ((posterior * masks).argmax(1) == y_val).mean()
    assert text_acc < 0.4 and 0.4 < image_acc < 0.85
    assert fused_acc > image_acc + 0.08


def test_datamodule_yields_image_text_batches(tmp_path):
    datamodule = FusionDigitsDataModule(root=str(tmp_path), loader=LoaderSettings(batch_size=8), image_size=24)
    datamodule.prepare_data()
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    assert isinstance(batch, ImageTextBatch) and batch.pixel_values.shape == (8, 3, 24, 24)
    assert len(batch.captions) == 8 and batch.labels.shape == (8,)
    assert datamodule.class_names[3] == "three"
