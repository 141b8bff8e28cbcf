"""The published cascades (spec §1), their cost (params/MACs per exit), pretrained loading and a short real training.

Full-size models are built on the meta device (shapes, parameter counts and MACs without memory or compute);
numerics use timm's test-size models.
"""
import argparse
import gzip
import math
from types import SimpleNamespace

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from cadel_modeling.config import RunConfig
from cadel_modeling.modeling import CadelConfig, CadelForImageClassification
from cadel_modeling.modeling.costs import exit_costs, model_summary
from cadel_modeling.modeling.factory import build_model, save_model
from cadel_modeling.modeling.heads import ConvAuxHead
from cadel_modeling.modeling.pretrained import (
    LoadReport,
    load_pretrained_checkpoint,
    load_state_dict_into,
    resize_pos_embed,
)
from cadel_modeling.training.losses import CascadeLoss, mixup_batch
from cadel_modeling.training.optim import OptimizerSpec, build_optimizer, set_learning_rate
from cadel_modeling.utils.errors import ModelError

from conftest import FASHION_MNIST_DIR, requires_fashion_mnist


def meta_model(**kwargs) -> CadelForImageClassification:
    with torch.device("meta"):
        return CadelForImageClassification(CadelConfig(**kwargs))


def fake_data(num_classes, counts=None):
    counts = counts or [10 * (i + 1) for i in range(num_classes)]
    return SimpleNamespace(num_classes=num_classes, class_names=[f"c{i}" for i in range(num_classes)],
                           class_counts=counts, mean=(0.5,) * 3, std=(0.25,) * 3)


