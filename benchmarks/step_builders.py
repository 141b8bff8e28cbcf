"""What ``train_step.py`` times: the settings every row of a comparison shares, the model of each variant (plain
timm or the CADEL cascade), its forward FLOPs, and the closure that runs one optimizer step."""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable, Dict

import torch
import torch.nn.functional as F
from torch import nn

from cadel_modeling.modeling import CadelConfig, CadelForImageClassification, backbone_family
from cadel_modeling.modeling.backbones import default_base_loss
from cadel_modeling.training.losses import CascadeLoss, mixup_batch

# Backward = input gradients + weight gradients, each about one forward. (FlopCounterMode can count the backward
# too, but torch 2.14's formula ignores `groups` in the weight gradient, which inflates ResNeXt's and the heads'.)
TRAIN_FLOPS_PER_FORWARD = 3


@dataclass
class StepSettings:
    """What every row of one comparison shares."""

    image_size: int = 224
    batch_size: int = 64
    num_classes: int = 1000
    device: str = "cuda"
    precision: str = "bf16"          # bf16 | fp16 | fp32 (autocast dtype; fp32 = no autocast)
    channels_last: bool = True       # CNNs only
    compile: bool = False
    aux_width: int = 2048
    aux_padding: str = "valid"
    warmup: int = 8
    steps: int = 25
    mixup_alpha: float = 0.2
    T: float = 0.5                   # share of the plain loss in the annealed cascade loss (mid-schedule)


# ------------------------------------------------------------------------------------------------ models
def build(backbone: str, variant: str, s: StepSettings) -> nn.Module:
    """The plain timm classifier or the CADEL cascade (``variant`` light/faithful) of ``backbone``."""
    if variant == "plain":
        import timm
        kwargs = {"img_size": s.image_size} if backbone_family(backbone) == "vit" else {}
        return timm.create_model(backbone, num_classes=s.num_classes, **kwargs)
    head = variant.split("+")[0]
    config = CadelConfig(backbone=backbone, num_labels=s.num_classes, image_size=s.image_size, aux_head=head,
                         aux_width=s.aux_width, aux_padding=s.aux_padding)
    return CadelForImageClassification(config)


def count_flops(backbone: str, variant: str, s: StepSettings) -> Dict[str, float]:
    """Forward FLOPs (2 per multiply-accumulate) per image, counted on a meta-device twin with a batch of 2
    (BatchNorm needs more than one sample in training mode), and the training step's 3x that."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        model = build(backbone, variant, s).train()
    batch = 2
    with FlopCounterMode(display=False) as counter:
        model(torch.empty(batch, 3, s.image_size, s.image_size, device="meta"))
    forward = counter.get_total_flops() / batch / 1e9
    return {"forward_gflops": forward, "train_gflops": TRAIN_FLOPS_PER_FORWARD * forward}


# ------------------------------------------------------------------------------------------------ one step
def autocast_context(s: StepSettings):
    if s.precision == "fp32":
        return nullcontext()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[s.precision]
    return torch.autocast(device_type=torch.device(s.device).type, dtype=dtype)


def make_step(model: nn.Module, variant: str, x: torch.Tensor, y: torch.Tensor, s: StepSettings
              ) -> Callable[[], None]:
    """A closure running one optimizer step of ``variant`` on the batch (x, y): the loop body being timed."""
    fused = {"fused": True} if x.is_cuda else {}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4, **fused)
    scaler = torch.amp.GradScaler(x.device.type, enabled=s.precision == "fp16")
    forward = torch.compile(model) if s.compile else model

    if variant == "plain":
        def loss_of_step():
            with autocast_context(s):
                return F.cross_entropy(forward(x), y)
    else:
        base_loss = default_base_loss(model.config.family)
        loss_fn = CascadeLoss(base_loss=base_loss)
        generator = torch.Generator().manual_seed(0)

        def loss_of_step():
            x_mixed, y_a, y_b, lam = mixup_batch(x, y, s.mixup_alpha, generator)
            with autocast_context(s):
                exit_logits = forward(pixel_values=x_mixed).exit_logits
            return loss_fn(exit_logits, y_a, y_b, lam, s.T)

    def step():
        loss = loss_of_step()
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    return step
