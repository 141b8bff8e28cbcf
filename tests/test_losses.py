"""CADEL stage-1 loss against hand-computed values and an independent float64 numpy reference."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import stats

from cadel_modeling.training.losses import CascadeLoss, annealing_T, confidence_bin_weights, mixup_batch


# ----------------------------------------------------------------------------------------------- numpy reference
def np_bin_weights(m, bins, gamma, base_weight):
    """Loop over bins as the original code does: bin j holds edges[j] <= m < edges[j+1]."""
    edges = np.arange(bins + 1) / bins
    edges[-1] += 1e-6
    w = np.zeros_like(m)
    for j in range(bins):
        in_bin = (m >= edges[j]) & (m < edges[j + 1])
        w[in_bin] = base_weight + gamma * in_bin.sum() / len(m)
    return w


def np_loss_and_confidence(z, y, base_loss):
    rows = np.arange(len(y))
    if base_loss == "ce":
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        return -np.log(p[rows, y]), p[rows, y]
    sig = 1.0 / (1.0 + np.exp(-z))
    onehot = np.eye(z.shape[1])[y]
    return -(onehot * np.log(sig) + (1 - onehot) * np.log(1 - sig)).sum(1), sig[rows, y]


def np_cascade_loss(exit_logits, y_a, y_b=None, lam=1.0, T=0.0, bins=8, gamma=1.0, base_weight=2.0,
                    weight_mode="per_sample", base_loss="ce"):
    total = 0.0
    for y, coef in [(y_a, lam)] + ([(y_b, 1 - lam)] if y_b is not None else []):
        history = []
        for z in exit_logits:
            loss, q = np_loss_and_confidence(z, y, base_loss)
            history.append(q)
            w = np_bin_weights(np.mean(history, axis=0), bins, gamma, base_weight)
            if weight_mode == "per_sample":
                total += coef * (T * loss.mean() + (1 - T) * (w * loss).mean())
            else:
                total += coef * loss.mean() * (T + (1 - T) * w.mean())
    return total


def random_exits(seed, K=3, B=32, C=5, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    logits = [scale * torch.randn(B, C, generator=g) for _ in range(K)]
    return logits, torch.randint(0, C, (B,), generator=g), torch.randint(0, C, (B,), generator=g)


def softplus(v):
    """-log sigmoid(-v) = log(1 + e^v), evaluated without overflow in float64."""
    return max(v, 0.0) + math.log1p(math.exp(-abs(v)))


def logits_with_target_prob(q):
    """Two-class logits whose softmax probability of class 0 (the target) is q."""
    q = torch.tensor(q, dtype=torch.float64)
    return torch.stack([q.log(), (1 - q).log()], dim=1).float()


# ----------------------------------------------------------------------------------------------- annealing
def test_annealing_T_is_linear_from_one_minus_1_over_E_to_zero():
    assert annealing_T(1, 10) == pytest.approx(0.9)
    assert annealing_T(5, 10) == pytest.approx(0.5)
    assert annealing_T(10, 10) == 0.0
    assert annealing_T(1, 1) == 0.0  # a one-epoch run trains fully weighted
    for epoch, epochs in [(0, 10), (11, 10), (1, 0)]:
        with pytest.raises(ValueError, match="1-indexed"):
            annealing_T(epoch, epochs)


# ----------------------------------------------------------------------------------------------- bin weights
@pytest.mark.parametrize("value", [0.0, 0.3, 0.999, 1.0])
def test_all_samples_in_one_bin_get_base_plus_gamma(value):
    w = confidence_bin_weights(torch.full((16,), value), bins=8, gamma=0.75, base_weight=1.5)
    torch.testing.assert_close(w, torch.full((16,), 2.25), rtol=0, atol=0)


def test_bin_weights_hand_computed_with_values_on_edges():
    # bins of width 1/8: 0.0, 0.05 -> bin 0; 0.125 (edge), 0.2 -> bin 1; 0.5 (edge) -> bin 4;
    # 0.875 (edge), 0.999, 1.0 -> bin 7
    m = torch.tensor([0.0, 0.05, 0.125, 0.2, 0.5, 0.875, 0.999, 1.0])
    w = confidence_bin_weights(m, bins=8, gamma=0.5, base_weight=1.5)
    counts = torch.tensor([2, 2, 2, 2, 1, 3, 3, 3])
    torch.testing.assert_close(w, 1.5 + 0.5 * counts / 8, rtol=0, atol=0)
    assert w.tolist() == [1.625, 1.625, 1.625, 1.625, 1.5625, 1.6875, 1.6875, 1.6875]


def test_bin_weights_match_numpy_loop_over_bins():
    g = torch.Generator().manual_seed(1)
    m = torch.rand(257, generator=g) ** 3  # crowd the low bins
    for bins in (1, 3, 8, 10):
        expected = np_bin_weights(m.double().numpy(), bins, gamma=1.0, base_weight=2.0)
        np.testing.assert_allclose(confidence_bin_weights(m, bins, 1.0, 2.0).numpy(), expected, rtol=1e-6)


# ----------------------------------------------------------------------------------------------- cascade loss
@pytest.mark.parametrize("weight_mode", ["per_sample", "batch_scalar_legacy"])
def test_T_one_is_plain_cross_entropy_summed_over_exits(weight_mode):
    logits, y, _ = random_exits(0)
    loss = CascadeLoss(weight_mode=weight_mode)(logits, y, T=1.0)
    torch.testing.assert_close(loss, sum(F.cross_entropy(z, y) for z in logits))


def test_history_of_exit_k_averages_exits_1_to_k():
    # target probabilities per exit (4 samples, bins of width 1/4), chosen away from the edges
    q = [[0.9, 0.9, 0.9, 0.1], [0.2, 0.4, 0.7, 0.1], [0.05, 0.05, 0.2, 0.95]]
    # running means: exit 1 -> bins 3,3,3,0; exit 2 (0.55,0.65,0.8,0.1) -> 2,2,3,0; exit 3 (.383,.45,.6,.383) -> 1,1,2,1
    # (exit 2 alone would give bins 0,1,2,0 and exit 3 alone 0,0,0,3, i.e. other counts)
    counts = [[3, 3, 3, 1], [2, 2, 1, 1], [3, 3, 1, 3]]
    weights = [2.0 + 1.0 * torch.tensor(n, dtype=torch.float32) / 4 for n in counts]
    logits = [logits_with_target_prob(qk) for qk in q]
    y = torch.zeros(4, dtype=torch.long)
    criterion = CascadeLoss(bins=4, gamma=1.0, base_weight=2.0)

    loss = criterion(logits, y, T=0.0)

    per_sample = [F.cross_entropy(z, y, reduction="none") for z in logits]
    torch.testing.assert_close(loss, sum((w * loss_i).mean() for w, loss_i in zip(weights, per_sample)))
    torch.testing.assert_close(criterion.last_mean_weight, torch.stack([w.mean() for w in weights]))
    assert not criterion.last_mean_weight.requires_grad


def test_per_sample_mode_matches_numpy_reference():
    for seed, T in [(0, 0.0), (1, 0.3), (2, 0.9)]:
        logits, y, _ = random_exits(seed)
        loss = CascadeLoss(bins=8, gamma=1.0, base_weight=2.0)(logits, y, T=T)
        expected = np_cascade_loss([z.double().numpy() for z in logits], y.numpy(), T=T)
        assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_legacy_mode_is_mean_loss_times_mean_weight_as_in_the_broadcasting_bug():
    logits, y, _ = random_exits(3)
    T = 0.4
    loss = CascadeLoss(weight_mode="batch_scalar_legacy")(logits, y, T=T)

    expected, history = 0.0, []
    for z in logits:
        history.append(z.softmax(1).gather(1, y[:, None]).squeeze(1))
        w = torch.from_numpy(np_bin_weights(torch.stack(history).mean(0).double().numpy(), 8, 1.0, 2.0)).float()
        l_column = -F.log_softmax(z, 1).gather(1, y[:, None])  # [B, 1] like the original's gather
        outer_mean = (l_column * w).mean()  # broadcasts to [B, B]
        torch.testing.assert_close(outer_mean, (l_column[:, 0][:, None] * w[None, :]).mean())
        torch.testing.assert_close(outer_mean, l_column.mean() * w.mean())
        expected = expected + T * l_column.mean() + (1 - T) * outer_mean
    torch.testing.assert_close(loss, expected)
    reference = np_cascade_loss([z.double().numpy() for z in logits], y.numpy(), T=T, weight_mode="batch_scalar_legacy")
    assert loss.item() == pytest.approx(reference, rel=1e-5)


def test_legacy_and_per_sample_differ_when_weights_vary():
    logits, y, _ = random_exits(4)
    per_sample = CascadeLoss(weight_mode="per_sample")(logits, y, T=0.0)
    legacy = CascadeLoss(weight_mode="batch_scalar_legacy")(logits, y, T=0.0)
    assert not torch.isclose(per_sample, legacy, rtol=1e-3)


@pytest.mark.parametrize("weight_mode", ["per_sample", "batch_scalar_legacy"])
def test_mixup_loss_combines_targets_with_separate_histories(weight_mode):
    logits, y_a, y_b = random_exits(5)
    criterion = CascadeLoss(weight_mode=weight_mode)
    lam, T = 0.3, 0.25
    mixed = criterion(logits, y_a, y_b, lam=lam, T=T)
    torch.testing.assert_close(mixed, lam * criterion(logits, y_a, T=T) + (1 - lam) * criterion(logits, y_b, T=T))
    expected = np_cascade_loss([z.double().numpy() for z in logits], y_a.numpy(), y_b.numpy(), lam=lam, T=T,
                               weight_mode=weight_mode)
    assert mixed.item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("weight_mode", ["per_sample", "batch_scalar_legacy"])
def test_no_gradient_flows_through_weights(weight_mode):
    logits, y, _ = random_exits(6)
    logits = [z.requires_grad_() for z in logits]
    T = 0.2
    CascadeLoss(weight_mode=weight_mode)(logits, y, T=T).backward()

    constant_logits = [z.detach().clone().requires_grad_() for z in logits]
    history, expected = [], 0.0
    for z in constant_logits:
        history.append(z.detach().softmax(1).gather(1, y[:, None]).squeeze(1))
        w = confidence_bin_weights(torch.stack(history).mean(0), 8, 1.0, 2.0)
        per_sample = F.cross_entropy(z, y, reduction="none")
        if weight_mode == "per_sample":
            expected = expected + T * per_sample.mean() + (1 - T) * (w * per_sample).mean()
        else:
            expected = expected + per_sample.mean() * (T + (1 - T) * w.mean())
    expected.backward()
    for z, z_const in zip(logits, constant_logits):
        torch.testing.assert_close(z.grad, z_const.grad)
    assert not confidence_bin_weights(torch.rand(8, requires_grad=True), 8, 1.0, 2.0).requires_grad


def test_loss_is_float32_under_bf16_autocast():
    logits, y, y_b = random_exits(7)
    half_logits = [z.bfloat16() for z in logits]
    criterion = CascadeLoss()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = criterion(half_logits, y, y_b, lam=0.6, T=0.5)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, criterion([z.float() for z in half_logits], y, y_b, lam=0.6, T=0.5))


# ----------------------------------------------------------------------------------------------- bce
def test_bce_matches_explicit_float64_formula():
    for seed, T, weight_mode in [(8, 0.0, "per_sample"), (9, 0.5, "per_sample"), (10, 0.3, "batch_scalar_legacy")]:
        logits, y, y_b = random_exits(seed, C=7, scale=4.0)
        loss = CascadeLoss(base_loss="bce", weight_mode=weight_mode)(logits, y, y_b, lam=0.7, T=T)
        expected = np_cascade_loss([z.double().numpy() for z in logits], y.numpy(), y_b.numpy(), lam=0.7, T=T,
                                   weight_mode=weight_mode, base_loss="bce")
        assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_bce_stays_finite_for_saturated_logits():
    # target logit +30 (naive: 0 * log(0) = NaN), one non-target at +30 (naive: log(1 - 1) = -inf), one at -30
    z = torch.tensor([[30.0, 30.0, -30.0]], requires_grad=True)
    y = torch.tensor([0])
    sig = torch.sigmoid(z.detach())
    onehot = F.one_hot(y, 3).float()
    naive = -(onehot * sig.log() + (1 - onehot) * (1 - sig).log()).sum(1)
    assert not torch.isfinite(naive).all()

    loss = CascadeLoss(base_loss="bce")([z], y, T=1.0)
    expected = softplus(-30.0) + softplus(30.0) + softplus(-30.0)
    assert torch.isfinite(loss)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    assert torch.isfinite(z.grad).all()


# ----------------------------------------------------------------------------------------------- mixup
def test_mixup_is_seeded_and_mixes_with_the_permuted_batch():
    x = torch.randn(16, 3, 4, 4)
    y = torch.arange(16)
    first = mixup_batch(x, y, alpha=0.5, generator=torch.Generator().manual_seed(123))
    second = mixup_batch(x, y, alpha=0.5, generator=torch.Generator().manual_seed(123))
    other = mixup_batch(x, y, alpha=0.5, generator=torch.Generator().manual_seed(124))

    x_mixed, y_a, y_b, lam = first
    assert isinstance(lam, float) and 0.0 < lam < 1.0
    assert torch.equal(x_mixed, second[0]) and torch.equal(y_b, second[2]) and lam == second[3]
    assert lam != other[3]
    assert torch.equal(y_a, y)
    assert sorted(y_b.tolist()) == list(range(16))  # a permutation
    torch.testing.assert_close(x_mixed, lam * x + (1 - lam) * x[y_b])


def test_mixup_lambda_follows_beta_alpha_alpha():
    g = torch.Generator().manual_seed(0)
    x, y = torch.zeros(2, 1), torch.arange(2)
    lams = [mixup_batch(x, y, alpha=0.5, generator=g)[3] for _ in range(2000)]
    assert stats.kstest(lams, stats.beta(0.5, 0.5).cdf).pvalue > 1e-3
    assert stats.kstest(lams, stats.beta(2.0, 2.0).cdf).pvalue < 1e-6


@pytest.mark.parametrize("alpha", [0.0, -1.0])
def test_mixup_with_nonpositive_alpha_is_identity(alpha):
    x, y = torch.randn(4, 2), torch.arange(4)
    x_out, y_a, y_b, lam = mixup_batch(x, y, alpha=alpha)
    assert x_out is x and y_a is y and y_b is None and lam == 1.0


# ----------------------------------------------------------------------------------------------- validation
def test_invalid_options_raise_value_error_naming_the_choices():
    with pytest.raises(ValueError, match="per_sample.*batch_scalar_legacy"):
        CascadeLoss(weight_mode="scalar")
    with pytest.raises(ValueError, match="'ce', 'bce'"):
        CascadeLoss(base_loss="focal")
    with pytest.raises(ValueError, match="exit_logits is empty"):
        CascadeLoss()([], torch.zeros(2, dtype=torch.long))


# ----------------------------------------------------------------------------------------------- balanced losses
COUNTS = [60, 25, 9, 4, 2]


def balanced_setup(seed=0, n=16):
    gen = torch.Generator().manual_seed(seed)
    z = (torch.randn(n, len(COUNTS), generator=gen) * 3).double().requires_grad_(True)
    y = torch.randint(0, len(COUNTS), (n,), generator=gen)
    return z, y


def hand_balanced(z, y, kind, tau=1.0):
    """Per-sample losses written from the papers' formulas in float64, independently of CascadeLoss."""
    counts = torch.tensor(COUNTS, dtype=torch.float64)
    prior = counts / counts.sum()
    rows = torch.arange(len(y))
    if kind == "logit_adjusted":          # Menon et al.: -log( e^{z_y + tau log pi_y} / sum_j e^{z_j + tau log pi_j} )
        a = z + tau * prior.log()
        return torch.logsumexp(a, 1) - a[rows, y]
    if kind == "balanced_softmax":        # Ren et al.: -log( n_y e^{z_y} / sum_j n_j e^{z_j} )
        num = counts[y] * z[rows, y].exp()
        return -(num / (counts * z.exp()).sum(1)).log()
    bias = (prior / (1 - prior)).log()    # LiVT's Bal-BCE: BCE on z + log(pi/(1-pi)), summed over classes
    p = torch.sigmoid(z + bias)
    onehot = torch.nn.functional.one_hot(y, len(COUNTS)).double()
    return -(onehot * p.log() + (1 - onehot) * (1 - p).log()).sum(1)


