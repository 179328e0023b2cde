"""The encoder's sampled softmax for large catalogues: exact when every item is sampled, and it learns."""

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from tests.support import training

from transfer_rec.recommender.transfer import TransferRecommender, _dense


def _rows(users: int, items: int, seed: int) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    return sp.csr_matrix((rng.random((users, items)) < 0.15).astype(np.float32))


@pytest.mark.parametrize("encoders", [1, 2])
def test_with_every_item_sampled_the_loss_and_gradients_are_the_full_softmaxs(encoders):
    model = TransferRecommender(40, training(hidden=8, encoders=encoders, seed=4))
    model.encoder.eval()  # no dropout: the two losses see the same input
    rows = _rows(12, 40, 1)
    rows = rows[np.diff(rows.indptr) > 0]
    x = _dense(rows)
    full = -(torch.log_softmax(model.encoder(x), dim=2) * x[:, None, :]).sum(dim=2).sum(dim=1).mean()
    full.backward()
    expected = [p.grad.clone() for p in model.encoder.parameters()]
    model.encoder.zero_grad()
    sampled = model._sampled_loss(rows, torch.arange(40), 0.0)
    sampled.backward()
    assert float(sampled.detach()) == pytest.approx(float(full.detach()), rel=1e-5)
    for got, want in zip((p.grad for p in model.encoder.parameters()), expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def test_the_sampled_partition_is_unbiased():
    model = TransferRecommender(60, training(hidden=8, encoders=1, seed=5))
    model.encoder.eval()
    rows = _rows(6, 60, 2)
    rows = rows[np.diff(rows.indptr) > 0]
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        full = float(model._sampled_loss(rows, torch.arange(60), 0.0))
        draws = [
            float(model._sampled_loss(rows, torch.randint(0, 60, (15,), generator=generator), np.log(60 / 15)))
            for _ in range(400)
        ]
    # log of an unbiased sum: Jensen makes the mean loss a little low, never far off
    assert abs(np.mean(draws) - full) < 0.02 * abs(full)
    assert np.std(draws) > 0  # the sample matters


def test_past_softmax_items_max_pretraining_samples_and_still_learns_planted_clusters():
    # 3 clusters of 20 items; each user holds 6 items of one cluster; the held-out item is in the same cluster
    rng = np.random.default_rng(0)
    users, clusters = 300, rng.integers(0, 3, 300)
    picks = np.array([rng.choice(20, 7, replace=False) + 20 * c for c in clusters])
    train = sp.csr_matrix(
        (np.ones(users * 6, np.float32), (np.repeat(np.arange(users), 6), picks[:, :6].ravel())), (users, 60)
    )
    held = picks[:, 6]
    hits = {}
    for name, softmax_items_max in (("full", 10_000), ("sampled", 0)):
        model = TransferRecommender(
            60,
            training(
                hidden=16,
                encoders=1,
                epochs_pretrain=30,
                batch_size=32,
                seed=1,
                softmax_items_max=softmax_items_max,
                sampled_items=10,
            ),
        )
        history = model.pretrain(train)
        assert history[-1]["loss"] < history[0]["loss"]
        model.encoder.eval()
        scores = model._encoded(train)
        scores[train.nonzero()] = -np.inf
        top = np.argsort(-scores, axis=1)[:, :10]
        hits[name] = float(np.mean([held[u] in top[u] for u in range(users)]))
    # a random top-10 of the 54 unseen items holds the held-out item 19% of the time; the cluster alone gives 71%
    assert hits["sampled"] > 0.6 and hits["sampled"] > hits["full"] - 0.1


def test_scores_after_a_fused_adam_epoch_read_the_new_weights():
    # the fused kernel does not bump the weights' version, which the scoring cache is keyed on
    model = TransferRecommender(40, training(hidden=8, encoders=1, seed=6, softmax_items_max=20, sampled_items=10))
    rows = _rows(30, 40, 3)
    rows = rows[np.diff(rows.indptr) > 0]
    before = model._encoded(rows)
    optimiser = model._adam(model.encoder.parameters(), 0.05, fused=True)
    model._epoch(optimiser, rows)
    after = model._encoded(rows)
    model._encoder_cut = None
    np.testing.assert_array_equal(after, model._encoded(rows))
    assert not np.allclose(after, before)
