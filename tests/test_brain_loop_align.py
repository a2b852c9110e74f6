"""Structural-alignment building blocks: Sinkhorn/OT terms, GW, Gumbel neighbourhoods, metrics.

References: POT's own solvers, closed forms, naive loops; gradients by gradcheck in
float64 where the op is smooth, and straight-through gradients against their relaxation.
"""

from __future__ import annotations

import math

import numpy as np
import ot
import pytest
import torch

from raybrain.align.concept_metrics import (cosine_distances, one_shot_accuracy,
                                            permutation_null, silhouette_by_category,
                                            topk_matching_rate)
from raybrain.align.gw import gw_distance, gw_loss, gw_plan, normalise_cost
from raybrain.align.neighbourhoods import (gumbel_topk, local_structure_ce,
                                           neighbour_cross_entropy, neighbourhood_overlap)
from raybrain.align.transport import (add_dustbin, correspondence_ce, ot_matching_loss,
                                      putative_matches, sinkhorn_log_plan)
from raybrain.errors import SpecError

pytestmark = pytest.mark.unit


def _cloud_costs(n: int, seed: int, dim: int = 3):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, dim))
    perm = rng.permutation(n)
    C1 = ot.dist(x, x)
    C2 = C1[np.ix_(perm, perm)]
    return C1 / C1.max(), C2 / C2.max(), perm


# ------------------------------------------------------------------------------ Sinkhorn

def test_sinkhorn_plan_matches_pot_standard_solver_and_marginals():
    rng = np.random.default_rng(0)
    M = torch.tensor(rng.random((5, 7)), dtype=torch.float64)
    a = torch.tensor(rng.random(5) + 0.5, dtype=torch.float64)
    b = torch.tensor(rng.random(7) + 0.5, dtype=torch.float64)
    a, b = a / a.sum(), b / b.sum()
    P = torch.exp(sinkhorn_log_plan(M, 0.1, a, b, n_iter=2000, stop_thr=0))
    # a different POT implementation (multiplicative updates) on the same problem
    ref = ot.sinkhorn(a.numpy(), b.numpy(), M.numpy(), 0.1, method="sinkhorn",
                      numItermax=20000, stopThr=1e-13)
    np.testing.assert_allclose(P.numpy(), ref, atol=1e-9)
    np.testing.assert_allclose(P.sum(1).numpy(), a.numpy(), atol=1e-9)
    np.testing.assert_allclose(P.sum(0).numpy(), b.numpy(), atol=1e-9)


def test_sinkhorn_recovers_a_permutation_with_small_epsilon():
    C1, C2, perm = _cloud_costs(12, 1)
    # cost of matching point i to point j of the permuted copy: compare their distance rows
    rows1 = np.sort(C1, axis=1)
    rows2 = np.sort(C2, axis=1)
    M = torch.tensor(ot.dist(rows1, rows2), dtype=torch.float64)
    M = M / M.max()
    log_plan = sinkhorn_log_plan(M, 0.005, n_iter=500)
    inv = np.argsort(perm)  # point i of the first set is point inv[i] of the second
    assert topk_matching_rate(log_plan, inv, 1) == 1.0
    P = torch.exp(log_plan)
    np.testing.assert_allclose(P.sum(1).numpy(), np.full(12, 1 / 12), atol=1e-6)


def test_sinkhorn_log_plan_gradcheck():
    M = torch.rand(4, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda m: sinkhorn_log_plan(m, 0.3, n_iter=30, stop_thr=0), (M,))


def test_ot_matching_loss_closed_forms_and_gradcheck():
    n = 6
    uniform = torch.full((n, n), -2 * math.log(n), dtype=torch.float64)  # P = 1/n^2
    assert ot_matching_loss(uniform, torch.arange(n)).item() == pytest.approx(math.log(n))
    perfect = torch.full((n, n), -1e9, dtype=torch.float64)
    perfect.fill_diagonal_(-math.log(n))  # P = I / n
    assert ot_matching_loss(perfect, torch.arange(n)).item() == pytest.approx(0.0, abs=1e-12)
    M = torch.rand(4, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda m: ot_matching_loss(sinkhorn_log_plan(m, 0.2, n_iter=30, stop_thr=0),
                                   torch.arange(4)), (M,))


def test_correspondence_ce_equals_naive_loop_and_gradcheck():
    rng = np.random.default_rng(3)
    M = rng.random((4, 4))
    reg = 0.2
    target = np.array([2, 0, 3, 1])
    rows = [-(-M[i, target[i]] / reg - math.log(sum(math.exp(-M[i, j] / reg)
                                                      for j in range(4))))
            for i in range(4)]
    inv = np.argsort(target)  # column j's partner row
    cols = [-(-M[inv[j], j] / reg - math.log(sum(math.exp(-M[i, j] / reg) for i in range(4))))
            for j in range(4)]
    expected = 0.5 * (np.mean(rows) + np.mean(cols))
    got = correspondence_ce(torch.tensor(M), reg, torch.tensor(target))
    assert got.item() == pytest.approx(expected, rel=1e-12)
    Mt = torch.tensor(M, requires_grad=True)
    assert torch.autograd.gradcheck(lambda m: correspondence_ce(m, reg, torch.tensor(target)),
                                    (Mt,))