# ------------------------------------------------------------------------------------------------ faithful CNN heads
def conv_params(k, cin, cout, groups=1):
    return k * k * (cin // groups) * cout + cout + 2 * cout  # weights, bias, BatchNorm gamma/beta


def aux_head_params(cin, classes, last_kernel=1):
    """Aux_Layer2 / Aux_Classifier of spec §1.2-1.3, from its layer shapes."""
    return (conv_params(3, cin, 2048) + conv_params(3, 2048, 2048, groups=32) + conv_params(3, 2048, 2048)
            + conv_params(last_kernel, 2048, 4096) + 2 * 4096 * 512 + 4096 * classes)


def aux_head_macs(cin, size, classes):
    """MACs at an input map of ``size`` x ``size``: 3x3 same, then two valid 3x3 (-2 each), 1x1, SE, cosine head."""
    s1, s2, s3 = size, size - 2, size - 4
    return (s1 * s1 * 9 * cin * 2048 + s2 * s2 * 9 * 64 * 2048 + s3 * s3 * 9 * 2048 * 2048
            + s3 * s3 * 2048 * 4096 + 2 * 4096 * 512 + 4096 * classes)


def test_resnet50_faithful_heads_params_and_macs_match_the_layer_shapes():
    model = meta_model(backbone="resnet50", num_labels=1000, image_size=224)
    assert [model.aux_exits[k].body[0][0].in_channels for k in range(2)] == [512, 1024]  # conv3_x, conv4_x
    backbone, exit1, exit2, exit3 = exit_costs(model)
    assert aux_head_params(512, 1000) == 65_075_200 and aux_head_params(1024, 1000) == 74_512_384
    assert (exit1.params, exit2.params, exit3.params) == (65_075_200, 74_512_384, 2048 * 1000)
    assert aux_head_macs(512, 28, 1000) == 34_779_594_752 and aux_head_macs(1024, 14, 1000) == 8_491_270_144
    assert (exit1.macs, exit2.macs, exit3.macs) == (34_779_594_752, 8_491_270_144, 2048 * 1000)  # spec: ~35 G, ~8.5 G
    assert backbone.params == 23_508_032 and 4.0e9 < backbone.macs < 4.2e9  # torchvision ResNet-50 without fc
    text = model_summary(model)
    assert "34.780" in text and "65.08 M" in text and "inference, rule 'last'" in text


def test_places_head_has_a_3x3_last_conv_and_default_init():
    model = meta_model(backbone="resnet50", num_labels=365, image_size=224, aux_head="faithful_places")
    _, exit1, exit2, _ = exit_costs(model)
    assert exit1.params == aux_head_params(512, 365, last_kernel=3)
    assert exit2.params == aux_head_params(1024, 365, last_kernel=3)
    head = ConvAuxHead(64, 5, width=64, groups=4, places=True)  # a default-init conv has std 1/sqrt(3 fan_in)
    w = head.body[2][0].weight
    assert w.std().item() == pytest.approx(1 / math.sqrt(3 * 9 * 64), rel=0.05)


@pytest.mark.parametrize("aux_head, maps", [("faithful", [24, 10]), ("faithful_places", [22, 8])])
def test_aux_maps_at_224_follow_the_spec(aux_head, maps):
    model = meta_model(backbone="resnet50", num_labels=10, image_size=224, aux_head=aux_head)
    seen = []
    hooks = [h.body[3].register_forward_hook(lambda m, i, o: seen.append((i[0].shape[1:], o.shape[-1])))
             for h in model.aux_exits]
    inputs = []
    hooks += [h.register_forward_pre_hook(lambda m, i: inputs.append(tuple(i[0].shape[1:]))) for h in model.aux_exits]
    out = model(pixel_values=torch.empty(2, 3, 224, 224, device="meta"))
    for h in hooks:
        h.remove()
    assert inputs == [(512, 28, 28), (1024, 14, 14)]
    assert [s[1] for s in seen] == maps
    assert [tuple(z.shape) for z in out.exit_logits] == [(2, 10)] * 3


def test_faithful_init_conv_std_and_batchnorm_gamma_one():
    model = CadelForImageClassification(CadelConfig(backbone="test_resnet", num_labels=5, image_size=64,
                                                    aux_width=64, aux_groups=4, aux_padding="same"))
    conv = model.aux_exits[0].body[2][0]  # 3x3, 64 -> 64: std sqrt(2 / (9 * 64))
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / (9 * 64)), rel=0.05)
    gammas = [m.weight for m in model.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert gammas and all(bool((g == 1).all()) for g in gammas)  # timm would zero each block's last gamma


def test_light_head_is_a_small_fraction_of_resnet50():
    model = meta_model(backbone="resnet50", num_labels=1000, image_size=224, aux_head="light")
    backbone, exit1, exit2, _ = exit_costs(model)
    assert (exit1.macs + exit2.macs) < 0.1 * backbone.macs
    assert model.aux_exits[0].body[1][0].out_channels == 2048  # 1x1 to the last stage's width


# ------------------------------------------------------------------------------------------------ ViT cascade
def test_vit_b16_cascade_structure():
    model = meta_model(backbone="vit_base_patch16_224", num_labels=1000, image_size=224, drop_path=0.1)
    assert model.exit_indices == [7, 9]
    dpr = [b.drop_path1.drop_prob for b in model.backbone.blocks[1:]]
    assert [b.drop_path1.drop_prob for b in model.aux_exits[0].blocks] == [dpr[6]] * 2 == [pytest.approx(0.7 / 11)] * 2
    assert [b.drop_path1.drop_prob for b in model.aux_exits[1].blocks] == [dpr[8]] * 2 == [pytest.approx(0.9 / 11)] * 2
    assert isinstance(model.aux_exits[0].norm, torch.nn.Identity)  # faithful: no aux LayerNorm
    assert isinstance(model.backbone.norm, torch.nn.Identity) and isinstance(model.backbone.fc_norm, torch.nn.LayerNorm)
    d, hidden = 768, 3072
    block = 4 * d + (d * 3 * d + 3 * d) + (d * d + d) + (d * hidden + hidden) + (hidden * d + d)
    assert model.num_parameters_per_exit() == [2 * block + d * 1000, 2 * block + d * 1000, d * 1000]
    out = model(pixel_values=torch.empty(2, 3, 224, 224, device="meta"))
    assert [tuple(z.shape) for z in out.exit_logits] == [(2, 1000)] * 3
    normed = meta_model(backbone="vit_base_patch16_224", num_labels=10, aux_norm=True)
    assert isinstance(normed.aux_exits[1].norm, torch.nn.LayerNorm)


def test_vit_exits_match_an_independent_forward_and_sum_at_inference():
    torch.manual_seed(0)
    model = CadelForImageClassification(CadelConfig(backbone="test_vit", num_labels=7, image_size=32)).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        out = model(pixel_values=x)
        vit = model.backbone
        tokens = vit.norm_pre(vit._pos_embed(vit.patch_embed(x)))
        for block in vit.blocks[:model.exit_indices[0] + 1]:
            tokens = block(tokens)
        aux = model.aux_exits[0]
        z1 = aux.classifier(aux.blocks(tokens)[:, 1:].mean(1))  # mean of patch tokens, no LayerNorm
        z3 = model.classifier(vit.fc_norm(vit.forward_features(x)[:, 1:].mean(1)))
    assert torch.allclose(out.exit_logits[0], z1, atol=1e-5) and torch.allclose(out.exit_logits[2], z3, atol=1e-5)
    assert torch.allclose(out.logits, sum(out.exit_logits))
    assert all(z.shape == (3, 7) and z.abs().max() < 30 for z in out.exit_logits)


def test_cnn_predicts_with_the_last_exit_and_stays_below_the_scale():
    model = CadelForImageClassification(CadelConfig(backbone="test_resnet", num_labels=4, image_size=64,
                                                    aux_width=64, aux_groups=4, aux_padding="same")).eval()
    with torch.no_grad():
        out = model(pixel_values=torch.randn(2, 3, 64, 64) * 50)
    assert torch.equal(out.logits, out.exit_logits[-1])
    assert all(z.shape == (2, 4) and z.abs().max() < 30 for z in out.exit_logits)


@pytest.mark.parametrize("backbone, extra", [("test_resnet", {"aux_head": "light"}), ("test_vit", {})])
def test_saved_model_reloads_with_identical_outputs(tmp_path, backbone, extra):
    cfg = RunConfig(backbone=backbone, image_size=32, **extra)
    model = build_model(cfg, fake_data(6)).eval()
    model.config.tau = 1.0  # stage 2 writes tau into the config; predictions must use it after reloading
    save_model(model, tmp_path / "best_model", cfg, cfg.augmentation)
    again = CadelForImageClassification.from_pretrained(str(tmp_path / "best_model")).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        a, b = model(pixel_values=x), again(pixel_values=x)
    assert torch.equal(a.logits, b.logits) and all(torch.equal(p, q) for p, q in zip(a.exit_logits, b.exit_logits))
    counts = np.array(fake_data(6).class_counts, dtype=np.float64)
    log_prior = torch.from_numpy(np.log(counts / counts.sum())).float()
    vit = backbone == "test_vit"  # ViT: sum of the 3 exits, each adjusted; CNN: the last exit
    raw = sum(a.exit_logits) if vit else a.exit_logits[-1]
    assert torch.allclose(b.logits, raw - (3 if vit else 1) * 1.0 * log_prior, atol=1e-5)


def test_zero_backbone_lr_freezes_the_backbone_but_not_its_batchnorm_statistics():
    cfg = RunConfig(backbone="test_resnet", image_size=32, aux_head="light", backbone_lr=0.0, lr=0.1)
    model = build_model(cfg, fake_data(3))
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    optimizer = build_optimizer(model, OptimizerSpec.from_config(cfg))
    set_learning_rate(optimizer, cfg.lr)
    out = model(pixel_values=torch.randn(4, 3, 32, 32))
    sum(z.sum() for z in out.exit_logits).backward()
    optimizer.step()
    after = model.backbone.state_dict()
    weights = [k for k in before if k.endswith("weight")]
    assert all(torch.equal(before[k], after[k]) for k in weights)
    assert not torch.equal(before["bn1.running_mean"], after["bn1.running_mean"])
    assert all(p.grad is not None for p in model.classifier.parameters())


# ------------------------------------------------------------------------------------------------ pretrained weights
def test_resize_pos_embed_matches_bicubic_interpolation_and_keeps_the_class_token():
    torch.manual_seed(0)
    pos = torch.randn(1, 1 + 4, 8)
    out = resize_pos_embed(pos, (4, 4), num_prefix_tokens=1)
    grid = pos[0, 1:].reshape(2, 2, 8).permute(2, 0, 1)[None]  # [1, D, 2, 2], row-major patches
    expected = F.interpolate(grid, size=(4, 4), mode="bicubic", align_corners=False)[0].permute(1, 2, 0).reshape(16, 8)
    assert out.shape == (1, 17, 8)
    assert torch.equal(out[0, 0], pos[0, 0])
    assert torch.allclose(out[0, 1:], expected, atol=1e-6)
    assert resize_pos_embed(pos, (2, 2)) is pos
    with pytest.raises(ValueError, match="not a square grid"):
        resize_pos_embed(torch.randn(1, 1 + 6, 8), (4, 4))


def test_mae_style_checkpoint_loads_into_the_vit_with_a_clear_report(tmp_path):
    torch.manual_seed(0)
    source = timm.create_model("test_vit", img_size=32).state_dict()  # 2x2 grid, token pooling: has norm + head
    state = dict(source, mask_token=torch.zeros(1, 1, 64), **{"decoder_embed.weight": torch.zeros(32, 64)})
    torch.save({"model": state, "epoch": 400, "args": argparse.Namespace(blr=1.5e-4)}, tmp_path / "mae.pth")
    model = CadelForImageClassification(CadelConfig(backbone="test_vit", num_labels=5, image_size=64))  # 4x4 grid
    report = load_pretrained_checkpoint(model, tmp_path / "mae.pth")
    assert isinstance(report, LoadReport) and report.target == "backbone"
    assert report.resized == ["pos_embed: 2x2 -> 4x4"]
    assert report.dropped == ["decoder_embed.weight", "head.bias", "head.weight", "mask_token"]
    assert report.unexpected == ["norm.weight", "norm.bias"]  # MAE's final norm: replaced by fc_norm (global pool)
    assert report.missing == ["fc_norm.weight", "fc_norm.bias"] and not report.shape_mismatch
    assert torch.equal(model.backbone.blocks[2].attn.qkv.weight, source["blocks.2.attn.qkv.weight"])
    assert torch.equal(model.backbone.pos_embed, resize_pos_embed(source["pos_embed"], (4, 4)))
    assert "unexpected, ignored (2): norm.weight, norm.bias" in str(report)


def test_init_from_counts_each_tensor_once(tmp_path):
    from cadel_modeling.modeling.factory import init_from_model
    cfg = RunConfig(backbone="test_resnet", image_size=32, aux_head="light")
    source = build_model(cfg, fake_data(4))
    save_model(source, tmp_path / "parent", cfg, cfg.augmentation)
    child = build_model(cfg, fake_data(3))
    before = {k: v.clone() for k, v in child.state_dict().items()}
    info = init_from_model(child, str(tmp_path / "parent"))
    # independently: the tensors whose shape differs (the 3 classifiers of a new class count) stay fresh
    theirs = source.state_dict()
    fresh = sorted(k for k, v in before.items() if theirs[k].shape != v.shape)
    assert fresh == ["aux_exits.0.classifier.weight", "aux_exits.1.classifier.weight", "classifier.weight"]
    total = len(before)
    assert (info["tensors_loaded"], info["tensors_fresh"], sorted(info["fresh"])) == (total - 3, 3, fresh)
    assert info["source"] == str(tmp_path / "parent")  # what run_info.json names as the run's starting point
    assert info["summary"] == (f"initialised from {tmp_path / 'parent'}: {total - 3} tensors loaded, 3 kept fresh "
                               f"(new class count or head)")
    assert all(torch.equal(child.state_dict()[k], before[k]) for k in fresh)


def test_init_from_matches_backbones_by_architecture_not_by_pretrained_tag(tmp_path):
    """``resnet50.a1_in1k`` and ``resnet50`` are one architecture (timm's tag names only the pretrained weights), so a
    model built from a tagged name starts a run on the untagged one; another architecture is refused in one line."""
    from cadel_modeling.modeling.factory import init_from_model
    tagged = RunConfig(backbone="test_resnet.r160_in1k", image_size=32, aux_head="light")
    save_model(build_model(tagged, fake_data(4)), tmp_path / "parent", tagged, tagged.augmentation)
    child = build_model(RunConfig(backbone="test_resnet", image_size=32, aux_head="light"), fake_data(4))
    info = init_from_model(child, str(tmp_path / "parent"))
    assert info["tensors_fresh"] == 0 and info["tensors_loaded"] == len(child.state_dict())
    tagged_child = build_model(tagged, fake_data(4))  # and the other way round
    assert init_from_model(tagged_child, str(tmp_path / "parent"))["tensors_fresh"] == 0
    plain = RunConfig(backbone="test_resnet", image_size=32, aux_head="light")
    save_model(child, tmp_path / "plain", plain, plain.augmentation)
    assert init_from_model(tagged_child, str(tmp_path / "plain"))["tensors_fresh"] == 0
    vit = build_model(RunConfig(backbone="test_vit", image_size=32), fake_data(4))
    with pytest.raises(ModelError, match=r"is a test_resnet\.r160_in1k cascade but this run builds test_vit; "
                                         r"pass --backbone test_resnet\.r160_in1k"):
        init_from_model(vit, str(tmp_path / "parent"))


def test_plain_safetensors_backbone_and_cadel_checkpoint(tmp_path):
    source = timm.create_model("test_resnet").state_dict()
    save_file({k: v.contiguous() for k, v in source.items()}, str(tmp_path / "resnet.safetensors"))
    cfg = RunConfig(backbone="test_resnet", image_size=32, aux_head="light",
                    pretrained_checkpoint=str(tmp_path / "resnet.safetensors"))
    model = build_model(cfg, fake_data(4))  # build_model loads cfg.pretrained_checkpoint
    assert all(torch.equal(v, source[k]) for k, v in model.backbone.state_dict().items())
    # a CADEL run on 4 classes starts a run on 3: everything but the class-specific weights carries over
    model.save_pretrained(str(tmp_path / "run4"))
    other = build_model(RunConfig(backbone="test_resnet", image_size=32, aux_head="light"), fake_data(3))
    report = load_pretrained_checkpoint(other, tmp_path / "run4")
    assert report.target == "model" and not report.unexpected
    assert sorted(m.name for m in report.shape_mismatch) == \
        ["aux_exits.0.classifier.weight", "aux_exits.1.classifier.weight", "classifier.weight"]
    assert report.missing == []  # the mismatched tensors are listed once, as mismatched
    assert torch.equal(other.aux_exits[1].body[1][0].weight, model.aux_exits[1].body[1][0].weight)


def test_a_shape_mismatch_keeps_its_tensor_name_as_data_and_is_listed_once():
    # nn.ModuleDict takes any key without a dot: a colon in a name must not cut it short (the name is not parsed
    # back out of the report's text), or the tensor would also be listed as missing
    def net(classes):
        return torch.nn.ModuleDict({"head:v2": torch.nn.Linear(4, classes), "body": torch.nn.Linear(4, 4)})

    report = load_state_dict_into(net(5), net(3).state_dict(), LoadReport("run3", "model"))
    assert [(m.name, m.checkpoint, m.model) for m in report.shape_mismatch] == [
        ("head:v2.weight", (3, 4), (5, 4)), ("head:v2.bias", (3,), (5,))]
    assert report.missing == [] and report.loaded == ["body.bias", "body.weight"]
    assert str(report).splitlines()[1] == ("  shape mismatch, not loaded (2): head:v2.weight: checkpoint [3, 4] vs "
                                           "model [5, 4], head:v2.bias: checkpoint [3] vs model [5]")


def test_loading_errors_say_what_is_wrong(tmp_path):
    model = CadelForImageClassification(CadelConfig(backbone="test_resnet", num_labels=3, image_size=32,
                                                    aux_head="light"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_pretrained_checkpoint(model, tmp_path / "missing.pth")
    torch.save({"model": {"something.else": torch.zeros(2)}}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="no tensor of .* matches the model"):
        load_pretrained_checkpoint(model, tmp_path / "other.pth")
    torch.save({"model": {}, "trainer": Opaque()}, tmp_path / "pickled.pth")
    with pytest.raises(ValueError, match="could not read .* as a tensors-only checkpoint"):
        load_pretrained_checkpoint(model, tmp_path / "pickled.pth")


class Opaque:
    """An arbitrary pickled object: ``weights_only`` loading must refuse it."""


# ------------------------------------------------------------------------------------------------ real training
def read_fashion_mnist(n: int, size: int = 32):
    """The first ``n`` training images, padded to ``size``, 3 channels, normalised; and their labels."""
    with gzip.open(FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz") as fh:
        images = np.frombuffer(fh.read(), np.uint8, offset=16).reshape(-1, 28, 28)[:n]
    with gzip.open(FASHION_MNIST_DIR / "train-labels-idx1-ubyte.gz") as fh:
        labels = np.frombuffer(fh.read(), np.uint8, offset=8)[:n]
    x = torch.from_numpy(images.copy()).float().div(255).sub(0.286).div(0.353)
    pad = (size - 28) // 2
    x = F.pad(x, (pad, size - 28 - pad) * 2)[:, None].expand(-1, 3, -1, -1).contiguous()
    return x, torch.from_numpy(labels.astype(np.int64))


@pytest.fixture
def one_thread():
    """Tiny models train faster on one thread, and two pytest-xdist workers then do not oversubscribe two cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@requires_fashion_mnist
@pytest.mark.parametrize("backbone", ["test_resnet", "test_vit"])
@pytest.mark.parametrize("weight_mode", ["per_sample", "batch_scalar_legacy"])
def test_cascade_trains_on_fashion_mnist(backbone, weight_mode, one_thread):
    """Twenty real optimizer steps (mixup, the run's optimizer recipe): the loss falls and stays finite."""
    torch.manual_seed(0)
    x, y = read_fashion_mnist(512)
    vit = backbone == "test_vit"
    cfg = RunConfig(backbone=backbone, image_size=32, aux_width=64, aux_groups=4, aux_padding="same",
                    optimizer="adamw" if vit else "sgd", lr=1e-3 if vit else 0.02, weight_decay=0.05 if vit else 5e-4,
                    weight_mode=weight_mode)
    model = build_model(cfg, fake_data(10)).train()
    optimizer = build_optimizer(model, OptimizerSpec.from_config(cfg))
    set_learning_rate(optimizer, cfg.lr)
    loss_fn = CascadeLoss(8, 1.0, 2.0, weight_mode, "bce" if vit else "ce")
    generator = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(20):
        idx = torch.randint(0, len(y), (32,), generator=generator)
        xb, ya, yb, lam = mixup_batch(x[idx], y[idx], 0.5, generator)
        loss = loss_fn(model(pixel_values=xb).exit_logits, ya, yb, lam, T=0.5)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert np.mean(losses[-4:]) < 0.75 * np.mean(losses[:4]), losses


# --------------------------------------------------------------------------------------------- build_model's refusals
def test_build_model_names_the_backbone_and_the_fix_when_the_model_refuses_its_settings():
    from cadel_modeling.modeling.backbones import UnsupportedBackboneError
    with pytest.raises(ModelError) as error:
        build_model(RunConfig(backbone="test_resnet", image_size=32, aux_head="bogus"), fake_data(3))
    assert str(error.value) == ("cannot build the test_resnet cascade with these settings: unknown aux_head 'bogus'; "
                                "use faithful, faithful_places or light")
    with pytest.raises(UnsupportedBackboneError) as error:           # its own message, not wrapped as a setting
        build_model(RunConfig(backbone="nope_model", image_size=32), fake_data(3))
    assert str(error.value).startswith("'nope_model' is not a timm model name")


def test_build_model_offline_with_pretrained_weights_says_how_to_go_on(monkeypatch):
    from cadel_modeling.modeling import factory
    from cadel_modeling.utils.errors import ModelError
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError) as error:
        build_model(RunConfig(backbone="test_resnet", image_size=32, pretrained=True), fake_data(3))
    assert str(error.value) == (
        "could not fetch timm's pretrained weights for 'test_resnet' from the Hugging Face Hub "
        "(LocalEntryNotFoundError); go online or pre-download them into the cache, or pass --pretrained false "
        "(optionally with --pretrained_checkpoint FILE)")

    def unreadable(config, pretrained_backbone):
        raise OSError("disk gone")
    monkeypatch.setattr(factory, "CadelForImageClassification", unreadable)
    with pytest.raises(OSError, match="^disk gone$"):               # not a download: passed on as it is
        build_model(RunConfig(backbone="test_resnet", image_size=32, pretrained=False), fake_data(3))


@pytest.mark.parametrize("backbone_lr, frozen", [(0.0, True), (None, False), (0.01, False)])
def test_only_a_zero_backbone_lr_freezes_the_backbone(backbone_lr, frozen):
    model = build_model(RunConfig(backbone="test_resnet", image_size=32, aux_head="light", backbone_lr=backbone_lr),
                        fake_data(3))
    assert {p.requires_grad for p in model.backbone.parameters()} == {not frozen}
    heads = [p for name, p in model.named_parameters() if not name.startswith("backbone.")]
    assert heads and all(p.requires_grad for p in heads)
