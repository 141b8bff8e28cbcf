"""The CADEL cascade on any timm backbone, as a ``transformers`` model.

Two auxiliary exits branch off intermediate depths of one shared backbone; the backbone's own pooled feature is
the third (deepest) exit. Every exit ends in OLTR's cosine classifier with scale 30. CNNs predict with the last
exit, ViTs with the sum of the exits (the original's rules). Being a ``PreTrainedModel`` gives
``save_pretrained``/``from_pretrained``/``push_to_hub`` with safetensors weights and the config (tau, class counts,
labels) in one folder.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from functools import partial
from typing import List, Optional, Sequence, Tuple

import timm
import torch
import torch.nn.functional as F
from timm.models import is_model_in_modules
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.utils import ModelOutput


class CosineClassifier(nn.Module):
    """OLTR's CosNorm: ``s * (|x|/(1+|x|)) * <x/|x|, w_c/|w_c|>``; no bias, so |logit| < s."""

    def __init__(self, in_features: int, num_classes: int, scale: float = 30.0):
        super().__init__()
        self.scale = scale
        bound = 1.0 / math.sqrt(in_features)
        self.weight = nn.Parameter(torch.empty(num_classes, in_features).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        squashed = x / (1.0 + x.norm(p=2, dim=1, keepdim=True))  # == (|x|/(1+|x|)) * x/|x|, safe at x = 0
        return self.scale * F.linear(squashed, F.normalize(self.weight, dim=1))


class SqueezeExcitation(nn.Module):
    def __init__(self, channels: int, reduction: int = 8):
        super().__init__()
        self.fc1 = nn.Linear(channels, channels // reduction, bias=False)
        self.fc2 = nn.Linear(channels // reduction, channels, bias=False)

    def forward(self, x):
        w = torch.sigmoid(self.fc2(F.relu(self.fc1(x.mean((2, 3))))))
        return x * w[:, :, None, None]


def _conv_bn_relu(cin, cout, kernel, padding, groups=1, stride=1):
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, groups=groups),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class ConvAuxHead(nn.Module):
    """The published CNN auxiliary exit (``Aux_Layer2``; ``places=True`` is ``Aux_Classifier``).

    3x3 conv to ``width``, grouped 3x3, 3x3, then 1x1 (Places: 3x3) to ``2*width``, squeeze-excitation, pooling,
    dropout 0.5 and a cosine classifier. ``padding='valid'`` is the original; 'same' keeps small maps alive.
    At width 2048, 1000 classes and 224 px, the heads on conv3_x / conv4_x of a ResNet-50 hold 65.1 M / 74.5 M
    parameters and cost 34.8 / 8.5 GMACs, about ten times the backbone (``model_summary`` prints this).
    """

    def __init__(self, in_channels, num_classes, width=2048, groups=32, padding="valid", places=False, scale=30.0):
        super().__init__()
        pad = 0 if padding == "valid" else 1
        self.min_size = 1 + (2 * (1 - pad) * 2) + (2 * (1 - pad) if places else 0)
        self.body = nn.Sequential(
            _conv_bn_relu(in_channels, width, 3, 1),
            _conv_bn_relu(width, width, 3, pad, groups=groups),
            _conv_bn_relu(width, width, 3, pad),
            _conv_bn_relu(width, 2 * width, 3 if places else 1, pad if places else 0),
            SqueezeExcitation(2 * width, 8),
        )
        self.dropout = nn.Dropout(0.5)
        self.classifier = CosineClassifier(2 * width, num_classes, scale)
        if not places:  # the ResNet init loop of the original also covered its aux heads; Places' heads kept defaults
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / (m.kernel_size[0] * m.kernel_size[1] * m.out_channels)))

    def forward(self, x):
        return self.classifier(self.dropout(self.body(x).mean((2, 3))))


class LightAuxHead(nn.Module):
    """A cheap exit (a departure from the paper): strided depthwise 3x3, 1x1 to ``width``, pooling, cosine head."""

    def __init__(self, in_channels, num_classes, width, scale=30.0):
        super().__init__()
        self.min_size = 1
        self.body = nn.Sequential(_conv_bn_relu(in_channels, in_channels, 3, 1, groups=in_channels, stride=2),
                                  _conv_bn_relu(in_channels, width, 1, 0))
        self.dropout = nn.Dropout(0.5)
        self.classifier = CosineClassifier(width, num_classes, scale)

    def forward(self, x):
        return self.classifier(self.dropout(self.body(x).mean((2, 3))))


