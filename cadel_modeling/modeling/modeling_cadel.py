"""The CADEL cascade on any timm backbone, as a ``transformers`` model.

Two auxiliary exits branch off intermediate depths of one shared backbone; the backbone's own pooled feature is
the third (deepest) exit. Every exit ends in OLTR's cosine classifier with scale 30. CNNs predict with the last
exit, ViTs with the sum of the exits (the original's rules); a model may also carry exit weights learned on
validation. Being a ``PreTrainedModel`` gives ``save_pretrained``/``from_pretrained``/``push_to_hub`` with
safetensors weights and the config (tau, class counts, labels) in one folder.

This file, ``heads.py`` and ``backbones.py`` are saved with every model (``register_for_auto_class``), so a model
folder or Hub repository loads with ``trust_remote_code=True`` where cadel is not installed: they import only torch,
timm and transformers, and relative imports of each other.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import timm
import torch
import torch.nn.functional as F
from timm.models import is_model_in_modules
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.utils import ModelOutput

from .backbones import UnsupportedBackboneError, backbone_family, default_inference_rule
from .heads import (
    HE_NORMAL,
    ConvAuxHead,
    CosineClassifier,
    LightAuxHead,
    ViTAuxExit,
    adjust_logits,
    combine_exits,
    he_normal_,
    weighted_scores,
)

INFERENCE_RULES = ("auto", "last", "sum", "weighted")


class CadelConfig(PretrainedConfig):
    """Everything needed to rebuild a CADEL model and to predict with it (tau, class counts and labels included).

    ``inference_rule``: 'auto' (the family's rule), 'last', 'sum', or 'weighted' with ``exit_weights``.
    """

    model_type = "cadel"

    def __init__(self, backbone: str = "resnet50", num_labels: Optional[int] = None, image_size: int = 224,
                 exit_stages: Sequence[int] = (-3, -2), exit_blocks: Optional[Sequence[int]] = None,
                 aux_head: str = "faithful", aux_width: int = 2048, aux_groups: int = 32, aux_padding: str = "valid",
                 aux_depth: int = 2, aux_norm: bool = False, cosine_scale: float = 30.0, drop_path: float = 0.0,
                 inference_rule: str = "auto", exit_weights: Optional[List[float]] = None, tau: float = 0.0,
                 class_counts: Optional[List[int]] = None, backbone_kwargs: Optional[dict] = None,
                 image_mean: Sequence[float] = (0.485, 0.456, 0.406),
                 image_std: Sequence[float] = (0.229, 0.224, 0.225), **kwargs):
        if inference_rule not in INFERENCE_RULES:
            raise ValueError(f"inference_rule {inference_rule!r} is not one of {INFERENCE_RULES}")
        if inference_rule == "weighted" and not exit_weights:
            raise ValueError("inference_rule 'weighted' needs exit_weights (one per exit, learned by stage 2)")
        self.backbone = backbone
        self.backbone_kwargs = dict(backbone_kwargs or {})
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
        self.exit_weights = list(exit_weights) if exit_weights is not None else None
        self.tau = tau
        self.class_counts = list(class_counts) if class_counts is not None else None
        self.image_mean = list(image_mean)
        self.image_std = list(image_std)
        if num_labels is not None and "id2label" not in kwargs:
            kwargs["num_labels"] = num_labels
        super().__init__(**kwargs)

    @property
    def family(self) -> str:
        return backbone_family(self.backbone)

    @property
    def is_vit(self) -> bool:
        return self.family == "vit"

    @property
    def resolved_inference_rule(self) -> str:
        return default_inference_rule(self.family) if self.inference_rule == "auto" else self.inference_rule


@dataclass
class CadelOutput(ModelOutput):
    """``logits`` are the prediction scores (exits combined by the inference rule, tau-adjusted when tau > 0);
    ``exit_logits`` are the raw logits of every exit, shallow to deep, for training and ensembles."""

    loss: Optional[torch.Tensor] = None
    logits: Optional[torch.Tensor] = None
    exit_logits: Optional[Tuple[torch.Tensor, ...]] = None


def predicted_scores(exit_logits: Sequence[torch.Tensor], config: CadelConfig) -> torch.Tensor:
    """The model's prediction scores from its exit logits: its inference rule, adjusted with its tau."""
    rule, counts, tau = config.resolved_inference_rule, config.class_counts, config.tau if config.class_counts else 0
    if rule == "weighted":
        return weighted_scores(exit_logits, config.exit_weights, counts, tau)
    scores = combine_exits(exit_logits, rule)
    return adjust_logits(scores, counts, tau, num_terms=len(exit_logits) if rule == "sum" else 1) if tau else scores


class CadelForImageClassification(PreTrainedModel):
    config_class = CadelConfig
    main_input_name = "pixel_values"
    base_model_prefix = "cadel"

    def __init__(self, config: CadelConfig, pretrained_backbone: bool = False):
        super().__init__(config)
        c = config
        if c.class_counts is not None and len(c.class_counts) != c.num_labels:
            raise ValueError(f"the config has {len(c.class_counts)} class counts for {c.num_labels} labels; when "
                             f"changing num_labels, also pass class_counts=[...] (training images per class of the "
                             f"new data) and id2label, e.g. from_pretrained(path, num_labels={c.num_labels}, "
                             f"class_counts=counts, id2label=names, ignore_mismatched_sizes=True)")
        if c.is_vit:
            self._build_vit(c, pretrained_backbone)
        else:
            self._build_cnn(c, pretrained_backbone)
        if not any(t.is_meta for t in itertools.chain(self.parameters(), self.buffers())):
            # Built for real (not by from_pretrained, which builds on the meta device and loads): every tensor got
            # its method-specific init from the constructors above, which transformers' init pass must keep.
            for t in itertools.chain(self.parameters(), self.buffers()):
                t._is_hf_initialized = True
        self.post_init()

    # -- construction ----------------------------------------------------------------------------------------
    def _build_cnn(self, c: CadelConfig, pretrained: bool):
        # The original initialised every BatchNorm to gamma=1; timm's ResNets zero the last one of each block.
        kwargs = {"zero_init_last": False} if is_model_in_modules(c.backbone.split(".")[0], ["resnet"]) else {}
        try:
            self.backbone = timm.create_model(c.backbone, pretrained=pretrained, features_only=True,
                                              drop_path_rate=c.drop_path or None, **kwargs, **c.backbone_kwargs)
        except (RuntimeError, AssertionError, TypeError) as exc:
            if "features_only" not in str(exc) and "feature" not in str(exc):
                raise
            raise UnsupportedBackboneError(
                f"{c.backbone} cannot give intermediate feature maps (timm features_only: {exc}); cadel's CNN path "
                f"needs them. Pick a backbone timm builds with features_only=True, or a plain ViT") from exc
        channels = self.backbone.feature_info.channels()
        reductions = self.backbone.feature_info.reduction()
        self.channels_last_features = getattr(self.backbone, "output_fmt", "NCHW") == "NHWC"  # e.g. swin
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
        try:
            self.backbone = timm.create_model(c.backbone, pretrained=pretrained, **{**kwargs, **c.backbone_kwargs})
        except AssertionError as exc:  # e.g. distilled DeiTs, whose head needs token pooling
            raise UnsupportedBackboneError(f"{c.backbone} cannot be built with mean pooling of the patch tokens, "
                                           f"which the cascade's last exit uses ({exc})") from exc
        vit = self.backbone
        depth = len(vit.blocks)
        blocks = c.exit_blocks if c.exit_blocks is not None else [round(8 * depth / 12) - 1, round(10 * depth / 12) - 1]
        if any(not 0 <= b < depth - 1 for b in blocks) or sorted(set(blocks)) != list(blocks):
            raise ValueError(f"exit_blocks {blocks} must be increasing block indices below {depth - 1}")
        self.exit_indices = list(blocks)
        dim = vit.embed_dim
        first = vit.blocks[0]
        mlp_ratio = first.mlp.fc2.in_features / dim  # hidden width (also for eva's gated MLPs)
        # Each aux exit's blocks use the drop-path rate of the block they branch from (dpr[7], dpr[9] in ViT-B).
        self.aux_exits = nn.ModuleList([
            ViTAuxExit(dim, first.attn.num_heads, mlp_ratio, c.aux_depth,
                       getattr(vit.blocks[b].drop_path1, "drop_prob", 0.0), vit.num_prefix_tokens, c.num_labels,
                       c.aux_norm, c.cosine_scale) for b in blocks])
        self.classifier = CosineClassifier(dim, c.num_labels, c.cosine_scale)

    def _init_weights(self, module):
        """Re-create what ``from_pretrained`` could not load (a head for a new label count) as the constructors do:
        cosine classifiers uniform(+-1/sqrt(D)), the published heads' convs He-normal, other convs and linears
        (Places heads, ViT aux blocks) PyTorch's defaults, norms 1/0. Loaded tensors are left alone."""
        from transformers import initialization as init
        if isinstance(module, CosineClassifier):
            bound = 1.0 / module.weight.shape[1] ** 0.5
            init.uniform_(module.weight, -bound, bound)
        elif isinstance(module, nn.Conv2d) and getattr(module, "init_scheme", None) == HE_NORMAL:
            he_normal_(module)
            if module.bias is not None:  # the bias keeps PyTorch's default, uniform(+-1/sqrt(fan_in))
                fan_in = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
                init.uniform_(module.bias, -fan_in ** -0.5, fan_in ** -0.5)
        elif isinstance(module, (nn.Conv2d, nn.Linear)):
            module.reset_parameters()
        elif isinstance(module, (nn.BatchNorm2d, nn.LayerNorm)):
            if module.weight is not None:
                init.ones_(module.weight)
                init.zeros_(module.bias)
            if getattr(module, "running_mean", None) is not None:
                init.zeros_(module.running_mean)
                init.ones_(module.running_var)
                init.zeros_(module.num_batches_tracked)

    # -- forward ---------------------------------------------------------------------------------------------
    def exit_logits(self, pixel_values: torch.Tensor, exits: Optional[Sequence[int]] = None) -> List[torch.Tensor]:
        """Raw logits of the requested 1-based ``exits`` (default: all), shallow to deep. Skipping the aux exits
        of a CNN at evaluation saves most of the cascade's compute."""
        num_exits = len(self.aux_exits) + 1
        wanted = set(range(1, num_exits + 1) if exits is None else exits)
        aux_wanted = [k for k in range(1, num_exits) if k in wanted]
        outs = []
        if self.config.is_vit:
            vit = self.backbone
            if aux_wanted:
                final, intermediates = vit.forward_intermediates(
                    pixel_values, indices=self.exit_indices, return_prefix_tokens=True, norm=False, output_fmt="NLC")
                for k in aux_wanted:  # the aux blocks see the whole sequence, prefix (class) tokens first
                    patches, prefix = intermediates[k - 1]
                    outs.append(self.aux_exits[k - 1](torch.cat([prefix, patches], dim=1)))
            else:
                final = vit.forward_features(pixel_values)
            if num_exits in wanted:
                outs.append(self.classifier(vit.forward_head(final, pre_logits=True)))
            return outs
        feats = self.backbone(pixel_values)
        if self.channels_last_features:
            feats = [f.permute(0, 3, 1, 2) for f in feats]
        outs = [self.aux_exits[k - 1](feats[self.exit_indices[k - 1]]) for k in aux_wanted]
        if num_exits in wanted:
            outs.append(self.classifier(feats[-1].mean((2, 3))))
        return outs

    def forward(self, pixel_values: torch.Tensor, labels: Optional[torch.Tensor] = None,
                return_dict: Optional[bool] = None, **kwargs) -> CadelOutput:
        exit_logits = self.exit_logits(pixel_values)
        scores = predicted_scores(exit_logits, self.config)
        loss = F.cross_entropy(scores, labels) if labels is not None else None
        return CadelOutput(loss=loss, logits=scores, exit_logits=tuple(exit_logits))

    def exit_classifier(self, exit_number: int) -> CosineClassifier:
        """The cosine classifier ending 1-based exit ``exit_number`` (the last one is the backbone's own)."""
        return self.classifier if exit_number == len(self.aux_exits) + 1 else self.aux_exits[exit_number - 1].classifier

    def num_parameters_per_exit(self) -> List[int]:
        """Parameters owned by each aux exit, then by the last exit's classifier (backbone counted apart)."""
        return [sum(p.numel() for p in m.parameters()) for m in list(self.aux_exits) + [self.classifier]]


CadelConfig.register_for_auto_class()
CadelForImageClassification.register_for_auto_class("AutoModelForImageClassification")
