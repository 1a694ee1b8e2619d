"""LightningDataModules: Parquet, WebDataset shards, prompts, golden texts and the built-in datasets."""

from prismrl.datamodules.digit_qa import DigitQADataModule, ParquetQADataModule
from prismrl.datamodules.digits import DigitsDataModule
from prismrl.datamodules.fusion import FusionDigitsDataModule
from prismrl.datamodules.golden_text import GoldenTextDataModule
from prismrl.datamodules.parquet import ParquetDataModule
from prismrl.datamodules.prompts import PromptDataModule
from prismrl.datamodules.text_corpus import TextCorpusDataModule
from prismrl.datamodules.trimodal_digits import TriModalDigitsDataModule
from prismrl.datamodules.trimodal_qa import TriModalQADataModule
from prismrl.datamodules.webdataset import WebDataModule

__all__ = [
    "DigitQADataModule",
    "DigitsDataModule",
    "FusionDigitsDataModule",
    "GoldenTextDataModule",
    "ParquetDataModule",
    "ParquetQADataModule",
    "PromptDataModule",
    "TextCorpusDataModule",
    "TriModalDigitsDataModule",
    "TriModalQADataModule",
    "WebDataModule",
]
