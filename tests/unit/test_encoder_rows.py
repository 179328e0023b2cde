"""The encoder's training rows: past DENSE_ROWS_BYTES they stay sparse and a minibatch at a time is made dense; the
model trained that way is the one trained on dense rows, weight for weight."""

import numpy as np
import scipy.sparse as sp
import torch

from transfer_rec.config import TrainingConfig
from transfer_rec.recommender import transfer


def world(users: int, items: int, per: int, seed: int) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    rows = np.repeat(np.arange(users), per)
    matrix = sp.csr_matrix(
        (np.ones(users * per, dtype=np.float32), (rows, rng.integers(0, items, users * per))), shape=(users, items)
    )
    matrix.sum_duplicates()
    matrix.data[:] = 1.0
    return matrix


def trained(monkeypatch, budget: int) -> transfer.TransferRecommender:
    monkeypatch.setattr(transfer, "DENSE_ROWS_BYTES", budget)
    config = TrainingConfig(epochs_pretrain=2, epochs_finetune=2, source_replay=0.5, item_grid=[])
    model = transfer.TransferRecommender(120, config)
    model.pretrain({"a": world(300, 120, 12, 1)})
    model.finetune(world(80, 120, 8, 2), world(80, 120, 2, 3))
    return model


def test_sparse_rows_train_the_same_model_as_dense_rows(monkeypatch):
    dense, sparse = trained(monkeypatch, 2**40), trained(monkeypatch, 0)
    for name, value in dense.encoder.state_dict().items():
        assert torch.equal(value, sparse.encoder.state_dict()[name]), name
    history = world(5, 120, 6, 4)
    assert np.array_equal(dense.score(history), sparse.score(history))


def test_the_budget_decides_the_form(monkeypatch):
    rows = world(50, 40, 5, 5)
    monkeypatch.setattr(transfer, "DENSE_ROWS_BYTES", 50 * 40 * 4)
    assert isinstance(transfer._training_rows(rows), torch.Tensor)
    monkeypatch.setattr(transfer, "DENSE_ROWS_BYTES", 50 * 40 * 4 - 1)
    assert sp.issparse(transfer._training_rows(rows))