@pytest.mark.parametrize("kind", ["logit_adjusted", "balanced_softmax", "balanced_bce"])
def test_balanced_base_losses_match_the_papers_formulas_in_value_and_gradient(kind):
    z, y = balanced_setup()
    # one exit, unit weights (gamma 0, base weight 1): the plain balanced loss, as the baselines train it
    criterion = CascadeLoss(bins=8, gamma=0.0, base_weight=1.0, base_loss=kind, class_counts=COUNTS)
    loss = criterion([z.float()], y, T=0.3)
    expected = hand_balanced(z, y, kind).mean()
    torch.testing.assert_close(loss.double(), expected, rtol=1e-5, atol=1e-6)
    (grad,) = torch.autograd.grad(loss, z)
    (expected_grad,) = torch.autograd.grad(expected, z)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-4, atol=1e-6)


def test_logit_adjusted_loss_at_tau_one_is_balanced_softmax_and_tau_zero_is_ce():
    z, y = balanced_setup(seed=1)
    la = CascadeLoss(gamma=0.0, base_weight=1.0, base_loss="logit_adjusted", class_counts=COUNTS)([z.float()], y)
    bs = CascadeLoss(gamma=0.0, base_weight=1.0, base_loss="balanced_softmax", class_counts=COUNTS)([z.float()], y)
    torch.testing.assert_close(la, bs, rtol=1e-6, atol=1e-6)  # log(n_c) and log(pi_c) differ by a constant
    la0 = CascadeLoss(gamma=0.0, base_weight=1.0, base_loss="logit_adjusted", class_counts=COUNTS, la_tau=0.0)
    torch.testing.assert_close(la0([z.float()], y), F.cross_entropy(z.float(), y))
    tau2 = CascadeLoss(gamma=0.0, base_weight=1.0, base_loss="logit_adjusted", class_counts=COUNTS, la_tau=2.0)
    torch.testing.assert_close(tau2([z.float()], y).double(), hand_balanced(z, y, "logit_adjusted", 2.0).mean(),
                               rtol=1e-5, atol=1e-6)


