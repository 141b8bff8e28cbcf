"""The exits' building blocks: OLTR's cosine classifier, the published CNN auxiliary head, a light CNN head and the
ViT auxiliary exit; and the rules that combine exit logits and adjust them for the class prior.

Part of the remote code saved with every model (imports only torch and timm). Each module records how the method
initialises it (``init_scheme``), so that ``CadelForImageClassification._init_weights`` can re-create a head that
``from_pretrained`` could not load (a new label count) exactly as the constructor would.
"""
from __future__ import annotations

import math
from functools import partial
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

HE_NORMAL = "he_normal"  # the original ResNet init loop: normal(0, sqrt(2 / (k * k * C_out)))


class CosineClassifier(nn.Module):
    """OLTR's CosNorm: ``s * (|x|/(1+|x|)) * <x/|x|, w_c/|w_c|>``; no bias, so |logit| < s."""

    def __init__(self, in_features: int, num_classes: int, scale: float = 30.0):
        super().__init__()
        self.scale = scale
        self.weight = nn.Parameter(torch.empty(num_classes, in_features))
        self.reset_parameters()

    def reset_parameters(self, generator: Optional[torch.Generator] = None) -> None:
        bound = 1.0 / math.sqrt(self.weight.shape[1])
        with torch.no_grad():
            if generator is None:
                self.weight.uniform_(-bound, bound)
            else:
                self.weight.copy_(torch.empty(self.weight.shape).uniform_(-bound, bound, generator=generator))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        squashed = x / (1.0 + x.norm(p=2, dim=1, keepdim=True))  # == (|x|/(1+|x|)) * x/|x|, safe at x = 0
        return self.scale * F.linear(squashed, F.normalize(self.weight, dim=1))


def he_normal_(conv: nn.Conv2d) -> None:
    nn.init.normal_(conv.weight, 0.0, math.sqrt(2.0 / (conv.kernel_size[0] * conv.kernel_size[1] * conv.out_channels)))


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
    parameters and cost 34.8 / 8.5 GMACs, about ten times the backbone (``costs.model_summary`` prints this).
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
                    m.init_scheme = HE_NORMAL
                    he_normal_(m)

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
    that faithful behaviour. Its blocks keep PyTorch's default init, as in the original.
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


# ------------------------------------------------------------------------------------------------ combining exits
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


def adjust_logits(scores: torch.Tensor, class_counts: Sequence[int], tau: float, num_terms: float = 1) -> torch.Tensor:
    """Post-hoc logit adjustment ``z - tau * log(prior)`` for each of ``num_terms`` summed exits.

    The original adds ``tau * (log(1/C) - log prior)`` per exit; the constant never changes the argmax and is
    dropped here so scores stay comparable across tau.
    """
    if tau == 0:
        return scores
    return scores - num_terms * tau * log_prior(class_counts, scores.device).to(scores.dtype)


def weighted_scores(exit_logits: Sequence[torch.Tensor], weights: Sequence[float], class_counts: Sequence[int],
                    tau: float) -> torch.Tensor:
    """``sum_k w_k (z_k - tau log prior)``: each exit logit-adjusted with ``tau``, then weighted.

    Weights ``[0, .., 0, 1]`` give exactly the CNN rule's scores and ``[1, .., 1]`` exactly the ViT rule's (zero
    weights are skipped, unit weights multiply exactly), so a search that includes them can only match or beat both.
    """
    if len(weights) != len(exit_logits) or min(weights) < 0 or sum(weights) <= 0:
        raise ValueError(f"need {len(exit_logits)} non-negative exit weights with a positive sum, got {list(weights)}")
    combined = sum(w * z for w, z in zip(weights, exit_logits) if w)
    return adjust_logits(combined, class_counts, tau, num_terms=sum(weights))