def test_dustbin_marginals_and_gradient_reaches_the_bin_cost():
    M = torch.rand(3, 4, dtype=torch.float64)
    bin_cost = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    M_aug, a, b = add_dustbin(M, bin_cost)
    assert M_aug.shape == (4, 5)
    assert a.sum().item() == pytest.approx(1.0) and b.sum().item() == pytest.approx(1.0)
    log_plan = sinkhorn_log_plan(M_aug, 0.1, a, b, n_iter=100)
    loss = ot_matching_loss(log_plan[:3, :3], torch.arange(3), torch.log(a[:3]))
    loss.backward()
    assert bin_cost.grad is not None and abs(bin_cost.grad.item()) > 1e-4


def test_putative_matches_are_mutual_argmax_pairs():
    plan = np.array([[0.9, 0.1, 0.0],
                     [0.8, 0.2, 0.0],   # row 1 prefers column 0, but column 0 prefers row 0
                     [0.0, 0.1, 0.7]])
    rows, cols = putative_matches(plan)
    assert rows.tolist() == [0, 2] and cols.tolist() == [0, 2]


# ------------------------------------------------------------------------------------ GW

def test_gw_loss_envelope_equals_pot_exact_value_and_gradient():
    rng = np.random.default_rng(4)
    X, Y = rng.normal(size=(7, 2)), rng.normal(size=(6, 3))
    C1 = torch.tensor(ot.dist(X, X), requires_grad=True)
    C2 = torch.tensor(ot.dist(Y, Y), requires_grad=True)
    ours = gw_loss(C1, C2, normalise=False)
    ours.backward()
    R1 = C1.detach().clone().requires_grad_(True)
    R2 = C2.detach().clone().requires_grad_(True)
    ref = ot.gromov.gromov_wasserstein2(R1, R2)
    ref.backward()
    assert ours.item() == pytest.approx(ref.item(), rel=1e-9)
    np.testing.assert_allclose(C1.grad.numpy(), R1.grad.numpy(), atol=1e-10)
    np.testing.assert_allclose(C2.grad.numpy(), R2.grad.numpy(), atol=1e-10)


def test_gw_envelope_gradient_closed_form():
    C1n, C2n, _ = _cloud_costs(6, 5)
    rng = np.random.default_rng(5)
    C2n = C2n + 0.05 * rng.random((6, 6))
    C2n = (C2n + C2n.T) / 2
    np.fill_diagonal(C2n, 0)
    C1 = torch.tensor(C1n, requires_grad=True)
    gw_loss(C1, torch.tensor(C2n), normalise=False).backward()
    T = gw_plan(C1n, C2n)
    p = np.full(6, 1 / 6)
    expected = 2 * (C1n * np.outer(p, p) - T @ C2n @ T.T)
    np.testing.assert_allclose(C1.grad.numpy(), expected, atol=1e-10)


def test_gw_loss_gradcheck_through_point_coordinates():
    # the exact plan is a vertex (a permutation here) that small perturbations keep, so
    # finite differences of the re-solved GW value equal the envelope gradient
    rng = np.random.default_rng(6)
    y = torch.tensor(rng.normal(size=(5, 2)))
    C2 = torch.cdist(y, y)
    X = torch.tensor(rng.normal(size=(5, 2)), requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: gw_loss(torch.cdist(x, x) ** 2, C2, normalise=True),
                                    (X,), atol=1e-6)


def test_gw_entropic_mode_gradcheck_and_finite_nonzero_gradient():
    rng = np.random.default_rng(7)
    y = torch.tensor(rng.normal(size=(4, 2)))
    C2 = torch.cdist(y, y)
    X = torch.tensor(rng.normal(size=(4, 2)), requires_grad=True)

    def f(x):
        return gw_loss(torch.cdist(x, x) ** 2, C2, mode="entropic", epsilon=0.1, max_iter=10,
                       inner_iter=20)

    assert torch.autograd.gradcheck(f, (X,), atol=1e-6)
    f(X).backward()
    assert torch.isfinite(X.grad).all() and X.grad.abs().max() > 1e-4