class ViTAuxExit(nn.Module):
    """ViT auxiliary exit: ``depth`` new transformer blocks, mean of patch tokens, (optional) LayerNorm, cosine head.

    The original meant to apply a LayerNorm before the head but, through a flag mix-up, never did: ``norm=False`` is
    that faithful behaviour.
    """

    def __init__(self, dim, num_heads, mlp_ratio, depth, drop_path, num_prefix_tokens, num_classes, norm, scale):
        super().__init__()
        from timm.models.vision_transformer import Block
        self.blocks = nn.Sequential(*[
            Block(dim, num_heads, mlp_ratio, qkv_bias=True, drop_path=drop_path,
                  norm_layer=partial(nn.LayerNorm, eps=1e-6)) for _ in range(depth)])
        self.num_prefix_tokens = num_prefix_tokens
        self.norm = nn.LayerNorm(dim, eps=1e-6) if norm else nn.Identity()
        self.classifier = CosineClassifier(dim, num_classes, scale)

    def forward(self, tokens):
        x = self.blocks(tokens)[:, self.num_prefix_tokens:].mean(1)
        return self.classifier(self.norm(x))


class CadelConfig(PretrainedConfig):
    """Everything needed to rebuild a CADEL model and to predict with it (tau and class counts included)."""

    model_type = "cadel"

    def __init__(self, backbone: str = "resnet50", num_labels: Optional[int] = None, image_size: int = 224,
                 exit_stages: Sequence[int] = (-3, -2), exit_blocks: Optional[Sequence[int]] = None,
                 aux_head: str = "faithful", aux_width: int = 2048, aux_groups: int = 32, aux_padding: str = "valid",
                 aux_depth: int = 2, aux_norm: bool = False, cosine_scale: float = 30.0, drop_path: float = 0.0,
                 inference_rule: str = "auto", tau: float = 0.0, class_counts: Optional[List[int]] = None,
                 image_mean: Sequence[float] = (0.485, 0.456, 0.406), image_std: Sequence[float] = (0.229, 0.224, 0.225),
                 **kwargs):
        self.backbone = backbone
        self.image_size = image_size
        self.exit_stages = list(exit_stages)
        self.exit_blocks = list(exit_blocks) if exit_blocks is not None else None
        self.aux_head = aux_head
        self.aux_width = aux_width
        self.aux_groups = aux_groups
        self.aux_padding = aux_padding
        self.aux_depth = aux_depth
        self.aux_norm = aux_norm
        self.cosine_scale = cosine_scale
        self.drop_path = drop_path
        self.inference_rule = inference_rule
        self.tau = tau
        self.class_counts = list(class_counts) if class_counts is not None else None
        self.image_mean = list(image_mean)
        self.image_std = list(image_std)
        if num_labels is not None and "id2label" not in kwargs:
            kwargs["num_labels"] = num_labels
        super().__init__(**kwargs)

    @property
    def is_vit(self) -> bool:
        return is_vit_backbone(self.backbone)

    @property
    def resolved_inference_rule(self) -> str:
        if self.inference_rule != "auto":
            return self.inference_rule
        return "sum" if self.is_vit else "last"


def is_vit_backbone(name: str) -> bool:
    return any(k in name for k in ("vit", "deit", "eva", "beit"))


@dataclass
class CadelOutput(ModelOutput):
    """``logits`` are the prediction scores (exits combined by the inference rule, tau-adjusted when tau > 0);
    ``exit_logits`` are the raw logits of every exit, shallow to deep, for training and ensembles."""

    loss: Optional[torch.Tensor] = None
    logits: Optional[torch.Tensor] = None
    exit_logits: Optional[Tuple[torch.Tensor, ...]] = None


def log_prior(class_counts: Sequence[int], device=None) -> torch.Tensor:
    counts = torch.as_tensor(class_counts, dtype=torch.float64, device=device)
    return torch.log(counts / counts.sum()).float()


