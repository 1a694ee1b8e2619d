"""The CLI silences third-party noise a user cannot act on, and nothing else."""

from __future__ import annotations

import logging
import warnings

import pytest

from prismrl.cli import _configure_environment, _quiet_progress_bars


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def collect():
    """Records reaching the transformers and bitsandbytes loggers (transformers does not propagate to the root)."""
    handler = Collect()
    loggers = [logging.getLogger(name) for name in ("transformers", "bitsandbytes")]
    for logger in loggers:
        logger.addHandler(handler)
    yield handler.records
    for logger in loggers:
        logger.removeHandler(handler)


def test_a_load_report_of_unused_checkpoint_weights_becomes_one_line(collect, capsys):
    from transformers import BertModel

    from prismrl.backbones.shipped import resolve_model_path

    _configure_environment()
    _quiet_progress_bars()
    folder = resolve_model_path("shipped:all-minilm-l6-v2")  # saved with a pooler that BertModel(add_pooling_layer=False) lacks
    BertModel.from_pretrained(folder, add_pooling_layer=False)
    messages = [r.getMessage() for r in collect if "BertModel" in r.getMessage()]
    assert messages == [f"loaded BertModel from {folder} (not used from the checkpoint: pooler.dense.bias, "
                        f"pooler.dense.weight)"]
    assert "Loading weights" not in capsys.readouterr().err


def test_a_load_report_with_missing_weights_stays_whole(collect):
    from transformers import BertForMaskedLM

    from prismrl.backbones.shipped import resolve_model_path

    _configure_environment()
    BertForMaskedLM.from_pretrained(resolve_model_path("shipped:all-minilm-l6-v2"))  # no MLM head saved: MISSING
    reports = [r.getMessage() for r in collect if "LOAD REPORT" in r.getMessage()]
    assert len(reports) == 1 and "MISSING" in reports[0] and reports[0].count("\n") > 3


def test_known_noise_is_dropped_and_other_warnings_stay(collect):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _configure_environment()  # its filters go in front of "always"
        warnings.warn("Found 166 module(s) in eval mode at the start of training. This may lead to ...")
        warnings.warn("a real problem")
    assert [str(w.message) for w in caught] == ["a real problem"]
    cpu_ops = logging.getLogger("bitsandbytes.backends.cpu.ops")
    cpu_ops.warning("Failed to load CPU gemm_4bit_forward from kernels-community: No module named 'kernels'.")
    cpu_ops.warning("another bitsandbytes message")
    assert [r.getMessage() for r in collect] == ["another bitsandbytes message"]
