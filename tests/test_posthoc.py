"""Post-hoc logit adjustment, tau selection and exit combination, against values computed by hand."""
import math

import numpy as np
import pytest
import torch

from cadel_modeling.modeling.heads import adjust_logits, combine_exits, log_prior
from cadel_modeling.posthoc import TAU_GRIDS, ensemble_scores, pick_tau, search_exit_weights, simplex_grid, tau_sweep


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


def test_tau_sweep_of_chosen_exits_matches_a_hand_computation():
    gen = torch.Generator().manual_seed(0)
    z, labels, counts = torch.randn(3, 60, 4, generator=gen), torch.randint(0, 4, (60,), generator=gen), [40, 20, 5, 1]
    prior = np.log(np.array(counts, dtype=np.float64) / sum(counts))
    for exits in ([1], [1, 3]):
        for row in tau_sweep(z, labels, counts, [0.0, 1.0], "last", exits):
            scores = sum(z[k - 1].double().numpy() - row["tau"] * prior for k in exits)  # each exit adjusted
            assert row["top1"] == pytest.approx(np.mean(scores.argmax(-1) == labels.numpy()))
    first_only = tau_sweep(z, labels, counts, [0.0], "last", [1])[0]["top1"]
    assert first_only != tau_sweep(z, labels, counts, [0.0], "last")[0]["top1"]  # the exits argument matters here


@pytest.mark.parametrize("rule, weights, source", [("last", [0.0, 1.0], "last exit (CNN rule)"),
                                                   ("sum", [1.0, 1.0], "sum of exits (ViT rule)")])
def test_exit_weight_search_keeps_the_models_rule_on_a_tie_and_reports_every_field(rule, weights, source):
    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(4).repeat(10)
    decisive = 10 * torch.nn.functional.one_hot(labels, 4).float()
    z = torch.stack([0.1 * torch.randn(40, 4, generator=gen), decisive])   # both rules and (0, 1) score 100 %
    found = search_exit_weights(z, labels, [40, 20, 5, 1], [0.0, 1.0], 0.5, rule)
    assert found == {"weights": weights, "tau": 0.0, "val_top1": 1.0, "source": source,
                     "normalized_weights": [w / sum(weights) for w in weights],
                     "rules_val_top1": {"last exit (CNN rule)": 1.0, "sum of exits (ViT rule)": 1.0},
                     "grid_step": 0.5, "tau_grid": [0.0, 1.0], "num_candidates": (2 + 3) * 2}


def test_simplex_grid_steps():
    assert simplex_grid(3, 1.0) == [(0.0, 0.0, 1.0), (0.0, 1.0, 0.0), (1.0, 0.0, 0.0)]
    assert simplex_grid(2, 0.5) == [(0.0, 1.0), (0.5, 0.5), (1.0, 0.0)]
    for bad in (0.0, -0.5, 2.0, 0.3):
        with pytest.raises(ValueError, match="must be 1/m for a whole m"):
            simplex_grid(3, bad)