def combine_exits(exit_logits: Sequence[torch.Tensor], rule: str = "last",
                  exits: Optional[Sequence[int]] = None) -> torch.Tensor:
    """Combine exit logits: 'last' exit, 'sum' of all, or the sum of the given 1-based ``exits``."""
    if exits is not None:
        return sum(exit_logits[k - 1] for k in exits)
    if rule == "last":
        return exit_logits[-1]
    if rule == "sum":
        return sum(exit_logits)
    raise ValueError(f"unknown inference rule {rule!r}; use 'last' or 'sum'")


def adjust_logits(scores: torch.Tensor, class_counts: Sequence[int], tau: float, num_terms: int = 1) -> torch.Tensor:
    """Post-hoc logit adjustment ``z - tau * log(prior)`` for each of ``num_terms`` summed exits.

    The original adds ``tau * (log(1/C) - log prior)`` per exit; the constant never changes the argmax and is
    dropped here so scores stay comparable across tau.
    """
    if tau == 0:
        return scores
    return scores - num_terms * tau * log_prior(class_counts, scores.device).to(scores.dtype)


class CadelForImageClassification(PreTrainedModel):
    config_class = CadelConfig
    main_input_name = "pixel_values"
    base_model_prefix = "cadel"

    def __init__(self, config: CadelConfig, pretrained_backbone: bool = False):
        super().__init__(config)
        c = config
        if c.is_vit:
            self._build_vit(c, pretrained_backbone)
        else:
            self._build_cnn(c, pretrained_backbone)
        self.post_init()

    # -- construction ----------------------------------------------------------------------------------------
    def _build_cnn(self, c: CadelConfig, pretrained: bool):
        # The original initialised every BatchNorm to gamma=1; timm's ResNets zero the last one of each block.
        resnet_kwargs = {"zero_init_last": False} if is_model_in_modules(c.backbone, ["resnet"]) else {}
        self.backbone = timm.create_model(c.backbone, pretrained=pretrained, features_only=True,
                                          drop_path_rate=c.drop_path or None, **resnet_kwargs)
        channels = self.backbone.feature_info.channels()
        reductions = self.backbone.feature_info.reduction()
        n = len(channels)
        self.exit_indices = [s % n for s in c.exit_stages]
        if any(i >= n - 1 for i in self.exit_indices) or sorted(self.exit_indices) != self.exit_indices:
            raise ValueError(f"exit_stages {c.exit_stages} must name increasing feature stages before the last one "
                             f"(this backbone has {n}: channels {channels})")
        heads = []
        for i in self.exit_indices:
            if c.aux_head == "light":
                head = LightAuxHead(channels[i], c.num_labels, channels[-1], c.cosine_scale)
            elif c.aux_head in ("faithful", "faithful_places"):
                head = ConvAuxHead(channels[i], c.num_labels, c.aux_width, c.aux_groups, c.aux_padding,
                                   places=c.aux_head == "faithful_places", scale=c.cosine_scale)
            else:
                raise ValueError(f"unknown aux_head {c.aux_head!r}; use faithful, faithful_places or light")
            size = c.image_size // reductions[i]
            if size < head.min_size:
                raise ValueError(
                    f"aux_head={c.aux_head!r} with aux_padding={c.aux_padding!r} needs feature maps of at least "
                    f"{head.min_size}x{head.min_size}, but stage {i} is {size}x{size} at image_size {c.image_size}: "
                    f"use --aux_padding same, --aux_head light, or a larger image_size")
            heads.append(head)
        self.aux_exits = nn.ModuleList(heads)
        self.classifier = CosineClassifier(channels[-1], c.num_labels, c.cosine_scale)

    def _build_vit(self, c: CadelConfig, pretrained: bool):
        kwargs = dict(num_classes=0, global_pool="avg", drop_path_rate=c.drop_path, img_size=c.image_size)
        self.backbone = timm.create_model(c.backbone, pretrained=pretrained, **kwargs)
        vit = self.backbone
        depth = len(vit.blocks)
        blocks = c.exit_blocks if c.exit_blocks is not None else [round(8 * depth / 12) - 1, round(10 * depth / 12) - 1]
        if any(not 0 <= b < depth - 1 for b in blocks) or sorted(set(blocks)) != list(blocks):
            raise ValueError(f"exit_blocks {blocks} must be increasing block indices below {depth - 1}")
        self.exit_indices = list(blocks)
        dim = vit.embed_dim
        first = vit.blocks[0]
        num_heads = first.attn.num_heads
        mlp_ratio = first.mlp.fc1.out_features / dim
        # Each aux exit's blocks use the drop-path rate of the block they branch from (dpr[7], dpr[9] in ViT-B).
        self.aux_exits = nn.ModuleList([
            ViTAuxExit(dim, num_heads, mlp_ratio, c.aux_depth, getattr(vit.blocks[b].drop_path1, "drop_prob", 0.0),
                       vit.num_prefix_tokens, c.num_labels, c.aux_norm, c.cosine_scale) for b in blocks])
        self.classifier = CosineClassifier(dim, c.num_labels, c.cosine_scale)

    def _init_weights(self, module):
        """Weights come from the constructors (timm's and ours); transformers must not re-initialise them."""

    # -- forward ---------------------------------------------------------------------------------------------
    def exit_features(self, pixel_values: torch.Tensor, exits: Optional[Sequence[int]] = None) -> List[torch.Tensor]:
        """Raw logits of the requested 1-based ``exits`` (default: all), shallow to deep. Skipping the aux exits
        of a CNN at evaluation saves most of the cascade's compute."""
        wanted = set(range(1, len(self.aux_exits) + 2) if exits is None else exits)
        outs = []
        if self.config.is_vit:
            vit = self.backbone
            x = vit.norm_pre(vit.patch_drop(vit._pos_embed(vit.patch_embed(pixel_values))))
            for i, block in enumerate(vit.blocks):
                x = block(x)
                if i in self.exit_indices and self.exit_indices.index(i) + 1 in wanted:
                    outs.append(self.aux_exits[self.exit_indices.index(i)](x))
            if len(self.aux_exits) + 1 in wanted:
                outs.append(self.classifier(vit.forward_head(vit.norm(x), pre_logits=True)))
            return outs
        feats = self.backbone(pixel_values)
        outs = [head(feats[i]) for k, (head, i) in enumerate(zip(self.aux_exits, self.exit_indices), 1) if k in wanted]
        if len(self.aux_exits) + 1 in wanted:
            outs.append(self.classifier(feats[-1].mean((2, 3))))
        return outs

    def forward(self, pixel_values: torch.Tensor, labels: Optional[torch.Tensor] = None,
                return_dict: Optional[bool] = None, **kwargs) -> CadelOutput:
        exit_logits = self.exit_features(pixel_values)
        rule = self.config.resolved_inference_rule
        scores = combine_exits(exit_logits, rule)
        if self.config.tau and self.config.class_counts:
            scores = adjust_logits(scores, self.config.class_counts, self.config.tau,
                                   num_terms=len(exit_logits) if rule == "sum" else 1)
        loss = F.cross_entropy(scores, labels) if labels is not None else None
        return CadelOutput(loss=loss, logits=scores, exit_logits=tuple(exit_logits))

    def num_parameters_per_exit(self) -> List[int]:
        """Parameters owned by each aux exit, then by the last exit's classifier (backbone counted apart)."""
        return [sum(p.numel() for p in m.parameters()) for m in list(self.aux_exits) + [self.classifier]]



