"""Image question-answer samples: a Parquet-backed dataset, the batch dataclass and its collate function.

Tokenization is left to the decoder (each decoder brings its tokenizer, prompt format and label masking), so a
batch carries the question and answer strings next to the pixels. An optional audio column (WAV bytes, null =
no clip) gives each sample a spoken clip; batches then carry zero-padded waveforms and their lengths (0 = no clip).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch.utils.data import Dataset

from prismrl.data.audio import decode_wav, pad_waveforms
from prismrl.data.images import ImageTransform, decode_image


@dataclass
class ImageQASample:
    """One decoded sample: pixel_values [3, H, W], question, answer, question_type ("" if none), label (-1 if none),
    audio: float32 mono 16 kHz waveform [N], an empty [0] tensor when the source has audio but this sample has none,
    None when the source has no audio."""

    pixel_values: torch.Tensor
    question: str
    answer: str
    question_type: str = ""
    label: int = -1
    sample_id: str = ""
    audio: torch.Tensor | None = None


@dataclass
class ImageQABatch:
    """pixel_values [B, 3, H, W]; B questions, answers and question types; labels [B] long (-1 = none);
    audio [B, N] float32 16 kHz waveforms zero-padded and audio_lengths [B] long (0 = no clip), both empty when the
    source has no audio."""

    pixel_values: torch.Tensor
    questions: list[str]
    answers: list[str]
    question_types: list[str] = field(default_factory=list)
    labels: torch.Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.long))
    sample_ids: list[str] = field(default_factory=list)
    audio: torch.Tensor = field(default_factory=lambda: torch.empty(0, 0))
    audio_lengths: torch.Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.long))

    def __len__(self) -> int:
        return int(self.pixel_values.shape[0])

    @property
    def has_audio(self) -> bool:
        """Whether some sample of the batch has a clip."""
        return bool((self.audio_lengths > 0).any()) if self.audio_lengths.numel() else False


def collate_image_qa(samples: Sequence[ImageQASample]) -> ImageQABatch:
    """Stack B samples into an ``ImageQABatch``."""
    if len(samples) == 0:
        raise ValueError("collate_image_qa: expected at least one sample, received an empty list")
    shapes = {tuple(s.pixel_values.shape) for s in samples}
    if len(shapes) != 1:
        raise ValueError(f"collate_image_qa: all images must share one shape, received {sorted(shapes)}")
    batch = ImageQABatch(
        pixel_values=torch.stack([s.pixel_values for s in samples]),  # [B, 3, H, W]
        questions=[s.question for s in samples],
        answers=[s.answer for s in samples],
        question_types=[s.question_type for s in samples],
        labels=torch.tensor([int(s.label) for s in samples], dtype=torch.long),  # [B]
        sample_ids=[s.sample_id for s in samples],
    )
    if any(s.audio is not None for s in samples):
        clips = [s.audio if s.audio is not None and s.audio.numel() else None for s in samples]
        batch.audio, batch.audio_lengths = pad_waveforms(clips)  # [B, N], [B]
    return batch


class ParquetImageQADataset(Dataset):
    """``ImageQASample``s from a ``ParquetRowGroupDataset`` whose columns include image/question/answer.

    ``question_type_column`` / ``label_column`` / ``audio_column`` are optional (None = not read).
    """

    def __init__(self, rows, transform: ImageTransform, image_column: str = "image", question_column: str = "question",
                 answer_column: str = "answer", question_type_column: str | None = None,
                 label_column: str | None = None, audio_column: str | None = None) -> None:
        self.rows, self.transform = rows, transform
        self.image_column, self.question_column, self.answer_column = image_column, question_column, answer_column
        self.question_type_column, self.label_column = question_type_column, label_column
        self.audio_column = audio_column

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> ImageQASample:
        record, row, name = self.rows[index], self.rows.row_number(index), self.rows.path.name
        where = f"row {row} of {name}"
        for column in (self.question_column, self.answer_column):
            if record[column] is None or not str(record[column]).strip():
                raise ValueError(f"{where}: column '{column}' is empty")
        data = record[self.image_column]
        if data is None:
            raise ValueError(f"{where}: column '{self.image_column}' (image) is null")
        label = record[self.label_column] if self.label_column is not None else None
        audio = None
        if self.audio_column is not None:
            clip = record[self.audio_column]
            audio = torch.zeros(0) if clip is None else decode_wav(clip, f"{where}, column '{self.audio_column}'")
        return ImageQASample(
            pixel_values=self.transform(decode_image(data, f"{where}, column '{self.image_column}'")),  # [3, H, W]
            question=str(record[self.question_column]),
            answer=str(record[self.answer_column]),
            question_type=str(record[self.question_type_column] or "") if self.question_type_column else "",
            label=-1 if label is None else int(label),
            sample_id=f"{name}:{row}",
            audio=audio,
        )


__all__ = ["ImageQABatch", "ImageQASample", "ParquetImageQADataset", "collate_image_qa"]