@pytest.mark.parametrize("solver", ["exact", "entropic"])
def test_gw_recovers_a_permutation_with_marginals(solver):
    C1, C2, perm = _cloud_costs(30, 8)
    T = gw_plan(C1, C2, solver=solver, epsilon=0.005)
    inv = np.argsort(perm)
    assert topk_matching_rate(T, inv, 1) == 1.0
    # exact: marginals to rounding; entropic: to its 100-step Sinkhorn's tolerance (<0.5%)
    tol = 1e-9 if solver == "exact" else 1.5e-4
    np.testing.assert_allclose(T.sum(1), np.full(30, 1 / 30), atol=tol)
    np.testing.assert_allclose(T.sum(0), np.full(30, 1 / 30), atol=tol)
    value, _ = gw_distance(C1, C2, solver=solver)
    p = np.full(30, 1 / 30)
    independent = ot.gromov.gwloss(*ot.gromov.init_matrix(C1, C2, p, p), np.outer(p, p))
    if solver == "exact":
        assert value == pytest.approx(0.0, abs=1e-9)
    else:  # the entropic plan is slightly blurred, so its value is small but not 0
        assert value < 0.05 * independent


def test_gw_distance_best_is_no_worse_than_either_solver():
    rng = np.random.default_rng(9)
    A = cosine_distances(rng.normal(size=(20, 4)))
    B = cosine_distances(rng.normal(size=(20, 4)))
    best = gw_distance(A, B, solver="best")[0]
    assert best <= gw_distance(A, B, solver="exact")[0] + 1e-12
    assert best <= gw_distance(A, B, solver="entropic")[0] + 1e-12


def test_normalise_cost_and_errors():
    C = torch.tensor([[0.0, 2.0], [2.0, 0.0]])
    assert normalise_cost(C).max().item() == 1.0
    with pytest.raises(SpecError, match="all zero"):
        normalise_cost(np.zeros((3, 3)))
    with pytest.raises(SpecError, match="square"):
        gw_loss(torch.zeros(3, 4), torch.zeros(3, 3))
    with pytest.raises(SpecError, match="mode"):
        gw_loss(torch.ones(3, 3), torch.ones(3, 3), mode="fast")


# ------------------------------------------------------------------------ neighbourhoods

def test_gumbel_topk_exactly_k_forward_and_relaxation_gradient():
    torch.manual_seed(0)
    scores = torch.randn(9, 9, dtype=torch.float64, requires_grad=True)
    g = torch.Generator().manual_seed(1)
    mask, soft = gumbel_topk(scores, 3, tau=0.5, generator=g)
    assert set(mask.detach().unique().tolist()) <= {0.0, 1.0}
    assert (mask.detach().sum(1) == 3).all()
    assert (mask.detach().diagonal() == 0).all()
    W = torch.randn(9, 9, dtype=torch.float64)
    (grad_st,) = torch.autograd.grad((mask * W).sum(), scores)
    scores2 = scores.detach().clone().requires_grad_(True)
    _, soft2 = gumbel_topk(scores2, 3, tau=0.5, generator=torch.Generator().manual_seed(1))
    (grad_soft,) = torch.autograd.grad((soft2 * W).sum(), scores2)
    torch.testing.assert_close(grad_st, grad_soft)
    assert grad_st.abs().max() > 1e-3


def test_gumbel_top1_samples_follow_the_softmax():
    # Gumbel-max: P(j is the sampled neighbour of row i) = softmax_j(s_ij / tau). Rows 3..
    # of a 400-node matrix all score columns 0..2 alike and everything else at -1e4, so each
    # call gives 397 independent draws from one distribution.
    n = 400
    s = torch.full((n, n), -1e4)
    s[:, :3] = torch.tensor([1.0, 0.5, -0.5])
    g = torch.Generator().manual_seed(2)
    counts = torch.zeros(3)
    draws = 0
    for _ in range(10):
        mask, _ = gumbel_topk(s, 1, tau=0.7, generator=g)
        counts += mask[3:, :3].sum(0)
        draws += n - 3
    expected = torch.softmax(torch.tensor([1.0, 0.5, -0.5]) / 0.7, 0)
    assert counts.sum() == draws  # the -1e4 columns are never drawn
    torch.testing.assert_close(counts / draws, expected, atol=0.025, rtol=0)


def test_gumbel_topk_without_noise_is_the_k_nearest():
    rng = np.random.default_rng(3)
    s = rng.normal(size=(8, 8))
    mask, _ = gumbel_topk(torch.tensor(s), 2, noise=False)
    np.fill_diagonal(s, -np.inf)
    expected = np.zeros((8, 8))
    np.put_along_axis(expected, np.argsort(-s, axis=1)[:, :2], 1.0, axis=1)
    np.testing.assert_array_equal(mask.numpy(), expected)