def model_config_from_run(cfg, data) -> CadelConfig:
    """The model config of a run (``RunConfig``) on a dataset (``LongTailedData``): labels and counts come from the data."""
    return CadelConfig(
        backbone=cfg.backbone, num_labels=data.num_classes, image_size=cfg.image_size,
        id2label={i: n for i, n in enumerate(data.class_names)}, label2id={n: i for i, n in enumerate(data.class_names)},
        exit_stages=cfg.exit_stages, exit_blocks=cfg.exit_blocks, aux_head=cfg.aux_head, aux_width=cfg.aux_width,
        aux_groups=cfg.aux_groups, aux_padding=cfg.aux_padding, aux_depth=cfg.aux_depth, aux_norm=cfg.aux_norm,
        cosine_scale=cfg.cosine_scale, drop_path=cfg.drop_path, inference_rule=cfg.inference_rule,
        class_counts=data.class_counts, image_mean=list(data.mean), image_std=list(data.std))


def build_model(cfg, data) -> CadelForImageClassification:
    """The run's model: timm's weights by name (``pretrained``), then a checkpoint file (``pretrained_checkpoint``).

    A backbone with learning rate 0 (Places-LT ResNet-152) is frozen: SGD would leave it unchanged anyway, and
    skipping its backward saves most of the compute. Its BatchNorm statistics still update in train mode, as in
    the original.
    """
    config = model_config_from_run(cfg, data)
    try:
        model = CadelForImageClassification(config, pretrained_backbone=cfg.pretrained)
    except OSError as exc:
        if not cfg.pretrained:
            raise
        raise OSError(f"could not fetch timm's pretrained weights for {cfg.backbone!r} from the Hugging Face Hub "
                      f"({exc}); go online or pre-download them into the cache, or pass --pretrained false "
                      f"(optionally with --pretrained_checkpoint FILE)") from exc
    if cfg.pretrained_checkpoint:
        from .pretrained import load_pretrained_checkpoint
        load_pretrained_checkpoint(model, cfg.pretrained_checkpoint)
    if cfg.backbone_lr == 0:
        model.backbone.requires_grad_(False)
    return model


