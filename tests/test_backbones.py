"""One backbone-family rule, read from timm's registry: it decides the exits, the default loss and the default
inference rule for every timm model, and a ViT-like name that is not a plain ViT goes the CNN way."""
import pytest
import torch

from cadel_modeling.config import RunConfig
from cadel_modeling.modeling import CadelConfig, CadelForImageClassification
from cadel_modeling.modeling.backbones import UnsupportedBackboneError, backbone_family


@pytest.mark.parametrize("name, family", [
    ("resnet50", "cnn"), ("resnext50_32x4d", "cnn"), ("resnet152.tv_in1k", "cnn"), ("convnext_tiny", "cnn"),
    ("vit_base_patch16_224", "vit"), ("vit_base_patch16_384.augreg_in21k_ft_in1k", "vit"),
    ("deit_base_patch16_224", "vit"), ("eva02_tiny_patch14_224", "vit"), ("beit_base_patch16_224", "vit"),
    # 'vit' in the name, but hierarchical: feature stages, not blocks of tokens
    ("fastvit_t8", "cnn"), ("mobilevit_xxs", "cnn"), ("levit_128", "cnn"), ("maxvit_tiny_tf_224", "cnn"),
])
def test_the_family_comes_from_timms_registry_not_the_name(name, family):
    assert backbone_family(name) == family
    cfg = RunConfig(backbone=name)
    assert cfg.family() == family and cfg.resolved_base_loss() == ("bce" if family == "vit" else "ce")
    assert CadelConfig(backbone=name, num_labels=3).resolved_inference_rule == ("sum" if family == "vit" else "last")


def test_an_unknown_name_is_an_error_with_examples():
    with pytest.raises(UnsupportedBackboneError, match="not a timm model name; list them with timm.list_models"):
        backbone_family("resnet5")


@pytest.mark.parametrize("backbone, kwargs", [
    ("test_vit", {}),
    ("deit_tiny_patch16_224", {"depth": 4}),
    ("eva02_tiny_patch14_224", {"depth": 4}),
    ("beit_base_patch16_224", {"depth": 4, "embed_dim": 64, "num_heads": 2}),
])
def test_every_plain_vit_family_member_builds_a_cascade_that_matches_timms_forward(backbone, kwargs):
    torch.manual_seed(0)
    size = 28 if backbone.startswith("eva02") else 32
    model = CadelForImageClassification(CadelConfig(backbone=backbone, num_labels=5, image_size=size,
                                                    backbone_kwargs=kwargs, exit_blocks=[0, 1])).eval()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        out = model(pixel_values=x)
        vit = model.backbone
        last = model.classifier(vit.forward_head(vit.forward_features(x), pre_logits=True))  # timm's own forward
    assert [z.shape for z in out.exit_logits] == [(2, 5)] * 3
    torch.testing.assert_close(out.exit_logits[-1], last)
    torch.testing.assert_close(out.logits, sum(out.exit_logits))  # the ViT rule


@pytest.mark.parametrize("backbone, size", [("fastvit_t8", 64), ("mobilevit_xxs", 64)])
def test_hierarchical_vits_go_through_the_cnn_path(backbone, size):
    torch.manual_seed(0)
    model = CadelForImageClassification(CadelConfig(backbone=backbone, num_labels=4, image_size=size,
                                                    aux_head="light")).eval()
    with torch.no_grad():
        out = model(pixel_values=torch.randn(2, 3, size, size))
    assert [z.shape for z in out.exit_logits] == [(2, 4)] * 3 and torch.equal(out.logits, out.exit_logits[-1])


def test_a_backbone_without_feature_maps_or_token_pooling_is_refused_clearly():
    with pytest.raises(UnsupportedBackboneError, match="mean pooling of the patch tokens"):
        CadelForImageClassification(CadelConfig(backbone="deit_tiny_distilled_patch16_224", num_labels=3,
                                                image_size=32))
