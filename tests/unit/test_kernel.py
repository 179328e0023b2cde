"""The user-kernel part: the kernel's closed form, what it learns on planted groups, persistence, the user cap, and
its place in the transfer model's blend."""

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from tests.support import small_model

from transfer_rec.recommender.kernel import UserKernel, ntk
from transfer_rec.recommender.transfer import TransferRecommender, _dense


def rows(*lists: list[int], n_items: int = 6) -> sp.csr_matrix:
    dense = np.zeros((len(lists), n_items), dtype=np.float64)
    for r, items in enumerate(lists):
        dense[r, items] = 1.0
    return sp.csr_matrix(dense)


def kernel_of(a: sp.csr_matrix, b: sp.csr_matrix) -> np.ndarray:
    norm = lambda m: np.sqrt(np.asarray(m.multiply(m).sum(1)).ravel())
    return ntk(a, b, norm(a), norm(b))


def test_ntk_closed_form_on_equal_orthogonal_and_empty_rows():
    x = rows([0, 1], [2, 3], [0, 1, 2, 4], [])
    k = kernel_of(x, x)
    # equal rows (cosine 1): <x,x> * 1 + |x|^2 * 1
    assert np.isclose(k[0, 0], 2 * 2.0)
    # orthogonal rows (cosine 0): 0 + |x||y| / pi
    assert np.isclose(k[0, 1], 2.0 / np.pi)
    # cosine 1/sqrt(2): dot 2, |x||y| = sqrt(2) * 2
    u = 2 / (np.sqrt(2) * 2)
    angle = np.pi - np.arccos(u)
    expected = (2 * angle + np.sqrt(2) * 2 * (np.sqrt(1 - u * u) + angle * u)) / np.pi
    assert np.isclose(k[0, 2], expected)
    assert np.allclose(k[3], 0.0) and np.allclose(k, k.T)


def test_kernel_part_recommends_the_planted_group_of_a_new_history():
    rng = np.random.default_rng(0)
    group_a = [list(rng.choice(10, 5, replace=False)) for _ in range(40)]
    group_b = [list(10 + rng.choice(10, 5, replace=False)) for _ in range(40)]
    train = rows(*group_a, *group_b, n_items=20)
    part = UserKernel(lam=0.3).fit(train, np.arange(20))
    scores = part.score(rows([1, 2], [12], n_items=20))
    # the best unseen items are the history's group's; the other group's items all rank below them
    first = np.argsort(-np.where(np.isin(np.arange(20), [1, 2]), -np.inf, scores[0]))
    assert set(first[:5]) <= set(range(10)) and np.median(scores[0, 10:]) < np.median(scores[0, :10])
    second = np.argsort(-np.where(np.arange(20) == 12, -np.inf, scores[1]))
    assert set(second[:5]) <= set(range(10, 20))


def test_kernel_state_round_trip_and_user_cap():
    rng = np.random.default_rng(1)
    train = sp.csr_matrix((rng.random((50, 12)) < 0.3).astype(np.float64))
    candidates = np.arange(0, 12, 2)
    part = UserKernel(lam=0.1, max_users=20, seed=4).fit(train, candidates)
    assert part.rows.shape[0] == 20 and part.dual.shape == (20, len(candidates))
    copy = UserKernel.from_state(part.state())
    np.testing.assert_array_equal(copy.score(train), part.score(train))


def planted_target(seed: int = 0) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """Two user groups with their own items; each user's items split into train and valid."""
    rng = np.random.default_rng(seed)
    train, valid = [], []
    for user in range(80):
        items = list((user % 2) * 15 + rng.choice(15, 8, replace=False))
        train.append(items[:6])
        valid.append(items[6:])
    return rows(*train, n_items=30).astype(np.float32), rows(*valid, n_items=30).astype(np.float32)


def test_transfer_model_tries_every_kernel_setting_after_beta():
    train, valid = planted_target()
    model = small_model(
        30,
        hidden=8,
        epochs_finetune=2,
        patience=1,
        batch_size=16,
        seed=3,
        item_grid=[],
        kernel_weights=[0.0, 0.5, 1.0, 1.5, 2.0],
        warm_min_history=0,
    )
    history = model.finetune(train, valid)
    tried = [e for e in history if e["stage"] == "kernel"]
    assert {(e["lam"], e["weight"]) for e in tried} == {(lam, w) for lam in (0.1, 0.3) for w in (0.5, 1.0, 1.5, 2.0)}
    off = small_model(
        30, hidden=8, epochs_finetune=2, patience=1, batch_size=16, seed=3, item_grid=[], kernel_weights=[0.0]
    )
    assert not [e for e in off.finetune(train, valid) if e["stage"] == "kernel"] and off.kernel is None


def _chosen_kernel(blend: np.ndarray) -> TransferRecommender:
    """A model whose kernel part is chosen next to the given blend scores (over all 30 items) on the planted data."""
    train, valid = planted_target()
    model = small_model(30, hidden=8, seed=3, kernel_weights=[0.0, 0.5, 1.0, 2.0], warm_min_history=0)
    model.candidates = np.arange(30)
    blend_ndcg = model._valid_ndcg(blend, train, valid)
    # every user judges: the blend's rows are all of train's
    model.valid_ndcg = model._choose_kernel(train, train, valid, blend, blend_ndcg, lambda entry: None)
    return model


