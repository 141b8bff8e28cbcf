"""Post-hoc logit adjustment, tau selection and exit combination, against values computed by hand."""
import math

import numpy as np
import torch

from cadel_modeling.modeling.heads import adjust_logits, combine_exits, log_prior
from cadel_modeling.posthoc import TAU_GRIDS, ensemble_scores, pick_tau, tau_sweep


def test_log_prior_is_log_of_class_frequencies():
    assert torch.allclose(log_prior([3, 1]), torch.tensor([math.log(0.75), math.log(0.25)]))


def test_tau_zero_is_the_raw_argmax():
    torch.manual_seed(0)
    z = torch.randn(3, 50, 7)
    counts = [100, 50, 20, 10, 5, 3, 1]
    for rule in ("last", "sum"):
        raw = combine_exits(list(z), rule)
        assert torch.equal(ensemble_scores(z, counts, 0.0, rule).argmax(-1), raw.argmax(-1))


def test_adjustment_by_hand():
    # Two classes with counts 3:1 -> log prior [log .75, log .25]; tau = 1 subtracts it from each summed exit.
    z = torch.tensor([[1.0, 0.0]])
    adjusted = adjust_logits(z, [3, 1], 1.0)
    assert torch.allclose(adjusted, torch.tensor([[1 - math.log(0.75), -math.log(0.25)]]))
    assert adjusted.argmax().item() == 1  # the rare class wins after adjustment
    exits = torch.stack([z, z, z])  # ViT rule: sum of three exits, each adjusted
    assert torch.allclose(ensemble_scores(exits, [3, 1], 1.0, "sum"), 3 * adjusted)


def test_original_constant_does_not_change_predictions():
    # The original adds tau * (log(1/C) - log prior) per exit (and divides the CNN score by 3).
    torch.manual_seed(1)
    z = torch.randn(3, 100, 5)
    counts = np.array([50, 20, 10, 5, 2])
    prior = torch.tensor(np.log(counts / counts.sum()), dtype=torch.float32)
    for tau in (0.5, 1.3):
        original_cnn = (z[-1] + tau * (math.log(1 / 5) - prior)) / 3
        original_vit = sum(z[k] + tau * (math.log(1 / 5) - prior) for k in range(3))
        assert torch.equal(ensemble_scores(z, counts, tau, "last").argmax(-1), original_cnn.argmax(-1))
        assert torch.equal(ensemble_scores(z, counts, tau, "sum").argmax(-1), original_vit.argmax(-1))


def test_chosen_exits_and_bad_rule():
    z = torch.arange(12.0).reshape(3, 2, 2)
    assert torch.equal(combine_exits(list(z), exits=[1, 3]), z[0] + z[2])
    try:
        combine_exits(list(z), "mean")
    except ValueError as exc:
        assert "last" in str(exc)
    else:
        raise AssertionError("an unknown rule must raise")


def test_sweep_matches_per_tau_recomputation_and_picks_first_maximum():
    torch.manual_seed(2)
    counts = [200, 100, 40, 10, 4]
    labels = torch.arange(5).repeat(40)
    z = torch.randn(3, 200, 5) + 2 * torch.nn.functional.one_hot(labels, 5) + log_prior(counts)  # head-biased
    grid = TAU_GRIDS["fine"][:21]
    sweep = tau_sweep(z, labels, counts, grid, "last")
    for row in sweep:
        pred = (z[-1] - row["tau"] * log_prior(counts)).argmax(-1)
        assert row["top1"] == (pred == labels).float().mean().item()
    best = max(r["top1"] for r in sweep)
    assert pick_tau(sweep) == next(r["tau"] for r in sweep if r["top1"] == best)
    assert sweep[0]["top1"] < best  # adjustment helps on this head-biased example
    assert pick_tau([{"tau": 0.9, "top1": 0.5}, {"tau": 1.0, "top1": 0.6}, {"tau": 1.1, "top1": 0.6}]) == 1.0
