"""The tri-modal QA set: answers follow from the image and the clip, rows without a clip only get image questions,
validation voices are unseen in training, and the DataModule's batches carry audio (or none with drop_audio)."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from prismrl.data.digits import DIGIT_NAMES
from prismrl.data.loaders import LoaderSettings
from prismrl.data.trimodal_qa import TRIMODAL_QUESTION_TYPES, TriModalQAConfig, ensure_trimodal_qa


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return ensure_trimodal_qa(tmp_path_factory.mktemp("cache"), TriModalQAConfig(missing_audio_fraction=0.2))


def test_answers_follow_from_the_image_and_the_clip(built):
    rows = pq.read_table(built.train_parquet).to_pylist() + pq.read_table(built.val_parquet).to_pylist()
    assert len(rows) == 1797 and built.num_train + built.num_val == 1797
    for row in rows:
        shown, spoken = row["label"], row["spoken_label"]
        expected = {"digit": DIGIT_NAMES[shown], "spoken": DIGIT_NAMES[spoken] if spoken >= 0 else None,
                    "match": "yes" if shown == spoken else "no"}[row["question_type"]]
        assert row["answer"] == expected
        assert row["question"] in TRIMODAL_QUESTION_TYPES[row["question_type"]][0]
        if row["audio"] is None:
            assert row["question_type"] == "digit" and spoken == -1
        else:
            assert row["audio_file"].startswith(DIGIT_NAMES[spoken] + "_")
    types = {t: sum(r["question_type"] == t for r in rows) for t in TRIMODAL_QUESTION_TYPES}
    assert min(types.values()) > 300  # every type is asked
    matches = [r["answer"] for r in rows if r["question_type"] == "match"]
    assert 0.35 < matches.count("yes") / len(matches) < 0.65  # match_probability 0.5
    missing = sum(r["audio"] is None for r in rows) / len(rows)
    assert 0.15 < missing < 0.25


def test_validation_voices_are_unseen_in_training(built):
    train = {v for v in pq.read_table(built.train_parquet, columns=["voice"]).column("voice").to_pylist() if v}
    val = {v for v in pq.read_table(built.val_parquet, columns=["voice"]).column("voice").to_pylist() if v}
    assert val == set(TriModalQAConfig().val_voices) and not train & val


def test_bad_settings_name_the_field():
    with pytest.raises(ValueError, match="question_types: expected distinct names"):
        TriModalQAConfig(question_types=("digit", "colour"))
    with pytest.raises(ValueError, match="match_probability"):
        TriModalQAConfig(match_probability=1.5)


def test_datamodule_batches_carry_audio_or_none_when_dropped(tmp_path):
    from prismrl.datamodules.trimodal_qa import TriModalQADataModule

    batches = {}
    for drop in (False, True):
        data = TriModalQADataModule(root=str(tmp_path), drop_audio=drop, loader=LoaderSettings(batch_size=16))
        data.prepare_data()
        data.setup("fit")
        batches[drop] = next(iter(data.val_dataloader()))
    with_audio, without = batches[False], batches[True]
    assert with_audio.has_audio and with_audio.audio.shape[0] == 16 and with_audio.audio_lengths.shape == (16,)
    for i, n in enumerate(with_audio.audio_lengths.tolist()):  # zero-padded past each clip's length
        assert not with_audio.audio[i, n:].any()
    assert not without.has_audio and without.audio_lengths.numel() == 0
    assert without.questions == with_audio.questions and without.answers == with_audio.answers
