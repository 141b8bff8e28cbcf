"""Every results row of the paper has a preset with the original's hyperparameters (spec §8), and every preset's
model builds: at full size on the meta device (real architecture, shapes), and at reduced size for real numbers."""
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from cadel_modeling.config import parse_config, preset_names
from cadel_modeling.modeling.factory import build_model

DOCS = Path(__file__).resolve().parents[1] / "docs" / "presets.md"

CNN = dict(optimizer="sgd", momentum=0.9, weight_decay=5e-4, scheduler="cosine_epoch", min_lr=0.0, image_size=224,
           weight_mode="batch_scalar_legacy", base_loss="ce", inference_rule="last", exit_stages=[-3, -2],
           aux_width=2048, aux_groups=32, aux_padding="valid", cosine_scale=30.0, sampler="instance",
           tau_grid=[0.9, 1.0, 1.1, 1.2, 1.3, 1.4, 1.5])
VIT = dict(optimizer="adamw", weight_decay=0.05, layer_decay=0.75, scheduler="warmup_cosine", warmup_epochs=5,
           exit_blocks=[7, 9], aux_depth=2, aux_norm=False, cosine_scale=30.0, weight_mode="per_sample",
           base_loss="bce", inference_rule="sum", sampler="instance", tau_grid=[1.3, 1.4, 1.5, 1.6, 1.7, 1.8])


def vit_row(dataset, classes, size, ckpt, epochs, batch, lr, min_lr, beta2, drop_path, mixup, gamma, base_weight):
    return dict(VIT, dataset=dataset, num_classes=classes, image_size=size, backbone=f"vit_base_patch16_{size}",
                pretrained_checkpoint=f"pretrained/{ckpt}.pth", epochs=epochs, batch_size=batch, lr=lr,
                min_lr=min_lr, adamw_beta2=beta2, drop_path=drop_path, mixup_alpha=mixup, bins=8, gamma=gamma,
                base_weight=base_weight)


# Spec §8.1 (CNN), §8.2 (ViT) and §8.3 (tau grids), one row per results row of the README.
PAPER_ROWS = {
    "imagenet_lt_resnet50": dict(CNN, dataset="imagenet_lt", num_classes=1000, backbone="resnet50", epochs=200,
                                 batch_size=128, lr=0.025, mixup_alpha=0.5, bins=8, gamma=1.0, base_weight=2.0,
                                 aux_head="faithful", color_jitter=0.4),
    "imagenet_lt_resnext50": dict(CNN, dataset="imagenet_lt", num_classes=1000, backbone="resnext50_32x4d",
                                  epochs=200, batch_size=128, lr=0.025, mixup_alpha=0.8, bins=4, gamma=2.0,
                                  base_weight=2.0, aux_head="faithful"),
    "inat18_resnet50": dict(CNN, dataset="inat18", num_classes=8142, backbone="resnet50", epochs=200, batch_size=64,
                            lr=0.025, mixup_alpha=0.0, bins=8, gamma=1.0, base_weight=2.0, aux_head="faithful",
                            color_jitter=0.0),
    "places_lt_resnet152": dict(CNN, dataset="places_lt", num_classes=365, backbone="resnet152.tv_in1k",
                                pretrained=True, epochs=30, batch_size=128, lr=0.025, backbone_lr=0.0,
                                mixup_alpha=0.5, bins=8, gamma=2.0, base_weight=1.0, aux_head="faithful_places",
                                tau_grid=[0.9, 1.0, 1.1, 1.2, 1.3, 1.4]),
    "imagenet_lt_vit_b16_224": vit_row("imagenet_lt", 1000, 224, "ImageNet_LT_Res_224", 100, 128, 5e-4, 1e-6, 0.999,
                                       0.1, 0.8, 2.0, 1.0),
    "imagenet_lt_vit_b16_384": vit_row("imagenet_lt", 1000, 384, "ImageNet_LT_Res_224", 100, 32, 5e-4, 0.0, 0.99,
                                       0.1, 0.5, 1.0, 2.0),
    "inat18_vit_b16_224": vit_row("inat18", 8142, 224, "iNat18_Res_128", 100, 128, 5e-4, 1e-7, 0.99, 0.2, 0.5, 1.0,
                                  2.0),
    "inat18_vit_b16_384": vit_row("inat18", 8142, 384, "iNat18_Res_128", 100, 32, 5e-4, 1e-7, 0.99, 0.1, 0.0, 1.0,
                                  2.0),
    "places_lt_vit_b16_224": vit_row("places_lt", 365, 224, "ImageNet_1K_Res_224", 30, 128, 5e-4, 1e-7, 0.99, 0.1,
                                     0.5, 1.0, 2.0),
    "places_lt_vit_b16_384": vit_row("places_lt", 365, 384, "ImageNet_1K_Res_384", 20, 32, 1.25e-4, 1e-7, 0.99, 0.1,
                                     0.5, 1.0, 2.0),
}


