"""tunesmith's MBConv image classifier (MobileNetV2 / EfficientNet-Lite family) as a Hugging Face model: tiny random
configs built here, so every test runs in well under a second on CPU."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tunesmith.errors import ModelError
from tunesmith.models.loading import ModelSource
from tunesmith.models.vision import MBConvConfig, MBConvForImageClassification
from tunesmith.models.vision.loading import load_image_classifier, load_image_processor
from tunesmith.models.vision.mbconv import SamePad, efficientnet_lite_stages
from tunesmith.models.vision.packaged import map_by_position, modules_by_kind

STAGES = [[3, 1, 1, 8, 1], [3, 2, 4, 16, 2], [5, 2, 4, 24, 1]]


def tiny(padding: str = "symmetric", num_labels: int = 3, **kw) -> MBConvForImageClassification:
    torch.manual_seed(0)
    config = MBConvConfig(
        stem_channels=8, stages=STAGES, head_channels=32, padding=padding, num_labels=num_labels, **kw
    )
    return MBConvForImageClassification(config)


def images(n: int = 4, size: int = 16) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize(("padding", "size"), [("same", 16), ("symmetric", 17)])
def test_forward_gives_logits_loss_and_one_hidden_state_per_block(padding, size):
    model = tiny(padding).eval()
    out = model(pixel_values=images(size=size), labels=torch.tensor([0, 1, 2, 0]), output_hidden_states=True)
    assert out.logits.shape == (4, 3)
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    assert len(out.hidden_states) == 1 + len(model.blocks) + 1  # stem, each block, head conv
    # Three stride-2 stages (stem + two): output = ceil(size / 8) either way of padding.
    assert out.hidden_states[-1].shape[-2:] == (-(-size // 8),) * 2
    assert model(pixel_values=images(size=size)).loss is None
    logits, hidden = model(pixel_values=images(size=size), output_hidden_states=True, return_dict=False)
    assert torch.equal(logits, out.logits) and len(hidden) == len(out.hidden_states)


def test_same_padding_is_tensorflows_extra_pixel_last_and_differs_from_symmetric():
    x = torch.ones(1, 1, 16, 16)
    assert SamePad(3, 2)(x).shape[-2:] == (17, 17)  # total 1: nothing before, one after
    assert SamePad(3, 2)(x)[0, 0, 0, 0] == 1 and SamePad(3, 2)(x)[0, 0, -1, -1] == 0
    assert SamePad(3, 2)(torch.ones(1, 1, 17, 17))[0, 0, 0, 0] == 0  # odd size: one on each side
    assert SamePad(5, 1)(x).shape[-2:] == (20, 20)
    same, sym = tiny("same").eval(), tiny("symmetric").eval()
    sym.load_state_dict(same.state_dict())
    assert not torch.allclose(same(pixel_values=images()).logits, sym(pixel_values=images()).logits)


def test_layout_is_what_the_strategies_look_for():
    model = tiny()
    lists = [m for m in model.modules() if isinstance(m, nn.ModuleList)]
    biggest = max(lists, key=lambda m: sum(p.numel() for p in m.parameters()))
    assert biggest is model.blocks and len(model.blocks) == 4
    assert sum(p.numel() for p in model.blocks.parameters()) > 0.5 * model.num_parameters()
    assert isinstance(model.classifier, nn.Linear)
    seen = {}
    model.classifier.register_forward_hook(lambda mod, args, out: seen.setdefault("x", args[0]))
    model(pixel_values=images())
    assert seen["x"].shape == (4, 32)  # the pooled 2-D features, what a linear probe reads


def test_efficientnet_lite_depth_scaling_keeps_first_and_last_stage():
    assert [s[-1] for s in efficientnet_lite_stages(1.0)] == [1, 2, 2, 3, 3, 4, 1]
    assert [s[-1] for s in efficientnet_lite_stages(1.1)] == [1, 3, 3, 4, 4, 5, 1]
    with pytest.raises(ValueError, match="padding"):
        MBConvConfig(padding="valid")


def test_save_pretrained_round_trips_through_the_auto_classes(tmp_path):
    from transformers import AutoConfig, AutoModelForImageClassification

    model = tiny("same", batch_norm_eps=1e-3).eval()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    assert isinstance(AutoConfig.from_pretrained(tmp_path), MBConvConfig)
    loaded = AutoModelForImageClassification.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, MBConvForImageClassification)
    assert loaded.config.padding == "same" and loaded.blocks[0].dw_bn.eps == 1e-3
    assert loaded.blocks[0].dw_bn.momentum == 0.1  # PyTorch convention for fine-tuning, not TF's 0.99
    with torch.no_grad():
        assert torch.equal(model(pixel_values=images()).logits, loaded(pixel_values=images()).logits)


def test_lora_on_the_convs_trains_saves_and_reloads(tmp_path):
    # The 1x1 convs, and the strided 3x3 stem: padding is a module of its own, so LoRA's down-projection (which
    # copies the conv's stride and padding) sees the padded input too. Depthwise convs are no LoRA target (PEFT
    # needs the rank divisible by groups).
    from peft import LoraConfig, PeftModel, get_peft_model

    base = tiny("same", dropout=0.0)
    base.save_pretrained(tmp_path / "base")
    config = LoraConfig(
        r=4, lora_alpha=8, target_modules=["stem_conv", "expand_conv", "project_conv"], modules_to_save=["classifier"]
    )
    model = get_peft_model(base, config)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or "classifier" in n for n in trainable)
    assert any("blocks.1.expand_conv.lora_A" in n for n in trainable)
    model.train()
    for m in model.modules():  # the frozen base keeps its BatchNorm statistics (PEFT saves adapters, not buffers)
        if isinstance(m, nn.BatchNorm2d):
            m.eval()
    x, y = images(8), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=5e-2)
    losses = []
    for _ in range(8):
        loss = model(pixel_values=x, labels=y).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.05, losses
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_b and all(p.abs().sum() > 0 for p in lora_b)  # the conv adapters moved off their zero init
    model.eval()
    model.save_pretrained(tmp_path / "adapter")
    from transformers import AutoModelForImageClassification

    fresh = AutoModelForImageClassification.from_pretrained(tmp_path / "base")
    reloaded = PeftModel.from_pretrained(fresh, tmp_path / "adapter").eval()
    with torch.no_grad():
        torch.testing.assert_close(model(pixel_values=x).logits, reloaded(pixel_values=x).logits)


def test_load_image_classifier_gives_a_fresh_head_and_names_it(tmp_path):
    tiny(num_labels=5).save_pretrained(tmp_path)
    model = load_image_classifier(ModelSource("tiny", str(tmp_path), "local"), ["cat", "dog"])
    assert model.classifier.out_features == 2 and model.config.id2label == {0: "cat", 1: "dog"}
    assert model.tunesmith_new_weights == {"classifier.weight", "classifier.bias"}
    assert torch.equal(model.stem_conv.weight, tiny(num_labels=5).stem_conv.weight)  # the backbone is kept
    with pytest.raises(ModelError, match="nothing to quantize"):
        load_image_classifier(ModelSource("tiny", str(tmp_path), "local"), ["cat", "dog"], quantize="nf4")
    with pytest.raises(ModelError, match="image classification"):
        load_image_classifier(ModelSource("nowhere", str(tmp_path / "missing"), "local"), ["a"])


def test_load_image_processor_reads_the_folder_or_says_what_is_missing(tmp_path):
    import json

    with pytest.raises(ModelError, match="preprocessor_config.json"):
        load_image_processor(str(tmp_path))
    processor = {
        "image_processor_type": "BitImageProcessor",
        "size": {"shortest_edge": 20},
        "crop_size": {"height": 16, "width": 16},
    }
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(processor))
    import numpy as np

    pixels = load_image_processor(str(tmp_path))(np.zeros((30, 40, 3), np.uint8), return_tensors="pt")
    assert pixels["pixel_values"].shape == (1, 3, 16, 16)


def test_weights_map_by_position_across_naming_schemes_and_shapes_are_checked():
    model = tiny().eval()
    # The same tensors under foreign names (lukemelas-style), in the same order: they land where they belong.
    foreign = {}
    for key, tensor in model.state_dict().items():
        prefix, _, leaf = key.rpartition(".")
        foreign[f"_{prefix.replace('.', '_')}.{leaf}"] = tensor.clone()
    target = tiny()
    target.load_state_dict(map_by_position(modules_by_kind(foreign), modules_by_kind(target.state_dict()), "t"))
    with torch.no_grad():
        assert torch.equal(model(pixel_values=images()).logits, target.eval()(pixel_values=images()).logits)
    wrong = tiny(num_labels=4)
    with pytest.raises(ModelError, match="does not match"):
        map_by_position(modules_by_kind(foreign), modules_by_kind(wrong.state_dict()), "t")
