"""``prismrl fit --data.help <DataModule>`` / ``--model.help <Stage>`` describe every init argument: each class's
docstring has an ``Args:`` entry per argument (and per field of the settings dataclasses it takes)."""

from __future__ import annotations

import importlib

import pytest
from jsonargparse import ArgumentParser

import prismrl.datamodules
from prismrl import lightning_modules

DATAMODULES = [getattr(prismrl.datamodules, name) for name in prismrl.datamodules.__all__]
STAGES = sorted(lightning_modules._LAZY)
# Settings classes whose fields are not described yet: (stage, argument prefix). Remove an entry once described.
NOT_YET_DESCRIBED: set[str] = set()


def undescribed(cls: type) -> list[str]:
    """Init arguments (nested dataclass fields as ``outer.field``) whose ``--help`` text has no description."""
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(cls, "x", fail_untyped=False, sub_configs=True)
    bare = [a for a in parser._actions if a.dest.startswith("x.") and a.dest != "x.help"]
    # without a docstring entry jsonargparse prints only "(type: ..., default: ...)"
    return [a.dest[2:] for a in bare if not (a.help or "").strip() or (a.help or "").lstrip().startswith("(")]


@pytest.mark.parametrize("cls", DATAMODULES, ids=lambda c: c.__name__)
def test_every_datamodule_argument_has_a_description(cls):
    assert undescribed(cls) == []


@pytest.mark.parametrize("name", STAGES)
def test_every_stage_argument_has_a_description(name):
    if name in NOT_YET_DESCRIBED:
        pytest.skip(f"{name}: arguments not described yet")
    cls = getattr(importlib.import_module(lightning_modules._LAZY[name]), name)
    missing = [arg for arg in undescribed(cls) if not arg.startswith(tuple(p for p in NOT_YET_DESCRIBED if "." in p))]
    assert missing == []


def test_the_check_sees_a_missing_description():
    class Documented:
        """A class.

        Args:
            described: what it is.
        """

        def __init__(self, described: int = 1, bare: int = 2) -> None:
            pass

    assert undescribed(Documented) == ["bare"]