@pytest.mark.parametrize("name", sorted(PAPER_ROWS))
def test_paper_presets_hold_the_original_hyperparameters(name):
    cfg = parse_config(["--config", name])
    wrong = {k: (getattr(cfg, k), v) for k, v in PAPER_ROWS[name].items()
             if not (getattr(cfg, k) == pytest.approx(v) if isinstance(v, float) else getattr(cfg, k) == v)}
    assert not wrong, f"{name}: (preset, paper) = {wrong}"
    assert cfg.output_dir == f"runs/{name}"
    if name.startswith("inat18"):
        assert cfg.color_jitter == 0.0  # the original's iNat transform has no ColorJitter


def test_cifar_presets_name_their_datasets():
    for name, classes in (("cifar10_lt", 10), ("cifar100_lt", 100)):
        cfg = parse_config(["--config", name])
        assert (cfg.dataset, cfg.num_classes, cfg.imb_factor, cfg.imb_type) == (name, classes, 100.0, "exp")


def fake_data(num_classes):
    return SimpleNamespace(num_classes=num_classes, class_names=[str(i) for i in range(num_classes)],
                           class_counts=list(range(num_classes, 0, -1)), mean=(0.5,) * 3, std=(0.25,) * 3)


def offline(name, **overrides):
    """The preset's config without downloads (no timm weights, no checkpoint file), plus ``overrides``."""
    argv = ["--config", name, "--pretrained", "false", "--pretrained_checkpoint", "null"]
    for key, value in overrides.items():
        argv += [f"--{key}", str(value)]
    return parse_config(argv)


@pytest.mark.parametrize("name", preset_names())
def test_every_preset_builds_at_full_size(name):
    cfg = offline(name)
    classes = cfg.num_classes or 10
    with torch.device("meta"):
        model = build_model(cfg, fake_data(classes))
        out = model(pixel_values=torch.empty(2, 3, cfg.image_size, cfg.image_size))
    assert [tuple(z.shape) for z in out.exit_logits] == [(2, classes)] * 3
    if cfg.family() == "vit":
        assert model.exit_indices == cfg.exit_blocks == [7, 9] and len(model.aux_exits[0].blocks) == 2
        assert tuple(model.backbone.patch_embed.grid_size) == (cfg.image_size // 16,) * 2
    elif cfg.aux_head.startswith("faithful") and cfg.aux_width == 2048:
        assert [h.body[0][0].in_channels for h in model.aux_exits] == [512, 1024]  # conv3_x and conv4_x outputs
        last_kernel = 3 if cfg.aux_head == "faithful_places" else 1
        assert model.aux_exits[0].body[3][0].kernel_size == (last_kernel, last_kernel)
    frozen = cfg.backbone_lr == 0.0
    assert all(p.requires_grad != frozen for p in model.backbone.parameters())


@pytest.mark.parametrize("name", preset_names())
def test_every_preset_runs_at_reduced_size(name):
    vit = parse_config(["--config", name]).family() == "vit"
    small = dict(backbone="test_vit", exit_blocks="null", image_size=32) if vit else \
        dict(backbone="test_resnet", aux_width=64, aux_groups=4, image_size=112)
    cfg = offline(name, **small)
    classes = cfg.num_classes or 10
    torch.manual_seed(0)
    model = build_model(cfg, fake_data(classes)).eval()
    with torch.no_grad():
        out = model(pixel_values=torch.randn(2, 3, cfg.image_size, cfg.image_size))
    for z in out.exit_logits:
        assert z.shape == (2, classes) and torch.isfinite(z).all() and z.abs().max() < cfg.cosine_scale


def test_docs_give_every_preset_its_two_stage_command():
    text = DOCS.read_text()
    for name in preset_names():
        assert f"train_stage1.py --config {name} " in text, name
        assert f"train_stage2.py --stage1_dir runs/{name}" in text, name
