"""ProcessorSettings: a VLM adapter's image-processor settings and chat template (YAML: ``model.init_args.processor``),
and what a model folder's own processor files say (``preprocessor_config.json`` / ``processor_config.json``,
``chat_template.jinja`` / ``chat_template.json``)."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from prismrl.choices import check_positive_int, checkpoint_safe

IMAGE_FIELDS = ("min_pixels", "max_pixels", "min_tiles", "max_tiles", "image_mean", "image_std")


@checkpoint_safe
@dataclass(frozen=True)
class ProcessorSettings:
    """How a (vision-)language adapter processes images and prompts (YAML: ``model.init_args.processor``).

    name_or_path: where the processor files are (a folder or an HF id); None = the model's own folder when it has
    processor files and ``from_model_folder`` is true. Image settings (None = the folder's, else the family's
    default): min_pixels / max_pixels (Qwen-VL dynamic resolution), min_tiles / max_tiles (InternVL tiling),
    image_mean / image_std (three floats; InternVL defaults to ImageNet's, LLaVA and Qwen-VL to CLIP's). A family
    that has no use for a field refuses it. chat_template: a Jinja template, or the path of a ``.jinja`` file, that
    replaces the tokenizer's (and is installed on it, so exported tokenizers carry it); use_chat_template: false
    tokenizes prompts raw (the only way to run a tokenizer that has no chat template).
    """

    name_or_path: str | None = None
    from_model_folder: bool = True
    min_pixels: int | None = None
    max_pixels: int | None = None
    min_tiles: int | None = None
    max_tiles: int | None = None
    image_mean: tuple[float, float, float] | None = None
    image_std: tuple[float, float, float] | None = None
    chat_template: str | None = None
    use_chat_template: bool = True

    def __post_init__(self) -> None:
        for name in ("min_pixels", "max_pixels", "min_tiles", "max_tiles"):
            if getattr(self, name) is not None:
                check_positive_int(f"processor.{name}", getattr(self, name))
        for low, high in (("min_pixels", "max_pixels"), ("min_tiles", "max_tiles")):
            lo, hi = getattr(self, low), getattr(self, high)
            if lo is not None and hi is not None and lo > hi:
                raise ValueError(f"processor.{low}: expected at most {high}={hi}, received {lo}")
        for name in ("image_mean", "image_std"):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, (str, bytes)) or len(value) != 3 or not all(isinstance(v, (int, float)) for v in value):
                raise ValueError(f"processor.{name}: expected three floats (one per RGB channel), received {value!r}")
            if name == "image_std" and min(value) <= 0:
                raise ValueError(f"processor.image_std: expected positive values, received {list(value)}")
            object.__setattr__(self, name, tuple(float(v) for v in value))

    def with_defaults(self, **values: Any) -> ProcessorSettings:
        """These settings with the fields they leave None taken from ``values`` (None values ignored)."""
        return replace(self, **{k: v for k, v in values.items() if v is not None and getattr(self, k) is None})

    def image_overrides(self) -> dict[str, Any]:
        """The image settings that are set, by field name."""
        return {name: getattr(self, name) for name in IMAGE_FIELDS if getattr(self, name) is not None}


def has_processor_files(folder: Path) -> bool:
    if (folder / "preprocessor_config.json").is_file():
        return True
    config = folder / "processor_config.json"
    return config.is_file() and "image_processor" in json.loads(config.read_text())


def folder_chat_template(folder: Path) -> str | None:
    """A processor's chat template saved in ``folder`` (``chat_template.jinja`` or ``chat_template.json``)."""
    if (folder / "chat_template.jinja").is_file():
        return (folder / "chat_template.jinja").read_text()
    if (folder / "chat_template.json").is_file():
        return json.loads((folder / "chat_template.json").read_text()).get("chat_template")
    return None