def test_balanced_cascade_weights_use_the_adjusted_probabilities():
    """In the cascade, a balanced base loss places samples in confidence bins by its own (adjusted) probability."""
    z, y = balanced_setup(seed=2, n=32)
    zs = [z.float().detach(), (z.float() * 0.5).detach()]
    criterion = CascadeLoss(bins=8, gamma=1.0, base_weight=2.0, base_loss="balanced_softmax", class_counts=COUNTS)
    loss = criterion(zs, y, T=0.0)
    log_n = torch.log(torch.tensor(COUNTS, dtype=torch.float32))
    expected, history = 0.0, []
    for logits in zs:
        adjusted = logits + log_n
        per_sample = F.cross_entropy(adjusted, y, reduction="none")
        history.append(adjusted.softmax(1).gather(1, y[:, None]).squeeze(1))
        w = confidence_bin_weights(torch.stack(history).mean(0), 8, 1.0, 2.0)
        expected = expected + (w * per_sample).mean()
    torch.testing.assert_close(loss, expected)


def test_balanced_losses_need_the_class_counts():
    with pytest.raises(ValueError, match="class_counts"):
        CascadeLoss(base_loss="balanced_softmax")


# ----------------------------------------------------------------------------------------------- details
def test_bin_edges_are_exact_in_the_confidences_precision():
    # k/10 is not representable in float32; in float64 each value k/10 sits exactly on its bin's left edge
    m = torch.arange(11, dtype=torch.float64) / 10
    w = confidence_bin_weights(m, bins=10, gamma=1.0, base_weight=0.0)
    assert w.tolist() == [1 / 11] * 9 + [2 / 11] * 2      # 0.9 and 1.0 share the top bin


