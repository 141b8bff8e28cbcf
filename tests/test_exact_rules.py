"""Exact values of the small rules every exit and every step goes through, against float64 re-computations written
from their definitions: the cosine classifier (OLTR's CosNorm), the log prior and post-hoc adjustment, combined exits,
and the learning-rate schedules (including fractional warmup and epochs past an extended schedule)."""
import math

import numpy as np
import pytest
import torch

from cadel_modeling.modeling.heads import CosineClassifier, adjust_logits, combine_exits, log_prior
from cadel_modeling.training.optim import LRSchedule


def test_cosine_classifier_is_scale_times_squashed_input_against_unit_class_vectors():
    head = CosineClassifier(in_features=3, num_classes=2, scale=16.0)
    w = np.array([[3.0, 0.0, 4.0], [1.0, -2.0, 2.0]])  # norms 5 and 3
    with torch.no_grad():
        head.weight.copy_(torch.tensor(w, dtype=torch.float32))
    x = np.array([[0.0, 0.0, 0.0], [1.0, 2.0, 2.0], [-6.0, 0.0, 8.0]])  # norms 0, 3, 10
    expected = 16.0 * (x / (1.0 + np.linalg.norm(x, axis=1, keepdims=True))) @ (w / np.linalg.norm(w, axis=1,
                                                                                                  keepdims=True)).T
    got = head(torch.tensor(x, dtype=torch.float32)).detach().double().numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)
    assert expected[1, 0] == pytest.approx(16 * 0.75 * (3 + 8) / 15)  # |x| = 3: squash 3/4; <x/3, w/5> = 11/15


def test_cosine_classifier_initialisation_is_uniform_within_one_over_sqrt_fan_in_and_seedable():
    head = CosineClassifier(in_features=400, num_classes=50)
    bound = 1 / math.sqrt(400)
    w = head.weight.detach()
    assert w.abs().max() <= bound and w.abs().max() > 0.99 * bound and abs(float(w.mean())) < 0.01 * bound
    assert float(w.std()) == pytest.approx(bound / math.sqrt(3), rel=0.02)  # the std of U(-b, b)
    a, b = CosineClassifier(400, 50), CosineClassifier(400, 50)
    a.reset_parameters(torch.Generator().manual_seed(3))
    b.reset_parameters(torch.Generator().manual_seed(3))
    assert torch.equal(a.weight, b.weight) and not torch.equal(a.weight, head.weight)
    assert a.weight.abs().max() <= bound


def test_log_prior_adjustment_and_exit_sums_are_exact():
    counts = [1, 3, 4]
    assert log_prior(counts).tolist() == pytest.approx([math.log(1 / 8), math.log(3 / 8), math.log(4 / 8)])
    assert log_prior(counts).dtype == torch.float32
    z = torch.tensor([[1.0, 2.0, 3.0]])
    adjusted = adjust_logits(z, counts, tau=0.5, num_terms=2)
    assert adjusted.tolist()[0] == pytest.approx([1 - math.log(1 / 8), 2 - math.log(3 / 8), 3 - math.log(1 / 2)])
    assert adjust_logits(z, counts, tau=0.0) is z
    exits = [torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 2.0]]), torch.tensor([[4.0, 4.0]])]
    assert combine_exits(exits, exits=[1, 3]).tolist() == [[5.0, 4.0]]
    assert combine_exits(exits, "sum").tolist() == [[5.0, 6.0]] and combine_exits(exits, "last") is exits[-1]


def cosine(lo, hi, progress):
    return lo + (hi - lo) * (1 + math.cos(math.pi * progress)) / 2


def test_cosine_epoch_schedule_values_and_the_hold_past_its_end():
    s = LRSchedule("cosine_epoch", lr=0.1, epochs=4, min_lr=0.01)
    assert [s.at(e) for e in (1, 2, 3, 4)] == pytest.approx([cosine(0.01, 0.1, (e - 1) / 4) for e in (1, 2, 3, 4)])
    assert s.at(2, step=7, steps_per_epoch=10) == s.at(2)  # constant within an epoch
    assert s.at(6, 3, 10) == s.at(4)  # an extended run holds the last epoch's value


@pytest.mark.parametrize("warmup, epochs", [(2.0, 5), (2.5, 3)])
def test_warmup_cosine_schedule_values_step_by_step(warmup, epochs):
    s = LRSchedule("warmup_cosine", lr=0.2, epochs=epochs, min_lr=0.02, warmup_epochs=warmup)
    steps = 4
    for epoch in range(1, epochs + 1):
        for step in range(steps):
            t = epoch + step / steps
            want = 0.2 * t / warmup if t < warmup else cosine(0.02, 0.2, (t - warmup) / (epochs - warmup))
            assert s.at(epoch, step, steps) == pytest.approx(want, rel=1e-12), (epoch, step)
    assert s.at(epochs + 2, 0, steps) == s.at(epochs, steps - 1, steps)  # held past the end: its last step's value


@pytest.mark.parametrize("padding, places", [("valid", False), ("valid", True), ("same", False), ("same", True)])
def test_the_published_aux_head_layout_and_its_smallest_feature_map(padding, places):
    from cadel_modeling.modeling.heads import HE_NORMAL, ConvAuxHead
    head = ConvAuxHead(in_channels=4, num_classes=3, width=16, groups=4, padding=padding, places=places).eval()
    pad = 0 if padding == "valid" else 1
    convs = [m for m in head.body.modules() if isinstance(m, torch.nn.Conv2d)]
    last_kernel, last_pad = (3, pad) if places else (1, 0)
    assert [(c.in_channels, c.out_channels, c.kernel_size[0], c.padding[0], c.groups) for c in convs] == [
        (4, 16, 3, 1, 1), (16, 16, 3, pad, 4), (16, 16, 3, pad, 1), (16, 32, last_kernel, last_pad, 1)]
    se = head.body[-1]
    assert (se.fc1.in_features, se.fc1.out_features, se.fc2.out_features) == (32, 4, 32)  # reduction 8
    assert head.classifier.weight.shape == (3, 32) and head.dropout.p == 0.5
    # 'valid' loses 2 pixels per 3x3 conv after the first (and Places' last): the smallest map that leaves 1x1
    assert head.min_size == (1 + 2 * 2 + 2 * places if padding == "valid" else 1)
    with torch.no_grad():
        assert head(torch.randn(2, 4, head.min_size, head.min_size)).shape == (2, 3)
        if head.min_size > 1:
            with pytest.raises(RuntimeError):
                head(torch.randn(2, 4, head.min_size - 1, head.min_size - 1))
    # the original's ResNet init loop covered the Aux_Layer2 heads (He normal), not the Places heads
    assert all(getattr(c, "init_scheme", None) == (None if places else HE_NORMAL) for c in convs)
    if not places:
        big = ConvAuxHead(in_channels=64, num_classes=3, width=64, groups=4)
        conv = [m for m in big.body.modules() if isinstance(m, torch.nn.Conv2d)][2]
        assert float(conv.weight.std()) == pytest.approx(math.sqrt(2 / (3 * 3 * 64)), rel=0.05)