def test_kernel_part_is_kept_when_it_beats_a_blend_that_knows_nothing():
    train, _ = planted_target()
    noise = np.random.default_rng(5).normal(size=(train.shape[0], 30))
    model = _chosen_kernel(noise)
    assert model.kernel is not None and model.kernel_weight > 0
    copy = TransferRecommender.from_state(model.state(with_source=False))
    np.testing.assert_array_equal(copy.score(train), model.score(train))


def test_kernel_basis_is_bounded_by_basis_users_times_candidates():
    train, valid = planted_target()
    noise = np.random.default_rng(5).normal(size=(train.shape[0], 30))
    model = small_model(30, hidden=8, seed=3, kernel_weights=[0.0, 2.0], warm_min_history=0, kernel_cells_max=300)
    model.candidates = np.arange(30)
    model._choose_kernel(train, train, valid, noise, model._valid_ndcg(noise, train, valid), lambda e: None)
    assert model.kernel is not None and model.kernel.rows.shape[0] == 300 // 30 < train.shape[0]
    assert model.kernel.dual.shape == (10, 30)


def test_kernel_part_is_left_out_when_the_blend_already_ranks_valid_first():
    train, valid = planted_target()
    oracle = 10.0 * valid.toarray() + np.random.default_rng(5).normal(scale=0.01, size=valid.shape)
    model = _chosen_kernel(oracle)
    assert model.kernel is None and model.kernel_weight == 0.0 and model.valid_ndcg == pytest.approx(1.0)


def _forward(model: TransferRecommender, history) -> np.ndarray:
    """The torch forward pass in eval mode, members combined as scoring combines them."""
    model.encoder.eval()
    with torch.no_grad():
        logits = model.encoder(_dense(history)).numpy()[:, :, model.candidates]
    if logits.shape[1] == 1:
        return logits[:, 0]
    standardised = (logits - logits.mean(2, keepdims=True)) / (logits.std(2, keepdims=True) + 1e-12)
    return standardised.mean(1)


@pytest.mark.parametrize("encoders", [1, 3])
def test_sparse_encoder_path_matches_the_torch_forward_pass_and_follows_training(encoders):
    train, valid = planted_target(1)
    model = small_model(30, hidden=8, epochs_pretrain=2, seed=5, encoders=encoders)
    model.candidates = np.arange(0, 30, 3)
    before = model._encoded(train)
    np.testing.assert_allclose(before, _forward(model, train), atol=1e-5)
    model.pretrain(train)  # the cached weights must follow the optimiser's in-place updates
    np.testing.assert_allclose(model._encoded(train), _forward(model, train), atol=1e-5)
    assert not np.allclose(model._encoded(train), before, atol=1e-4)


def test_encoder_members_end_apart():
    """Members start from different weights and train side by side: they end apart, not as copies. A member count
    below one is refused by name."""
    train, _ = planted_target(1)
    model = small_model(30, hidden=8, epochs_pretrain=3, seed=5, encoders=2)
    model.pretrain(train)
    model.encoder.eval()
    with torch.no_grad():
        logits = model.encoder(_dense(train)).numpy()
    assert logits.shape == (train.shape[0], 2, 30)
    assert not np.allclose(logits[:, 0], logits[:, 1], atol=1e-3)
    with pytest.raises(ValueError, match="encoders"):
        small_model(30, encoders=0)


def test_kernel_part_leaves_short_histories_alone():
    rng = np.random.default_rng(2)
    train = sp.csr_matrix((rng.random((60, 40)) < 0.5).astype(np.float32))
    model = small_model(40, hidden=8, seed=1, warm_min_history=20)
    without = model.score(train)
    model.kernel, model.kernel_weight = UserKernel(0.1).fit(train, model.candidates), 1.5
    with_kernel = model.score(train)
    lengths = np.diff(train.indptr)
    assert (lengths < 20).any() and (lengths >= 20).any()
    np.testing.assert_array_equal(with_kernel[lengths < 20], without[lengths < 20])
    assert not np.allclose(with_kernel[lengths >= 20], without[lengths >= 20])


def test_the_basis_sample_is_not_the_valid_judges_sample():
    # both were drawn with the seed alone from the same users: the basis was the judge set, and the kernel's ridge
    # and weight were chosen on basis users only (most users a large target serves are outside the basis)
    from transfer_rec.metrics.ranking import judges

    users, keep = 2000, 500
    history = sp.identity(users, format="csr")  # user i has item i only: a basis row names its user
    part = UserKernel(1.0, keep, seed=7).fit(history, np.ones(users, dtype=bool))
    basis = set(part.rows.indices.tolist())
    judged = set(judges(history, keep, 7).tolist())
    assert len(basis) == keep and len(basis & judged) < keep // 2  # chance gives about keep/4
