"""The exit-rule choice of ``--select_inference_rule``: the best weighting on validation replaces the model's own rule
only when a paired bootstrap over the validation images says its lead is more than the luck of the draw. Synthetic
two-exit logits whose per-image correctness is known, so every count is exact."""
import numpy as np
import pytest
import torch

from cadel_modeling.modeling import CadelConfig
from cadel_modeling.modeling.heads import weighted_scores
from cadel_modeling.posthoc import paired_bootstrap_ahead, rule_change_evidence, rule_evidence_text, search_exit_weights
from cadel_modeling.stages.stage2 import select_inference_rule

C = 5
COUNTS = [10] * C  # a uniform prior: tau shifts every score alike, so only the exit weighting matters
# per image: both exits right, only the last right, only exit 1 right, both wrong
NOISY = [0.66, 0.14, 0.10, 0.10]        # the last exit is better (80 % against 76 %)
EXIT1_BETTER = [0.55, 0.05, 0.25, 0.15]  # exit 1 is much better (80 % against 60 %)


def two_exits(n: int, probs, seed: int):
    """[2, n, C] logits: one-hot on each exit's prediction (the label when right, another class when wrong), plus
    noise that only breaks the ties of equal weights; returns the logits, labels and each image's kind."""
    gen = torch.Generator().manual_seed(seed)
    kind = torch.multinomial(torch.tensor(probs), n, replacement=True, generator=gen)
    labels = torch.randint(0, C, (n,), generator=gen)
    preds = [torch.where(right, labels, (labels + torch.randint(1, C, (n,), generator=gen)) % C)
             for right in ((kind == 0) | (kind == 2), (kind == 0) | (kind == 1))]
    z = torch.stack([torch.nn.functional.one_hot(p, C).float() for p in preds])
    return z + 0.01 * torch.randn(2, n, C, generator=gen), labels, kind


def top1(z, labels, weights, tau):
    return (weighted_scores(z, weights, COUNTS, tau).argmax(-1) == labels).float().mean().item()


def choose(probs, seed, confidence=0.95):
    z, labels, kind = two_exits(200, probs, seed)
    ensemble = search_exit_weights(z, labels, COUNTS, [0.0, 1.0], 0.1, "last")
    return ensemble, rule_change_evidence(z, labels, COUNTS, ensemble, "last", 0.0, 1000, confidence), kind


def model_config():
    return CadelConfig(backbone="test_resnet", num_labels=C, class_counts=COUNTS, tau=0.0)


def test_bootstrap_matches_an_independent_numpy_loop_with_the_same_seed():
    gen = np.random.default_rng(7)
    for n, resamples in ((137, 500), (50_000, 300)):  # the second is drawn in chunks of 83 resamples
        candidate, baseline = gen.random(n) < 0.6, gen.random(n) < 0.58
        rng, ahead = np.random.default_rng(0), 0
        for _ in range(resamples):
            idx = rng.integers(0, n, size=n)
            ahead += int(candidate[idx].sum() > baseline[idx].sum())
        assert paired_bootstrap_ahead(candidate, baseline, resamples, seed=0) == ahead / resamples
    right = np.ones(50, bool)
    assert paired_bootstrap_ahead(right, right, 100) == 0.0  # a tie is not ahead
    assert paired_bootstrap_ahead(right, ~right, 100) == 1.0
    # one image each way: ahead only when both draws take the candidate's image, probability 1/4
    assert paired_bootstrap_ahead([1, 0], [0, 1], 4000) == pytest.approx(0.25, abs=0.03)


def test_a_noisy_lead_on_a_small_val_split_keeps_the_papers_rule():
    ensemble, evidence, kind = choose(NOISY, seed=13)
    # the search prefers exit 1 (0.6/0.4 gives exit 1 the final say) by 5 images of 200
    assert ensemble["source"] == "grid" and ensemble["weights"] == [0.6, 0.4]
    assert evidence["candidate_val_top1"] == ((kind == 0) | (kind == 2)).sum().item() / 200
    assert evidence["model_rule_val_top1"] == ((kind == 0) | (kind == 1)).sum().item() / 200
    assert evidence["gain"] == pytest.approx(5 / 200) and evidence["val_size"] == 200
    assert evidence["fraction_ahead"] < 0.95 and not evidence["strong"]
    assert {k: evidence[k] for k in ("model_rule", "resamples", "seed", "threshold")} == {
        "model_rule": "last exit (CNN rule)", "resamples": 1000, "seed": 0, "threshold": 0.95}
    z, labels, _ = two_exits(20_000, NOISY, seed=1013)  # and on a large test split the lead was noise
    assert top1(z, labels, ensemble["weights"], ensemble["tau"]) < top1(z, labels, [0.0, 1.0], 0.0) - 0.02
    config = model_config()
    chosen = select_inference_rule(config, ensemble, evidence)
    assert (config.inference_rule, config.exit_weights, config.tau) == ("auto", None, 0.0)  # untouched
    assert chosen == {"rule": "last", "exit_weights": None, "tau": 0.0, "selected_on": "val", "moved": False,
                      "source": "last exit (CNN rule)", "val_top1": evidence["model_rule_val_top1"]}
    assert "too weak evidence" in rule_evidence_text(evidence)
    # the best-on-val choice (threshold 0, what --select_inference_rule did before) would have moved
    _, lenient, _ = choose(NOISY, seed=13, confidence=0.0)
    assert lenient["strong"] and lenient["fraction_ahead"] == evidence["fraction_ahead"]


def test_a_real_gain_is_taken():
    ensemble, evidence, _ = choose(EXIT1_BETTER, seed=0)
    assert evidence["gain"] > 0.1 and evidence["fraction_ahead"] == 1.0 and evidence["strong"]
    config = model_config()
    chosen = select_inference_rule(config, ensemble, evidence)
    assert (config.inference_rule, config.exit_weights, config.tau) == ("weighted", ensemble["weights"],
                                                                         ensemble["tau"])
    assert chosen["moved"] and chosen["source"] == "grid" and chosen["val_top1"] == evidence["candidate_val_top1"]
    assert evidence["candidate_val_top1"] == pytest.approx(ensemble["val_top1"])  # a float32 mean there
    z, labels, _ = two_exits(20_000, EXIT1_BETTER, seed=1000)
    assert top1(z, labels, ensemble["weights"], ensemble["tau"]) > top1(z, labels, [0.0, 1.0], 0.0) + 0.1
    assert "strong evidence" in rule_evidence_text(evidence)


def test_the_models_own_rule_as_the_best_on_val_is_never_a_move():
    z, labels, _ = two_exits(100, [0.6, 0.3, 0.0, 0.1], seed=0)  # exit 1 is never right alone
    ensemble = search_exit_weights(z, labels, COUNTS, [0.0], 0.5, "last")
    evidence = rule_change_evidence(z, labels, COUNTS, ensemble, "last", 0.0, 200, 0.0)
    assert ensemble["source"] == "last exit (CNN rule)"
    assert evidence["gain"] == 0.0 and evidence["fraction_ahead"] == 0.0 and not evidence["strong"]
