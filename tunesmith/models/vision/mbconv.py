"""One small model family for MobileNetV2 and EfficientNet-Lite, as a real Hugging Face model.

Both are a stem conv, a stack of inverted-residual (MBConv) blocks with ReLU6 and no squeeze-excite, a 1x1 head
conv, global average pooling and a linear classifier; they differ only in their block table, in padding (the
TF-trained EfficientNet-Lite weights need TensorFlow's SAME padding, which pads one pixel more on the right and
bottom of a stride-2 conv on even sizes; torchvision pads k//2 on every side) and in BatchNorm epsilon. One
`PretrainedConfig` + `PreTrainedModel` pair covers both, so `save_pretrained`/`from_pretrained`, the Auto
classes and PEFT work on them as on any transformers model.

The layout is what the strategies look for: the blocks are one flat `nn.ModuleList` (`blocks`, most of the
parameters; depth = block index), the stem sits below it, the head conv and `classifier` (an `nn.Linear` fed the
pooled [B, C] features, which the linear probe hooks) above it. Convolutions are plain `nn.Conv2d` with
padding done by a separate module before them, so PEFT's LoRA Conv2d layer (which copies the conv's stride and
padding for its own down-projection) sees the already padded input and stays shape-consistent.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModelForImageClassification, PretrainedConfig, PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.modeling_outputs import ImageClassifierOutputWithNoAttention

MODEL_TYPE = "tunesmith-mbconv"
PADDINGS = ("same", "symmetric")


class MBConvConfig(PretrainedConfig):
    """The block table and the few numerics that tell MobileNetV2 and EfficientNet-Lite apart.

    `stages` is a list of `[kernel, stride, expand_ratio, out_channels, repeats]`; only the first block of a stage
    strides. A block with expand_ratio 1 has no expansion conv (both families' first block).
    """

    model_type = MODEL_TYPE

    def __init__(
        self,
        num_channels: int = 3,
        stem_channels: int = 32,
        stages: list[list[int]] | None = None,
        head_channels: int = 1280,
        padding: str = "symmetric",
        hidden_act: str = "relu6",
        batch_norm_eps: float = 1e-5,
        batch_norm_momentum: float = 0.1,
        dropout: float = 0.2,
        drop_path_rate: float = 0.0,
        image_size: int = 224,
        **kwargs,
    ):
        if padding not in PADDINGS:
            raise ValueError(f"padding must be one of {PADDINGS}, got {padding!r}")
        self.num_channels = num_channels
        self.stem_channels = stem_channels
        self.stages = [list(s) for s in (stages if stages is not None else MOBILENET_V2_STAGES)]
        self.head_channels = head_channels
        # 'same': TensorFlow SAME (asymmetric for stride 2); 'symmetric': k//2 on every side (torchvision).
        self.padding = padding
        self.hidden_act = hidden_act
        # 1e-3 for TF-trained weights (EfficientNet-Lite), 1e-5 for torchvision's: part of what the weights mean.
        self.batch_norm_eps = batch_norm_eps
        # PyTorch convention (weight of the new batch): 0.1, not TF's 0.99 decay, so fine-tuning adapts BN stats.
        self.batch_norm_momentum = batch_norm_momentum
        self.dropout = dropout
        # Stochastic depth on residual blocks, growing linearly with depth towards this rate (EfficientNet: 0.2).
        self.drop_path_rate = drop_path_rate
        # The resolution the weights were trained at (informational: the model accepts any size).
        self.image_size = image_size
        super().__init__(**kwargs)


# torchvision's MobileNetV2 table (t, c, n, s) as [kernel, stride, expand, out, repeats].
MOBILENET_V2_STAGES = [
    [3, 1, 1, 16, 1],
    [3, 2, 6, 24, 2],
    [3, 2, 6, 32, 3],
    [3, 2, 6, 64, 4],
    [3, 1, 6, 96, 3],
    [3, 2, 6, 160, 3],
    [3, 1, 6, 320, 1],
]
# EfficientNet-B0's table without squeeze-excite (efficientnet_lite_builder.py); Lite scales repeats, not stem/head.
EFFICIENTNET_LITE_STAGES = [
    [3, 1, 1, 16, 1],
    [3, 2, 6, 24, 2],
    [5, 2, 6, 40, 2],
    [3, 2, 6, 80, 3],
    [5, 1, 6, 112, 3],
    [5, 2, 6, 192, 4],
    [3, 1, 6, 320, 1],
]


def efficientnet_lite_stages(depth_multiplier: float) -> list[list[int]]:
    """Lite's depth scaling: ceil(repeats x multiplier), except the first and last stage which stay fixed."""
    last = len(EFFICIENTNET_LITE_STAGES) - 1
    return [
        [k, s, e, c, r if i in (0, last) else math.ceil(r * depth_multiplier)]
        for i, (k, s, e, c, r) in enumerate(EFFICIENTNET_LITE_STAGES)
    ]


class SamePad(nn.Module):
    """TensorFlow's SAME padding, computed from the input size: output = ceil(input / stride), extra pixel last."""

    def __init__(self, kernel: int, stride: int):
        super().__init__()
        self.kernel, self.stride = kernel, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size in (x.shape[-1], x.shape[-2]):  # F.pad takes the last dimension first
            total = max((math.ceil(size / self.stride) - 1) * self.stride + self.kernel - size, 0)
            pads += [total // 2, total - total // 2]
        return F.pad(x, pads) if any(pads) else x

    def extra_repr(self) -> str:
        return f"kernel={self.kernel}, stride={self.stride}"


def _pad(config: MBConvConfig, kernel: int, stride: int) -> nn.Module:
    if config.padding == "same" and kernel > 1:
        return SamePad(kernel, stride)
    return nn.ZeroPad2d(kernel // 2) if kernel > 1 else nn.Identity()


def _bn(config: MBConvConfig, channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=config.batch_norm_eps, momentum=config.batch_norm_momentum)


class MBConvBlock(nn.Module):
    """Expand (1x1) -> depthwise (kxk, stride) -> project (1x1, linear), with a residual when shapes allow."""

    def __init__(self, config: MBConvConfig, cin: int, cout: int, kernel: int, stride: int, expand: int, drop: float):
        super().__init__()
        hidden = cin * expand
        self.act = ACT2FN[config.hidden_act]
        self.expands = expand != 1
        if self.expands:
            self.expand_conv = nn.Conv2d(cin, hidden, 1, bias=False)
            self.expand_bn = _bn(config, hidden)
        self.dw_pad = _pad(config, kernel, stride)
        self.dw_conv = nn.Conv2d(hidden, hidden, kernel, stride, groups=hidden, bias=False)
        self.dw_bn = _bn(config, hidden)
        self.project_conv = nn.Conv2d(hidden, cout, 1, bias=False)
        self.project_bn = _bn(config, cout)
        self.residual = stride == 1 and cin == cout
        self.drop_path = drop

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.expand_bn(self.expand_conv(x))) if self.expands else x
        h = self.act(self.dw_bn(self.dw_conv(self.dw_pad(h))))
        h = self.project_bn(self.project_conv(h))
        if not self.residual:
            return h
        if self.training and self.drop_path > 0:  # stochastic depth: drop the whole branch per example
            keep = 1.0 - self.drop_path
            h = h * torch.empty(h.shape[0], 1, 1, 1, dtype=h.dtype, device=h.device).bernoulli_(keep) / keep
        return x + h


class MBConvPreTrainedModel(PreTrainedModel):
    config_class = MBConvConfig
    config: MBConvConfig
    base_model_prefix = "mbconv"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = False
    _no_split_modules = ["MBConvBlock"]

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        # torchvision's scheme (the families' own): He init for convs, small normal for the head, BN at identity.
        if isinstance(module, nn.Conv2d):
            init.kaiming_normal_(module.weight, mode="fan_out")
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            init.normal_(module.weight, 0.0, 0.01)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            init.ones_(module.weight)
            init.zeros_(module.bias)
            if module.running_mean is not None:
                init.zeros_(module.running_mean)
                init.ones_(module.running_var)
                init.zeros_(module.num_batches_tracked)


class MBConvForImageClassification(MBConvPreTrainedModel):
    """stem -> blocks (the stack) -> head conv -> average pool -> dropout -> classifier."""

    def __init__(self, config: MBConvConfig):
        super().__init__(config)
        self.act = ACT2FN[config.hidden_act]
        self.stem_pad = _pad(config, 3, 2)
        self.stem_conv = nn.Conv2d(config.num_channels, config.stem_channels, 3, 2, bias=False)
        self.stem_bn = _bn(config, config.stem_channels)
        specs = [(k, s if i == 0 else 1, e, c) for k, s, e, c, repeats in config.stages for i in range(int(repeats))]
        cin, blocks = config.stem_channels, []
        for index, (kernel, stride, expand, cout) in enumerate(specs):
            drop = config.drop_path_rate * index / max(len(specs), 1)
            blocks.append(MBConvBlock(config, cin, cout, kernel, stride, expand, drop))
            cin = cout
        self.blocks = nn.ModuleList(blocks)
        self.head_conv = nn.Conv2d(cin, config.head_channels, 1, bias=False)
        self.head_bn = _bn(config, config.head_channels)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(config.dropout)
        self.classifier = nn.Linear(config.head_channels, config.num_labels)
        self.post_init()

    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ):
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        x = self.act(self.stem_bn(self.stem_conv(self.stem_pad(pixel_values))))
        hidden = [x] if output_hidden_states else None
        for block in self.blocks:
            x = block(x)
            if hidden is not None:
                hidden.append(x)
        x = self.act(self.head_bn(self.head_conv(x)))
        if hidden is not None:
            hidden.append(x)
        features = self.pool(x).flatten(1)  # [B, C]: the classifier's input, what a linear probe reads
        logits = self.classifier(self.dropout(features))
        loss = self.loss_function(labels, logits, self.config) if labels is not None else None
        hidden_states = tuple(hidden) if hidden is not None else None
        if not return_dict:
            out = (logits,) + ((hidden_states,) if hidden_states is not None else ())
            return ((loss,) + out) if loss is not None else out
        return ImageClassifierOutputWithNoAttention(loss=loss, logits=logits, hidden_states=hidden_states)


AutoConfig.register(MODEL_TYPE, MBConvConfig, exist_ok=True)
AutoModelForImageClassification.register(MBConvConfig, MBConvForImageClassification, exist_ok=True)
