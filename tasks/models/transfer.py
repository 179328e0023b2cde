"""The transfer recommender: a history encoder pretrained on the source platform and fine-tuned on each target.

A user is a function of the items in their history (inductive), so new users are scored without retraining.
Architecture: a multinomial denoising autoencoder over the unified item space (one hidden layer).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any, Callable

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from tasks.metrics import evaluate_scores

EpochLog = Callable[[dict[str, Any]], None]


@dataclass
class TransferConfig:
    embedding_dim: int = 128
    dropout: float = 0.5
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 256
    epochs_pretrain: int = 12
    epochs_finetune: int = 30
    patience: int = 4
    strategy: str = "full"  # full | freeze_items
    seed: int = 2022
    k: int = 10


class _Net(nn.Module):
    def __init__(self, n_items: int, dim: int, dropout: float):
        super().__init__()
        self.encoder = nn.Linear(n_items, dim)
        self.decoder = nn.Linear(dim, n_items)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.normalize(x, dim=1)
        return self.decoder(torch.tanh(self.encoder(self.drop(x))))


def _dense(matrix: sp.csr_matrix) -> torch.Tensor:
    return torch.from_numpy(matrix.toarray().astype(np.float32))


class TransferRecommender:
    def __init__(self, n_items: int, config: TransferConfig):
        self.n_items = n_items
        self.config = config
        torch.manual_seed(config.seed)
        self.net = _Net(n_items, config.embedding_dim, config.dropout)

    def _train(self, rows: sp.csr_matrix, epochs: int, stage: str, log: EpochLog | None,
               valid: tuple[sp.csr_matrix, sp.csr_matrix, np.ndarray | None] | None = None) -> list[dict[str, Any]]:
        cfg = self.config
        generator = torch.Generator().manual_seed(cfg.seed + (0 if stage == "pretrain" else 1))
        params = [p for name, p in self.net.named_parameters()
                  if not (stage == "finetune" and cfg.strategy == "freeze_items" and name.startswith("encoder"))]
        optimiser = torch.optim.Adam(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        rows = rows[np.flatnonzero(np.diff(rows.indptr) > 0)]
        history: list[dict[str, Any]] = []
        best, best_state, waited = -1.0, None, 0
        for epoch in range(1, epochs + 1):
            started = time.perf_counter()
            self.net.train()
            order = torch.randperm(rows.shape[0], generator=generator).numpy()
            total = 0.0
            for start in range(0, len(order), cfg.batch_size):
                x = _dense(rows[order[start:start + cfg.batch_size]])
                torch.manual_seed(cfg.seed * 1000 + epoch * 100 + start)
                loss = -(torch.log_softmax(self.net(x), dim=1) * x).sum(dim=1).mean()
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
                total += float(loss.detach()) * x.shape[0]
            entry: dict[str, Any] = {"stage": stage, "epoch": epoch, "loss": total / max(rows.shape[0], 1)}
            if valid is not None:
                train, held_out, candidates = valid
                ndcg = float(np.mean(evaluate_scores(self.score(train), train, held_out, cfg.k, candidates)["ndcg"]))
                entry["valid_ndcg"] = ndcg
                if ndcg > best:
                    best, waited = ndcg, 0
                    best_state = {k: v.clone() for k, v in self.net.state_dict().items()}
                else:
                    waited += 1
            entry["seconds"] = time.perf_counter() - started
            history.append(entry)
            if log:
                log(entry)
            if valid is not None and waited >= cfg.patience:
                break
        if best_state is not None:
            self.net.load_state_dict(best_state)
        return history

    def pretrain(self, source: sp.csr_matrix, log: EpochLog | None = None) -> list[dict[str, Any]]:
        """Learn item representations from the source platform's users."""
        return self._train(source, self.config.epochs_pretrain, "pretrain", log)

    def finetune(self, train: sp.csr_matrix, valid: sp.csr_matrix, candidates: np.ndarray | None = None,
                 log: EpochLog | None = None) -> list[dict[str, Any]]:
        """Adapt to a target platform; keeps the epoch with the best validation NDCG@k (early stopping)."""
        return self._train(train, self.config.epochs_finetune, "finetune", log, valid=(train, valid, candidates))

    @torch.no_grad()
    def score(self, history: sp.csr_matrix) -> np.ndarray:
        self.net.eval()
        out = [self.net(_dense(history[i:i + 1024])).numpy() for i in range(0, history.shape[0], 1024)]
        return np.concatenate(out) if out else np.zeros((0, self.n_items), dtype=np.float32)

    def state(self) -> dict[str, Any]:
        return {"n_items": self.n_items, "config": asdict(self.config), "weights": self.net.state_dict()}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> "TransferRecommender":
        model = cls(state["n_items"], TransferConfig(**state["config"]))
        model.net.load_state_dict(state["weights"])
        return model