def test_neighbour_cross_entropy_naive_loop_and_gradcheck():
    rng = np.random.default_rng(4)
    s = rng.normal(size=(5, 5))
    target = np.zeros((5, 5))
    for i, nbrs in enumerate([[1, 2], [0], [3, 4], [2], [0, 1, 3]]):
        target[i, nbrs] = 1
    tau = 0.5
    total = 0.0
    for i in range(5):
        others = [j for j in range(5) if j != i]
        logz = math.log(sum(math.exp(s[i, j] / tau) for j in others))
        nbrs = np.flatnonzero(target[i])
        total += -sum(s[i, j] / tau - logz for j in nbrs) / len(nbrs)
    got = neighbour_cross_entropy(torch.tensor(target), torch.tensor(s), tau)
    assert got.item() == pytest.approx(total / 5, rel=1e-12)
    S = torch.tensor(s, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: neighbour_cross_entropy(torch.tensor(target), x,
                                                                      tau), (S,))


def test_local_structure_ce_reuses_the_same_draws_and_passes_gradients():
    torch.manual_seed(5)
    ms = torch.randn(10, 10, dtype=torch.float64, requires_grad=True)
    bs = torch.randn(10, 10, dtype=torch.float64)
    loss = local_structure_ce(ms, bs, 3, 4, tau=0.5, generator=torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(7)
    A, _ = gumbel_topk(bs, 3, 0.5, g)
    H, _ = gumbel_topk(ms.detach(), 4, 0.5, g)
    expected = 0.5 * (neighbour_cross_entropy(A, ms.detach(), 0.5)
                      + neighbour_cross_entropy(H, bs, 0.5))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-12)
    loss.backward()
    assert torch.isfinite(ms.grad).all() and ms.grad.abs().max() > 1e-3


def test_local_structure_ce_rejects_k_at_or_above_n():
    s = torch.randn(5, 5)
    with pytest.raises(SpecError, match=r"K1 .* must be < the number of concepts \(5\).*got 5"):
        local_structure_ce(s, s, 5, 2)


def test_neighbourhood_overlap_known_answers():
    rng = np.random.default_rng(6)
    D = cosine_distances(rng.normal(size=(12, 3)))
    assert neighbourhood_overlap(D, D, 3) == 1.0
    # two far clusters in one, a reversed order in the other: hand-computable
    a = np.array([[0, 1, 2, 9], [1, 0, 1, 9], [2, 1, 0, 9], [9, 9, 9, 0]], dtype=float)
    b = np.array([[0, 9, 1, 2], [9, 0, 9, 9], [1, 9, 0, 1], [2, 9, 1, 0]], dtype=float)
    # k=1 nearest: a -> [1, 0 (tie 0/2 -> 0), 1, 0]; b -> [2, 0 (all 9: first), 0 (tie -> 0), 2]
    assert neighbourhood_overlap(a, b, 1) == pytest.approx(1 / 4)


# ------------------------------------------------------------------------------- metrics

def test_topk_matching_rate_against_a_naive_loop():
    rng = np.random.default_rng(7)
    P = rng.random((15, 15))
    truth = rng.permutation(15)
    for k in (1, 3, 15):
        naive = np.mean([truth[i] in sorted(range(15), key=lambda j: -P[i, j])[:k]
                         for i in range(15)])
        assert topk_matching_rate(P, truth, k) == pytest.approx(naive)
    assert topk_matching_rate(P, truth, 15) == 1.0


def test_permutation_null_mean_is_k_over_m():
    P = np.random.default_rng(8).random((40, 40))
    null = permutation_null(P, 5, n_perm=2000, seed=0)
    assert null.mean() == pytest.approx(5 / 40, abs=0.01)


def test_silhouette_matches_sklearn_and_refuses_items_without_category():
    from sklearn.metrics import silhouette_score

    rng = np.random.default_rng(9)
    x = np.concatenate([rng.normal(0, 1, (10, 3)) + 5, rng.normal(0, 1, (10, 3)) - 5])
    lab = np.array(["living"] * 10 + ["non-living"] * 10, dtype=object)
    got = silhouette_by_category(x, lab)
    assert got == pytest.approx(silhouette_score(x, lab, metric="cosine"))
    assert got > 0.8
    lab[3] = None
    with pytest.raises(SpecError, match="1 item.* no category"):
        silhouette_by_category(x, lab)


def test_one_shot_accuracy_known_answers():
    # orthogonal class directions: every query is nearest to its own class's support
    x = np.repeat(np.eye(4), 3, axis=0) + 0.01 * np.random.default_rng(1).normal(size=(12, 4))
    labels = np.repeat(np.arange(4), 3)
    assert one_shot_accuracy(x, labels, n_episodes=5) == 1.0
    # identical items: argmax over equal similarities picks the first support (class 0)
    same = np.ones((12, 4))
    assert one_shot_accuracy(same, labels, n_episodes=5) == pytest.approx(2 / 8)
    with pytest.raises(SpecError, match="one class with >= 2 items"):
        one_shot_accuracy(np.eye(4), np.arange(4))