@dataclass
class PartCost:
    """Parameters and multiply-accumulates (per image) of one part of the cascade."""

    name: str
    params: int
    macs: int


def exit_costs(model: CadelForImageClassification, image_size: Optional[int] = None) -> List[PartCost]:
    """Parameters and MACs of the shared backbone, then of each exit's own layers, shallow to deep.

    MACs are counted by ``torch.utils.flop_counter.FlopCounterMode`` (convolutions and matrix products, attention
    included; norms, activations and pooling are not counted, the usual convention; FLOPs = 2 x MACs) on a
    meta-device twin built from the model's config, so counting costs neither memory nor compute. The backbone
    row holds everything outside the exit heads (for a ViT, also the last exit's pooling LayerNorm).
    """
    from torch.utils.flop_counter import FlopCounterMode

    config = copy.deepcopy(model.config)
    config.image_size = image_size or config.image_size
    if config.image_size == model.config.image_size and next(model.parameters()).is_meta:
        twin = model  # already free to run
    else:
        with torch.device("meta"):
            twin = type(model)(config)
    was_training = twin.training
    pixels = torch.empty(1, 3, config.image_size, config.image_size, device="meta")
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        twin.eval()(pixel_values=pixels)
    twin.train(was_training)
    flops = {name.partition(".")[2] or name: sum(ops.values()) for name, ops in counter.get_flop_counts().items()}
    heads = [f"aux_exits.{k}" for k in range(len(twin.aux_exits))] + ["classifier"]
    head_macs = [flops.get(h, 0) // 2 for h in heads]
    if config.is_vit:
        names = [f"exit {k + 1}: {config.aux_depth} blocks after block {b}" for k, b in enumerate(twin.exit_indices)]
    else:
        names = [f"exit {k + 1}: {config.aux_head} head on feature stage {i}" for k, i in enumerate(twin.exit_indices)]
    names.append(f"exit {len(heads)}: pooled cosine classifier")
    backbone = PartCost("backbone (shared)", sum(p.numel() for p in model.backbone.parameters()),
                        flops["Global"] // 2 - sum(head_macs))
    return [backbone] + [PartCost(n, p, m) for n, p, m in zip(names, model.num_parameters_per_exit(), head_macs)]


def model_summary(model: CadelForImageClassification, image_size: Optional[int] = None) -> str:
    """A table of parameters and MACs per exit, for training (every exit) and for inference (the model's rule)."""
    c = model.config
    size = image_size or c.image_size
    parts = exit_costs(model, size)
    rule = c.resolved_inference_rule
    used = parts if rule == "sum" else [parts[0], parts[-1]]
    rows = [(p.name, p.params, p.macs) for p in parts]
    rows.append(("training, all exits", sum(p.params for p in parts), sum(p.macs for p in parts)))
    rows.append((f"inference, rule {rule!r}", sum(p.params for p in used), sum(p.macs for p in used)))
    width = max(len(r[0]) for r in rows)
    lines = [f"CADEL cascade on {c.backbone} at {size}x{size}, {c.num_labels} classes "
             f"(MACs per image counted with torch.utils.flop_counter.FlopCounterMode)",
             f"  {'part':<{width}}  {'params':>10}  {'GMACs':>8}"]
    lines += [f"  {name:<{width}}  {params / 1e6:>8.2f} M  {macs / 1e9:>8.3f}" for name, params, macs in rows]
    return "\n".join(lines)
