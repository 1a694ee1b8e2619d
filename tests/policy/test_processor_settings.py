"""ProcessorSettings: a model folder's own processor files and chat template, YAML overrides, named errors."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from prismrl.backbones.causal_lm import load_causal_lm
from prismrl.policy.adapters import (
    InternVLAdapter,
    LlavaAdapter,
    ProcessorSettings,
    adapter_for,
    tiny_policy_config,
)
from prismrl.policy.adapters.internvl import IMAGENET_MEAN, IMAGENET_STD

TEMPLATE = "{% for m in messages %}<<{{ m['role'] }}>>{{ m['content'] }}{% endfor %}{% if add_generation_prompt %}<<assistant>>{% endif %}"
SAVED = {"min_pixels": 28 * 28, "max_pixels": 28 * 28 * 4, "image_mean": [0.1, 0.2, 0.3], "image_std": [0.5, 0.5, 0.5]}


@pytest.fixture(scope="module")
def qwen_folder(tmp_path_factory):
    """A saved tiny Qwen2-VL folder with its own image processor (non-default sizes and mean / std) and, instead of
    a tokenizer chat template, a processor ``chat_template.json``."""
    import transformers

    folder = tmp_path_factory.mktemp("qwen2_vl")
    config, tokenizer = tiny_policy_config({"model_type": "qwen2_vl"})
    torch.manual_seed(0)
    transformers.Qwen2VLForConditionalGeneration(config).save_pretrained(folder)
    tokenizer.chat_template = None
    tokenizer.save_pretrained(folder)
    vision = config.vision_config
    transformers.Qwen2VLImageProcessorPil(patch_size=vision.patch_size, merge_size=vision.spatial_merge_size,
                                          temporal_patch_size=vision.temporal_patch_size, **SAVED).save_pretrained(folder)
    (folder / "chat_template.json").write_text(json.dumps({"chat_template": TEMPLATE}))
    return folder


def _image(side: int) -> Image.Image:
    return Image.fromarray((torch.arange(side * side * 3) % 255).reshape(side, side, 3).to(torch.uint8).numpy())


def test_a_saved_folder_gives_its_own_image_processor_and_chat_template(qwen_folder):
    model, tokenizer = load_causal_lm(str(qwen_folder))
    adapter = adapter_for(model, tokenizer)
    assert adapter.processor_source() == str(qwen_folder)
    processor = adapter.image_processor
    assert (processor.size["shortest_edge"], processor.size["longest_edge"]) == (SAVED["min_pixels"], SAVED["max_pixels"])
    assert list(processor.image_mean) == SAVED["image_mean"] and list(processor.image_std) == SAVED["image_std"]
    batch = adapter.build_prompts(["<image> What digit?"], [[_image(224)]])
    assert batch.extra_model_kwargs["image_grid_thw"].tolist() == [[1, 4, 4]]  # max_pixels 56*56: 4x4 patches of 14 px
    expected = "<<user>><|vision_start|>" + "<|image_pad|>" * 4 + "<|vision_end|> What digit?<<assistant>>"
    assert tokenizer.decode(batch.input_ids[0]) == expected  # the folder's template, 16 patches / 2x2 merge
    assert tokenizer.chat_template == TEMPLATE  # installed, so an exported tokenizer carries it
    out = model(**batch.model_inputs())
    assert out.logits.shape[:2] == batch.input_ids.shape


def test_settings_from_yaml_win_over_the_folder(qwen_folder):
    model, tokenizer = load_causal_lm(str(qwen_folder))
    settings = ProcessorSettings(max_pixels=28 * 28 * 16, image_mean=[0.4, 0.4, 0.4], chat_template="{{ 'Q: ' }}"
                                 "{{ messages[-1]['content'] }}{{ ' A:' }}")
    adapter = adapter_for(model, tokenizer, processor=settings)
    processor = adapter.image_processor
    assert processor.size["longest_edge"] == 28 * 28 * 16 and processor.size["shortest_edge"] == SAVED["min_pixels"]
    assert list(processor.image_mean) == [0.4, 0.4, 0.4] and list(processor.image_std) == SAVED["image_std"]
    assert adapter.render_prompt("hi") == "Q: hi A:"
    assert adapter.build_prompts(["<image>"], [[_image(224)]]).extra_model_kwargs["image_grid_thw"].tolist() == [[1, 8, 8]]
    ignored = adapter_for(model, tokenizer, processor=ProcessorSettings(from_model_folder=False))
    assert ignored.processor_source() is None and ignored.image_processor.size["shortest_edge"] == 56 * 56


def test_a_tokenizer_without_chat_template_is_an_error_unless_raw_prompts_are_asked_for(qwen_folder):
    config, tokenizer = tiny_policy_config({"model_type": "qwen2_vl"})
    tokenizer.chat_template = None
    with pytest.raises(ValueError, match=r"processor.chat_template: the tokenizer .* has no chat template .*"
                                         r"processor.use_chat_template: false .* received None"):
        adapter_for(config, tokenizer)
    raw = adapter_for(config, tokenizer, processor=ProcessorSettings(use_chat_template=False))
    assert raw.render_prompt("<image> hi") == "<image> hi"
    with pytest.raises(FileNotFoundError, match=r"processor.chat_template: expected a Jinja template or a .jinja file"):
        adapter_for(config, tokenizer, processor=ProcessorSettings(chat_template="missing.jinja"))
    (qwen_folder / "t.jinja").write_text("{{ messages[-1]['content'] }}!")
    from_file = adapter_for(config, tokenizer, processor=ProcessorSettings(chat_template=str(qwen_folder / "t.jinja")))
    assert from_file.render_prompt("hi") == "hi!"


def test_internvl_defaults_to_imagenet_normalization_and_takes_tiles():
    config, tokenizer = tiny_policy_config({"model_type": "internvl"})
    adapter = adapter_for(config, tokenizer)
    assert isinstance(adapter, InternVLAdapter)
    assert tuple(adapter.image_processor.image_mean) == IMAGENET_MEAN
    assert tuple(adapter.image_processor.image_std) == IMAGENET_STD
    tiled = adapter_for(config, tokenizer, processor=ProcessorSettings(max_tiles=2, image_std=[0.3, 0.3, 0.3]))
    assert tiled.image_processor.max_patches == 2 and list(tiled.image_processor.image_std) == [0.3, 0.3, 0.3]
    assert tiled.process_images([_image(200).resize((400, 100))]).pixel_rows_per_image == [3]  # 2 tiles + thumbnail


def test_llava_folder_with_a_saved_processor(tmp_path):
    import transformers

    config, tokenizer = tiny_policy_config({"model_type": "llava"})
    transformers.LlavaForConditionalGeneration(config).save_pretrained(tmp_path)
    image_processor = transformers.LlavaImageProcessorPil(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28},
                                                          image_mean=[0.2, 0.2, 0.2])
    transformers.LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=14).save_pretrained(tmp_path)
    assert not (tmp_path / "preprocessor_config.json").exists()  # settings nested in processor_config.json
    model, loaded_tokenizer = load_causal_lm(str(tmp_path))
    adapter = adapter_for(model, loaded_tokenizer)
    assert isinstance(adapter, LlavaAdapter) and list(adapter.image_processor.image_mean) == [0.2, 0.2, 0.2]
    with pytest.raises(ValueError, match=r"processor.max_tiles: LlavaAdapter has no such image setting .*received 4"):
        adapter_for(model, loaded_tokenizer, processor=ProcessorSettings(max_tiles=4))


def test_settings_are_checked(tmp_path):
    settings = ProcessorSettings(max_pixels=3136, image_mean=[0.5, 0.5, 0.5], chat_template="{{ 'x' }}")
    torch.save({"processor": settings}, tmp_path / "hparams.pt")  # as a GRPO checkpoint stores its hyperparameters
    assert torch.load(tmp_path / "hparams.pt", weights_only=True)["processor"] == settings
    with pytest.raises(ValueError, match=r"processor.min_pixels: expected at most max_pixels=10, received 20"):
        ProcessorSettings(min_pixels=20, max_pixels=10)
    with pytest.raises(ValueError, match=r"processor.image_mean: expected three floats .* received \[0.5\]"):
        ProcessorSettings(image_mean=[0.5])
    with pytest.raises(ValueError, match=r"processor.image_std: expected positive values"):
        ProcessorSettings(image_std=[0.5, 0.0, 0.5])
    config, tokenizer = tiny_policy_config({"model_type": "llama"})
    with pytest.raises(ValueError, match=r"processor.min_pixels: CausalLMAdapter has no such image setting"):
        adapter_for(config, tokenizer, processor=ProcessorSettings(min_pixels=100))