def test_loss_options_validation_and_state():
    assert CascadeLoss(bins=1).bins == 1
    with pytest.raises(ValueError, match="bins must be a positive integer, got 0"):
        CascadeLoss(bins=0)
    with pytest.raises(ValueError) as exc:
        CascadeLoss()([], torch.arange(2))
    assert str(exc.value) == "exit_logits is empty; pass the logits of every exit, shallow to deep"
    counts = [30, 10, 3, 1]
    adjusted = CascadeLoss(base_loss="logit_adjusted", class_counts=counts, la_tau=1.5)
    assert "la_tau=1.5" in repr(adjusted) and adjusted.last_mean_weight is None
    assert repr(CascadeLoss()).endswith("weight_mode='per_sample', base_loss='ce')")   # la_tau only where it acts
    assert dict(adjusted.state_dict()) == {}     # the offset follows from class_counts: not saved with a model


def test_balanced_softmax_is_log_counts_whatever_la_tau():
    gen = torch.Generator().manual_seed(0)
    z, y, counts = torch.randn(12, 4, generator=gen), torch.randint(0, 4, (12,), generator=gen), [30, 10, 3, 1]
    expected = F.cross_entropy(z.double() + torch.log(torch.tensor(counts, dtype=torch.float64)), y)
    for la_tau in (1.0, 2.0):
        plain = CascadeLoss(bins=1, gamma=0.0, base_weight=1.0, base_loss="balanced_softmax", class_counts=counts,
                            la_tau=la_tau)
        assert plain([z], y, T=1.0).item() == pytest.approx(expected.item(), rel=1e-6)


def test_half_precision_exits_give_a_float32_loss_and_T_defaults_to_zero():
    logits, y, _ = random_exits(3)
    criterion = CascadeLoss()
    half = [z.bfloat16() for z in logits]
    loss = criterion(half, y)
    assert loss.dtype == torch.float32
    assert torch.equal(loss, criterion([z.float() for z in half], y, None, 1.0, 0.0))
