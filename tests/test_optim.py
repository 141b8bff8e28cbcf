"""The original optimisation recipes (spec §3.6): ViT LLRD group scales and weight decay, CNN groups, schedules."""
import math

import pytest
import torch

from cadel_modeling.config import RunConfig
from cadel_modeling.modeling import CadelConfig, CadelForImageClassification
from cadel_modeling.training.optim import LRSchedule, OptimizerSpec, build_optimizer, param_groups, set_learning_rate


@pytest.fixture(scope="module")
def vit_b16():
    with torch.device("meta"):
        return CadelForImageClassification(CadelConfig(backbone="vit_base_patch16_224", num_labels=1000))


def scale_and_decay_by_name(model, spec):
    groups = param_groups(model, spec)
    by_param = {id(p): (g["lr_scale"], g["weight_decay"]) for g in groups for p in g["params"]}
    return {n: by_param[id(p)] for n, p in model.named_parameters()}


def expected_vit_scale(name: str, decay_aux_heads: bool = True) -> float:
    """Spec §3.6 / §10.5, written out per parameter name for ViT-B/16 with exits after blocks 7 and 9."""
    if name.startswith("backbone.blocks."):
        return 0.75 ** (12 - int(name.split(".")[2]))
    if name.startswith(("backbone.cls_token", "backbone.pos_embed", "backbone.patch_embed")):
        return 0.75 ** 13
    if name.startswith("aux_exits.") and (decay_aux_heads or ".blocks." in name):
        return {"0": 0.75 ** 6, "1": 0.75 ** 4}[name.split(".")[1]]
    return 1.0  # fc_norm, the last exit's head (and, in the lr_decay.py variant, the aux heads)


def test_vit_llrd_scales_and_weight_decay_follow_the_original(vit_b16):
    cfg = RunConfig(backbone="vit_base_patch16_224", optimizer="adamw", layer_decay=0.75, weight_decay=0.05)
    got = scale_and_decay_by_name(vit_b16, OptimizerSpec.from_config(cfg))
    for name, (scale, decay) in got.items():
        assert scale == pytest.approx(expected_vit_scale(name), rel=1e-12), name
        no_decay = name.endswith(("bias", "pos_embed", "cls_token")) or ".norm" in name or "fc_norm" in name
        assert decay == (0.0 if no_decay else 0.05), name
    assert got["aux_exits.0.classifier.weight"][0] == pytest.approx(0.178, abs=5e-4)
    assert got["aux_exits.1.classifier.weight"][0] == pytest.approx(0.316, abs=5e-4)
    assert got["backbone.pos_embed"] == (pytest.approx(0.75 ** 13), 0.0)
    assert got["classifier.weight"] == (1.0, 0.05) and got["backbone.fc_norm.weight"] == (1.0, 0.0)
    assert got["backbone.blocks.11.attn.qkv.weight"] == (0.75, 0.05)


def test_lr_decay_py_variant_gives_aux_heads_full_lr(vit_b16):
    spec = OptimizerSpec(name="adamw", layer_decay=0.75, weight_decay=0.05, llrd_decay_aux_heads=False)
    got = scale_and_decay_by_name(vit_b16, spec)
    for name, (scale, _) in got.items():
        assert scale == pytest.approx(expected_vit_scale(name, decay_aux_heads=False), rel=1e-12), name
    assert got["aux_exits.0.classifier.weight"][0] == 1.0
    assert got["aux_exits.0.blocks.1.mlp.fc2.weight"][0] == pytest.approx(0.75 ** 6)


def test_cnn_groups_decay_everything_and_scale_the_backbone():
    model = CadelForImageClassification(CadelConfig(backbone="test_resnet", num_labels=3, image_size=32,
                                                    aux_head="light"))
    cfg = OptimizerSpec(lr=0.025, backbone_lr=0.01, weight_decay=5e-4)
    groups = {g["name"]: g for g in param_groups(model, cfg)}
    assert groups["backbone"]["lr_scale"] == pytest.approx(0.4) and groups["heads"]["lr_scale"] == 1.0
    assert all(g["weight_decay"] == 5e-4 for g in groups.values())  # BN and biases included, as the original
    assert sum(p.numel() for g in groups.values() for p in g["params"]) == sum(p.numel() for p in model.parameters())
    optimizer = build_optimizer(model, cfg)
    assert isinstance(optimizer, torch.optim.SGD) and optimizer.defaults["momentum"] == 0.9
    set_learning_rate(optimizer, 0.025)
    assert sorted(g["lr"] for g in optimizer.param_groups) == [pytest.approx(0.01), pytest.approx(0.025)]


def test_adamw_uses_beta2_from_the_config():
    model = CadelForImageClassification(CadelConfig(backbone="test_vit", num_labels=3, image_size=32))
    cfg = RunConfig(backbone="test_vit", optimizer="adamw", adamw_beta2=0.99)
    optimizer = build_optimizer(model, OptimizerSpec.from_config(cfg))
    assert isinstance(optimizer, torch.optim.AdamW) and optimizer.defaults["betas"] == (0.9, 0.99)
    with pytest.raises(ValueError, match="use sgd or adamw"):
        build_optimizer(model, OptimizerSpec(name="adam", weight_decay=0.0))


def test_vit_schedule_warms_up_from_a_fifth_then_half_cosine_per_step():
    schedule = LRSchedule.from_config(RunConfig(scheduler="warmup_cosine", lr=5e-4, min_lr=1e-6, warmup_epochs=5,
                                                epochs=100))
    assert schedule.at(1, 0, 10) == pytest.approx(1e-4)           # t = 1: lr * 1/5
    assert schedule.at(3, 5, 10) == pytest.approx(3.5e-4)         # t = 3.5
    assert schedule.at(5, 0, 10) == pytest.approx(5e-4)           # end of warmup
    assert schedule.at(52, 5, 10) == pytest.approx((5e-4 + 1e-6) / 2)  # halfway through the cosine
    assert schedule.at(100, 0, 10) == pytest.approx(1e-6)         # t = E
    assert schedule.at(100, 9, 10) > 1e-6                         # the original's harmless last-epoch overshoot


def test_cnn_schedule_is_a_per_epoch_cosine_without_warmup():
    schedule = LRSchedule("cosine_epoch", lr=0.025, epochs=200, min_lr=0.0)
    assert schedule.at(1, 0, 100) == schedule.at(1, 99, 100) == pytest.approx(0.025)
    assert schedule.at(101, 0, 100) == pytest.approx(0.0125)
    assert schedule.at(200, 0, 100) == pytest.approx(0.025 * 0.5 * (1 + math.cos(math.pi * 199 / 200)))
    with pytest.raises(ValueError, match="use cosine_epoch or warmup_cosine"):
        LRSchedule("step", lr=0.1, epochs=10)
