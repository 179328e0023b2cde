"""The transfer recommender: pretrained on the source platforms, fine-tuned on each target platform.

A user is only their history (inductive), so new users are scored at request time without retraining. A history x
is a row over the items: 1 per item, or, with `rating_weight` > 0, 1 + rating_weight * (rating - 4) as built by
PlatformData.matrix (a history given without ratings, as at serving, counts every item 1: a rating of 4). The score
of a user with history x is a blend of two standardised parts over the target's items:

    score(x) = z(x @ B) + beta * z(f(items of x)) + w * z(kernel(x))

- B, item-item: a zero-diagonal linear autoencoder (EASE with a dropout-equivalent regulariser) over the unified item
  space. Pretraining keeps the source's rows S (their co-occurrences S'S are the prior); fine-tuning solves in closed
  form min ||X_t - X_t B||^2 + alpha^2 ||S - S B||^2 + ||Lambda^1/2 B||^2, diag(B) = 0, Lambda = lam + p/(1-p) diag(G):
  the source's users act as a prior, weighted by alpha, that the target's users refine. With several sources, S'S is
  the sum of the sources' co-occurrences that help: each target first drops, one by one, every source whose prior
  does not raise its validation NDCG at the configured setting (backward elimination; `source_weights` records 1 or
  0 per source), so a source that does not help gets no weight. B is solved for the
  configured (alpha, lam, drop_p) and each of `item_grid` (a solve is a few seconds); with `item_combine: mean` B is
  the mean of their weights, with `best` the one best on the target's validation split. Up to `item_dense_max` items
  the solve is exact; past it, by neighbourhoods (recommender/item_item.py), and B is sparse.
- f, history encoder: a multinomial denoising autoencoder (Mult-DAE), pretrained on all source users and fine-tuned on
  target users while a share of source users is replayed; early stopping on the target's validation NDCG@k. With
  `encoders` > 1 that many independent encoders (own weights, own dropout masks) train side by side on the same
  batches, and f is the mean of their standardised logits: a cheap ensemble that steadies the part.
- kernel, user-based: kernel ridge regression over the target's training users with the neural tangent kernel of an
  infinitely wide autoencoder (recommender/kernel.py), for histories of at least warm_min_history items (it hurt
  short ones, which the short-history parts of recommender/short_history.py serve instead). Its ridge setting and
  weight w (0: left out) are chosen on the target's validation split after beta.
- beta is chosen on the target's validation split.

The same class trained without `pretrain` is the target-only model: the transfer gain is the difference.
Fine-tuning can checkpoint its progress and resume after an interruption to the same model (`finetune`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from transfer_rec.config import TrainingConfig
from transfer_rec.metrics.ranking import candidate_ndcg, judges
from transfer_rec.recommender.item_item import (
    GramTerm,
    Neighbourhoods,
    dense_gram,
    gram_diagonal,
    item_item_solve,
    rows_from,
    rows_state,
    times,
    weights_from,
    weights_state,
)
from transfer_rec.recommender.kernel import UserKernel
from transfer_rec.recommender.short_history import ShortHistoryParts, zscore

log = logging.getLogger(__name__)

EpochLog = Callable[[dict[str, Any]], None]


def item_settings(config: TrainingConfig) -> list[tuple[float, float, float]]:
    """The item-item settings fine-tuning solves: the configured (alpha, lam, drop_p) first, then the grid's others."""
    settings = [(float(config.alpha), float(config.lam), float(config.drop_p))]
    return settings + [tuple(float(v) for v in t) for t in config.item_grid if tuple(t) not in settings]


class _Encoder(torch.nn.Module):
    """Mult-DAE: L2-normalised multi-hot history -> dropout -> tanh hidden -> item logits; `members` independent
    ones side by side (each its own weights and dropout masks; the input layers as one wide matrix), trained on the
    same batches. forward gives (batch, members, items) logits."""

    def __init__(self, n_items: int, hidden: int, dropout: float, members: int = 1):
        super().__init__()
        self.members, self.hidden = members, hidden
        self.enc = torch.nn.Linear(n_items, members * hidden)
        self.dec = torch.nn.Linear(hidden, members * n_items)  # member m's rows: m * n_items ... (m + 1) * n_items
        self.dropout = dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.nn.functional.normalize(x, dim=1)
        m, n_items = self.members, x.shape[1]
        if m == 1:  # the plain layer: exactly one encoder's numbers, without the members' reshaping
            hidden = self.enc(torch.nn.functional.dropout(h, self.dropout, self.training))[:, None, :]
        else:
            h = torch.nn.functional.dropout(h[:, None, :].expand(-1, m, -1), self.dropout, self.training)
            hidden = torch.einsum("bmn,mhn->bmh", h, self.enc.weight.view(m, self.hidden, n_items))
            hidden = hidden + self.enc.bias.view(m, self.hidden)
        out = torch.einsum("bmh,mnh->bmn", torch.tanh(hidden), self.dec.weight.view(m, n_items, self.hidden))
        return out + self.dec.bias.view(m, n_items)


def resolve_device(name: str | torch.device = "cpu") -> torch.device:
    """The torch device to train on: the configured one when this machine has it, else the CPU (with a warning, so a
    GPU setting carried to a machine without one slows the run down instead of failing it)."""
    device = torch.device(name)
    present = (
        device.type == "cpu"
        or (device.type == "cuda" and torch.cuda.is_available() and (device.index or 0) < torch.cuda.device_count())
        or (device.type == "mps" and torch.backends.mps.is_available())
    )
    if not present:
        log.warning("runtime.device %s is not available on this machine: training on the CPU", name)
        return torch.device("cpu")
    return device


def _dense(matrix: sp.spmatrix) -> torch.Tensor:
    return torch.from_numpy(np.asarray(sp.csr_matrix(matrix).toarray(), dtype=np.float32))


# Training rows up to this size (users x items x 4 bytes) are made dense once per epoch: indexing a dense tensor is
# faster per minibatch than slicing a CSR matrix, which matters on small platforms with many small batches. Past it,
# the rows stay sparse and only a minibatch is made dense, so memory grows with the interactions.
DENSE_ROWS_BYTES = 256 * 2**20


def _training_rows(matrix: sp.csr_matrix | torch.Tensor) -> torch.Tensor | sp.csr_matrix:
    if isinstance(matrix, torch.Tensor) or matrix.shape[0] * matrix.shape[1] * 4 > DENSE_ROWS_BYTES:
        return matrix
    return _dense(matrix)


def _binary(matrix: sp.spmatrix) -> sp.csr_matrix:
    """The items of a (possibly rating-weighted) history: what the encoder reads."""
    matrix = sp.csr_matrix(matrix, dtype=np.float32, copy=True)
    matrix.sum_duplicates()
    matrix.data[:] = 1.0
    return matrix


def _sparse_state(matrix: sp.csr_matrix | None) -> dict[str, Any] | None:
    if matrix is None:
        return None
    return {
        "indptr": torch.from_numpy(matrix.indptr.astype(np.int64)),
        "indices": torch.from_numpy(matrix.indices.astype(np.int64)),
        "shape": list(matrix.shape),
    }


def _sparse_from(state: dict[str, Any] | None) -> sp.csr_matrix | None:
    if state is None:
        return None
    indices = state["indices"].numpy()
    return sp.csr_matrix(
        (np.ones(len(indices), dtype=np.float32), indices, state["indptr"].numpy()), shape=tuple(state["shape"])
    )


# A fine-tune writes its progress at most this often (besides after the item-item choice and the last epoch): a
# write every epoch was 7-9% of a make-run target's fine-tune (2026-12-07); a restart redoes at most this much and
# the epoch that crossed it.
CHECKPOINT_SECONDS = 30.0


def _save_checkpoint(path: Path, content: dict[str, Any]) -> None:
    """Write atomically: a kill mid-write leaves the previous checkpoint intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".tmp")
    with open(partial, "wb") as handle:
        torch.save(content, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(partial, path)


def _load_checkpoint(path: Path | None, fingerprint: str) -> dict[str, Any] | None:
    """The saved fine-tune progress if `path` holds one for this very run, else None."""
    if path is None or not Path(path).exists():
        return None
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a damaged file is not worth failing the run for: start over
        log.warning("fine-tune checkpoint %s unreadable (%s); starting over", path, error)
        return None
    if content.get("fingerprint") != fingerprint:
        log.warning("fine-tune checkpoint %s is for other data, settings or weights; starting over", path)
        return None
    if not {"source_weights", "item_combined"} <= set(content):  # written before it recorded them: start over
        log.warning("fine-tune checkpoint %s does not say which sources and settings it kept; starting over", path)
        return None
    log.info("resuming fine-tune from %s after epoch %d", path, content["progress"]["epoch"])
    return content


class TransferRecommender:
    def __init__(self, n_items: int, config: TrainingConfig, k: int = 10, device: str | torch.device = "cpu"):
        self.n_items = n_items
        self.config = config
        self.k = k  # the cut-off of the validation NDCG that early stopping and every choice on valid maximise
        torch.manual_seed(config.seed)
        self._generator = torch.Generator().manual_seed(config.seed)
        # The encoder trains on `device`; the minibatch order stays on the CPU generator, and scoring reads the
        # weights on the CPU (a request is one sparse row: a GPU round trip would cost more than it saves).
        self.device = resolve_device(device)
        self.encoder = _Encoder(n_items, config.hidden, config.input_dropout, config.encoders).to(self.device)
        # each source platform's rows (users x items, rating-weighted), whose item co-occurrences are the item-item
        # part's prior, and whether a target's item-item part uses them (1 or 0). Older saved models hold a dense
        # Gram (items x items) instead of the rows: both are terms of the Gram (recommender/item_item.py).
        self.source_items: dict[str, sp.csr_matrix | np.ndarray] = {}
        self.source_weights: dict[str, float] = {}
        self.source: sp.csr_matrix | None = None
        self.candidates = np.arange(n_items)
        # No item-item part until a fine-tune solves one: an empty sparse matrix, not a dense items x items one of
        # zeros. Every model starts here (the pretrained one, its copy per target, each loaded checkpoint), and a
        # state that holds the dense zeros writes and reads them whole: at 43,000 items each copy was 7.2 GiB and
        # the pretraining checkpoint 7.4 GB on disk.
        self.weights: np.ndarray | sp.csr_matrix = sp.csr_matrix((n_items, n_items), dtype=np.float32)
        self.beta = 1.0
        self.item_params = (float(config.alpha), float(config.lam), float(config.drop_p))
        # how many settings' weights the item-item part is the mean of (1: item_params' alone)
        self.item_combined = 1
        self._exact_items = True  # set per fine-tune by the items the target and its sources have (item_dense_max)
        self._gram_items: np.ndarray | None = None  # the items the dense Grams of a fine-tune span, if it made them
        self._neighbourhoods: dict[tuple[float, tuple[str, ...]], Neighbourhoods] = {}
        self.kernel: UserKernel | None = None
        self.kernel_weight = 0.0
        self.valid_ndcg = float("nan")  # the fine-tuned model's validation NDCG@k (set by finetune)
        # Optional parts for short histories (recommender/short_history.py), fitted apart (selection/).
        self.short_history: Any = None

    # -- training --------------------------------------------------------------------------------------------
    def _adam(self, params: Any, lr: float, fused: bool = False) -> torch.optim.Adam:
        """Adam; `fused`: one kernel per step where torch has it (CPU, CUDA), the same update up to float rounding.
        Pretraining and fine-tuning of large catalogues only (past softmax_items_max, where the loss is sampled):
        smaller ones keep their exact numbers. At 20,000 items and 600 hidden units one step took 15 against 113 ms
        (docs/results/2026-12-06-fused-finetune.md); the fine-tune's Adam was 19% of its profiled time there."""
        return torch.optim.Adam(params, lr=lr, fused=fused and self.device.type in ("cpu", "cuda"))

    def _epoch(self, optimiser: torch.optim.Optimizer, rows: sp.csr_matrix | torch.Tensor) -> float:
        """One pass over the rows in shuffled minibatches. Large rows stay sparse and only a minibatch is made dense
        (batch x items), so memory grows with the interactions, not with users x items (DENSE_ROWS_BYTES). Past
        softmax_items_max items a minibatch is never made dense: the loss is the sampled one (_sampled_loss)."""
        self.encoder.train()
        sampled = self.n_items > self.config.softmax_items_max
        if sampled and isinstance(rows, torch.Tensor):
            rows = sp.csr_matrix(rows.cpu().numpy())
        rows = rows if sampled else _training_rows(rows)
        n_rows = rows.shape[0]
        order = torch.randperm(n_rows, generator=self._generator)
        total = 0.0
        for start in range(0, n_rows, self.config.batch_size):
            batch = order[start : start + self.config.batch_size]
            if sampled:
                negatives = torch.randint(0, self.n_items, (self.config.sampled_items,), generator=self._generator)
                loss = self._sampled_loss(rows[batch.numpy()], negatives, np.log(self.n_items / len(negatives)))
            else:
                x = rows[batch] if isinstance(rows, torch.Tensor) else _dense(rows[batch.numpy()])
                x = x.to(self.device)
                # every member's multinomial likelihood (summed: each member learns as it would alone)
                loss = -(torch.log_softmax(self.encoder(x), dim=2) * x[:, None, :]).sum(dim=2).sum(dim=1).mean()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            total += float(loss.detach()) * len(batch)
        # the fused kernel updates the weights without bumping their version: the scoring cache must not trust it
        self._encoder_cut = None
        return total / max(n_rows, 1)

    def _sampled_loss(self, rows: sp.csr_matrix, negatives: torch.Tensor, log_weight: float) -> torch.Tensor:
        """The multinomial likelihood of a sparse minibatch with a sampled normaliser, summed over the members and
        averaged over the rows. A row's log-partition sums exp(logit) over its own items exactly and over the sampled
        `negatives` that are not its items, each weighted by exp(log_weight) (items / sample size for a uniform
        sample: an unbiased estimate of the sum over the items the row lacks). With every item as a negative and
        log_weight 0 this is the full softmax's loss (tests/unit/test_sampled_softmax.py). The input layer reads only
        the row's items (a sparse product), and dropout drops those entries, as it does in the dense forward pass."""
        rows = _binary(rows)
        lengths = np.diff(rows.indptr)
        row_of = torch.from_numpy(np.repeat(np.arange(rows.shape[0]), lengths)).to(self.device)
        items = torch.from_numpy(rows.indices.astype(np.int64)).to(self.device)
        norm = torch.from_numpy((1.0 / np.sqrt(np.maximum(lengths, 1))).astype(np.float32)).to(self.device)
        negatives = negatives.to(self.device)
        # a sampled item that is the row's own is counted among its items, not again as a negative
        own = torch.from_numpy(rows[:, negatives.cpu().numpy()].toarray() > 0).to(self.device)
        encoder, m, hidden_size, p = self.encoder, self.encoder.members, self.encoder.hidden, self.encoder.dropout
        n_rows, n_items, nnz = rows.shape[0], self.n_items, len(items)
        # Every member at once, each parameter read once: a member's slice of a parameter (a select) would cost a
        # zero-filled gradient of the whole parameter in backward, per member and per use (most of a step's time
        # at 17,000 items; docs/results/2026-12-04-sampled-encoder-step.md).
        values = []
        for _ in range(m):  # each member its own dropout mask, drawn in member order
            v = norm[row_of]
            if encoder.training and p > 0:
                v = v * (torch.rand(len(v), device=self.device) >= p).float() / (1.0 - p)
            values.append(v)
        member_rows = torch.cat([row_of + k * n_rows for k in range(m)])
        with warnings.catch_warnings():  # torch calls its CSR tensors beta; the product below is what they do well
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            x_t = (
                torch.sparse_coo_tensor(
                    torch.stack([items.repeat(m), member_rows]),
                    torch.cat(values),
                    (n_items, m * n_rows),
                    check_invariants=False,
                )
                .coalesce()
                .to_sparse_csr()
            )
        # member k's rows times member k's input weights: the diagonal blocks of all rows times all weights. The
        # weights (hidden x items) times the rows' transpose as CSR: a quarter of the time of rows times the
        # weights' transpose, which copies the weights for every step.
        product = (encoder.enc.weight @ x_t).T.reshape(m, n_rows, m, hidden_size)
        diagonal = torch.arange(m, device=self.device)
        hidden = torch.tanh(product[diagonal, :, diagonal] + encoder.enc.bias.view(m, 1, hidden_size))
        offsets = (torch.arange(m, device=self.device) * n_items)[:, None]
        wanted = torch.cat([(offsets + items).reshape(-1), (offsets + negatives).reshape(-1)])
        weights = encoder.dec.weight[wanted]
        biases = encoder.dec.bias[wanted]
        pos_w, neg_w = weights[: m * nnz].view(m, nnz, hidden_size), weights[m * nnz :].view(m, -1, hidden_size)
        pos_b, neg_b = biases[: m * nnz].view(m, nnz), biases[m * nnz :].view(m, -1)
        positive = (hidden[:, row_of] * pos_w).sum(dim=2) + pos_b  # (members, row items)
        negative = torch.bmm(hidden, neg_w.transpose(1, 2)) + neg_b[:, None, :] + log_weight
        negative = negative.masked_fill(own[None], -torch.inf)
        by_row = row_of.expand(m, nnz)
        top = torch.maximum(
            negative.max(dim=2).values,
            torch.full((m, n_rows), -torch.inf, device=self.device).scatter_reduce(
                1, by_row, positive.detach(), reduce="amax"
            ),
        ).detach()
        mass = torch.zeros(m, n_rows, device=self.device).index_add(1, row_of, torch.exp(positive - top[:, row_of]))
        mass = mass + torch.exp(negative - top[:, :, None]).sum(dim=2)
        log_partition = top + torch.log(mass)
        counts = torch.from_numpy(lengths.astype(np.float32)).to(self.device)
        likelihood = torch.zeros(m, n_rows, device=self.device).index_add(1, row_of, positive) - counts * log_partition
        return -likelihood.sum() / n_rows

    @property
    def source_gram(self) -> np.ndarray | None:
        """The item-item part's prior: the co-occurrences of the sources in use (None without a source)."""
        if not self.source_items:
            return None
        used = [(1.0, rows) for name, rows in self.source_items.items() if self.source_weights.get(name, 1.0) > 0]
        return dense_gram(used, self.n_items)

    def pretrain(
        self, source: sp.spmatrix | Mapping[str, sp.spmatrix], log: EpochLog | None = None
    ) -> list[dict[str, Any]]:
        """Learn from the source platforms' users (one matrix, or one per source by name): their item co-occurrences
        (kept per source) and the history encoder (on all of them)."""
        sources = dict(source) if isinstance(source, Mapping) else {"source": source}
        kept = []
        for name, matrix in sources.items():
            matrix = sp.csr_matrix(matrix, dtype=np.float32)
            matrix = matrix[np.flatnonzero(np.diff(matrix.indptr) > 0)]
            self.source_items[name] = matrix
            self.source_weights[name] = 1.0
            kept.append(matrix)
        self.source = _binary(sp.vstack(kept).tocsr())
        sampled = self.n_items > self.config.softmax_items_max
        rows = self.source if sampled else _training_rows(self.source)
        optimiser = self._adam(self.encoder.parameters(), self.config.learning_rate, fused=sampled)
        history = []
        for epoch in range(1, self.config.epochs_pretrain + 1):
            started = time.perf_counter()
            entry = {
                "stage": "pretrain",
                "epoch": epoch,
                "loss": self._epoch(optimiser, rows),
                "seconds": time.perf_counter() - started,
            }
            history.append(entry)
            if log:
                log(entry)
        return history

    def _valid_ndcg(self, scores: np.ndarray, train: sp.csr_matrix, valid: sp.csr_matrix) -> float:
        """Validation NDCG@k of scores over the candidates (rows aligned with train and valid)."""
        return candidate_ndcg(scores, train, valid, self.k, self.candidates)

    def finetune(
        self,
        train: sp.spmatrix,
        valid: sp.spmatrix,
        candidates: np.ndarray | None = None,
        log: EpochLog | None = None,
        checkpoint: Path | None = None,
        checkpoint_seconds: float = CHECKPOINT_SECONDS,
    ) -> list[dict[str, Any]]:
        """Adapt to a target: item-item solve, encoder fine-tuning with early stopping, blend weight on valid.

        `candidates` (a boolean mask over items) are the target's items, the only ones ever recommended.
        `checkpoint`: after the item-item choice, after an encoder epoch once `checkpoint_seconds` have passed since
        the last write, and after the last epoch, the fine-tune's whole progress (encoder, optimiser, random
        generators, best state, history) is written there atomically. A later call with the same model, data and
        checkpoint resumes after the last epoch written and ends with the same model as an uninterrupted run. A
        checkpoint written for other data, settings or starting weights is ignored (and overwritten). The file is
        removed when the fine-tune finishes.
        """
        cfg = self.config
        train = sp.csr_matrix(train, dtype=np.float32)
        valid = sp.csr_matrix(valid, dtype=np.float32)
        self.candidates = np.flatnonzero(candidates) if candidates is not None else np.arange(self.n_items)
        fingerprint = self._fingerprint(train, valid) if checkpoint is not None else ""
        saved = _load_checkpoint(checkpoint, fingerprint)
        history: list[dict[str, Any]] = list(saved["history"]) if saved else []

        def emit(entry: dict[str, Any]) -> None:
            history.append(entry)
            if log:
                log(entry)

        # the users every choice below is judged by (valid_users_max), and their train and valid rows
        judged = judges(valid, cfg.valid_users_max, cfg.seed)
        judge_train, judge_valid = train[judged], valid[judged]
        if saved:
            self.weights, self.item_params = weights_from(saved["weights"]), tuple(saved["item_params"])
            self.item_combined = int(saved["item_combined"])
            # the sources the choice kept: a source it dropped must not come back (and feed the later parts)
            self.source_weights = dict(saved["source_weights"])
            item_item = times(judge_train, self.weights)
        else:
            item_item = self._choose_item_item(train, judge_train, judge_valid, emit)

        target_rows = _binary(train[np.flatnonzero(np.diff(train.indptr) > 0)])
        source_rows = self.source if self.source is not None and cfg.source_replay > 0 else None
        params = self.encoder.parameters() if cfg.strategy == "full" else self.encoder.dec.parameters()
        optimiser = self._adam(params, cfg.learning_rate, fused=self.n_items > cfg.softmax_items_max)
        progress: dict[str, Any] = {"epoch": 0, "best": -1.0, "best_epoch": 0, "best_state": None, "stopped": False}
        if saved:
            self.encoder.load_state_dict(saved["encoder"])
            optimiser.load_state_dict(saved["optimiser"])
            self._generator.set_state(saved["generator"])
            torch.set_rng_state(saved["torch_rng"])
            progress = saved["progress"]

        last_save = time.monotonic()

        def save() -> None:
            nonlocal last_save
            last_save = time.monotonic()
            if checkpoint is not None:
                _save_checkpoint(
                    checkpoint,
                    {
                        "fingerprint": fingerprint,
                        "history": history,
                        "weights": weights_state(self.weights),
                        "item_params": list(self.item_params),
                        "item_combined": self.item_combined,
                        "source_weights": dict(self.source_weights),
                        "encoder": self.encoder.state_dict(),
                        "optimiser": optimiser.state_dict(),
                        "generator": self._generator.get_state(),
                        "torch_rng": torch.get_rng_state(),
                        "progress": progress,
                    },
                )

        if not saved:
            save()  # the item-item choice (a few solves) is not redone after a restart
        while not progress["stopped"] and progress["epoch"] < cfg.epochs_finetune:
            epoch = progress["epoch"] + 1
            started = time.perf_counter()
            rows = target_rows
            if source_rows is not None:
                n_replay = int(round(cfg.source_replay * source_rows.shape[0]))
                replay = torch.randperm(source_rows.shape[0], generator=self._generator)[:n_replay].numpy()
                rows = sp.vstack([target_rows, source_rows[replay]], format="csr")
            loss = self._epoch(optimiser, rows)
            ndcg = self._valid_ndcg(self._encoded(judge_train), judge_train, judge_valid)
            emit(
                {
                    "stage": "finetune",
                    "epoch": epoch,
                    "loss": loss,
                    "valid_ndcg": ndcg,
                    "seconds": time.perf_counter() - started,
                }
            )
            progress["epoch"] = epoch
            if ndcg > progress["best"]:
                progress.update(
                    best=ndcg, best_epoch=epoch, best_state={k: v.clone() for k, v in self.encoder.state_dict().items()}
                )
            progress["stopped"] = epoch - progress["best_epoch"] >= cfg.patience
            last = progress["stopped"] or epoch >= cfg.epochs_finetune
            if last or time.monotonic() - last_save >= checkpoint_seconds:
                save()
        if progress["best_state"] is not None:
            self.encoder.load_state_dict(progress["best_state"])

        z_item, z_encoded = zscore(item_item), zscore(self._encoded(judge_train))
        grid = {b: self._valid_ndcg(z_item + b * z_encoded, judge_train, judge_valid) for b in cfg.beta_grid}
        self.beta = float(max(grid, key=lambda b: (grid[b], -b)))
        emit({"stage": "blend", "epoch": 0, "beta": self.beta, "valid_ndcg": grid[self.beta], "seconds": 0.0})
        self.valid_ndcg = self._choose_kernel(
            train, judge_train, judge_valid, z_item + self.beta * z_encoded, grid[self.beta], emit
        )
        if checkpoint is not None:
            Path(checkpoint).unlink(missing_ok=True)
        return history

    def _choose_item_item(
        self,
        train: sp.csr_matrix,
        judge_train: sp.csr_matrix,
        judge_valid: sp.csr_matrix,
        emit: Callable[[dict[str, Any]], None],
    ) -> np.ndarray:
        """Solve the item-item part (on all of train) for each configured setting. `item_combine: best` keeps the
        best on valid; `mean` keeps the mean of all settings' weights (item_params still names the best on valid).
        Returns the kept part's scores of the judges."""
        cfg = self.config
        terms = self._gram_terms(train)
        configured = None  # the configured setting's weights with the kept sources, if the source choice solved it
        if self.source_items:
            configured = self._choose_sources(terms, judge_train, judge_valid, emit)
        used = [name for name in self.source_items if self.source_weights.get(name, 1.0) > 0]
        settings = item_settings(cfg) if self._exact(terms, used) else item_settings(cfg)[:1]
        if not used:  # alpha has no effect without a source: one solve per (lam, drop_p)
            settings = list(dict.fromkeys((cfg.alpha, lam, drop_p) for _, lam, drop_p in settings))
        best_item, item_item, total = -1.0, None, None
        for index, (alpha, lam, drop_p) in enumerate(settings):
            started = time.perf_counter()
            if index == 0 and configured is not None:
                weights = configured
            else:
                weights = self._solve(terms, used, alpha, lam, drop_p)
            scores = times(judge_train, weights)
            ndcg = self._valid_ndcg(scores, judge_train, judge_valid)
            emit(
                {
                    "stage": "item_item",
                    "epoch": index,
                    "alpha": float(alpha),
                    "lam": float(lam),
                    "drop_p": float(drop_p),
                    "valid_ndcg": ndcg,
                    "seconds": time.perf_counter() - started,
                }
            )
            total = weights.copy() if total is None else total + weights
            if ndcg > best_item:
                best_item, item_item, self.weights = ndcg, scores, weights
                self.item_params = (float(alpha), float(lam), float(drop_p))
        self._neighbourhoods = {}
        self.item_combined = 1
        if cfg.item_combine == "mean" and len(settings) > 1:
            self.item_combined = len(settings)
            # valid tells the settings apart by less than its own noise (seed to seed the best one changes); their
            # mean does not depend on that choice
            self.weights = (total / len(settings)).astype(np.float32)
            item_item = times(judge_train, self.weights)
            emit(
                {
                    "stage": "item_mean",
                    "epoch": 0,
                    "settings": float(len(settings)),
                    "valid_ndcg": self._valid_ndcg(item_item, judge_train, judge_valid),
                    "seconds": 0.0,
                }
            )
        return item_item

    def _gram_terms(self, train: sp.csr_matrix) -> dict[str | None, sp.csr_matrix | np.ndarray]:
        """The Gram's terms by source name (None: the target's train rows). Up to item_dense_max items (those the
        target and its sources have) each is made a dense Gram over those items once, as every solve is exact; past
        it they stay rows: read a block of columns at a time by the neighbourhood solve, or made a Gram by a solve
        whose own terms have few enough items (the target alone, without a large source)."""
        rows: dict[str | None, sp.csr_matrix | np.ndarray] = {None: train, **self.source_items}
        active = np.flatnonzero(gram_diagonal([(1.0, t) for t in rows.values()], self.n_items) > 0)
        self._exact_items = len(active) <= self.config.item_dense_max
        self._gram_items = active if self._exact_items else None
        self._neighbourhoods = {}
        log.info(
            "item-item part over %d items: %s",
            len(active),
            "exact" if self._exact_items else f"by neighbourhoods of {self.config.item_neighbours} items",
        )
        if not self._exact_items:
            return rows
        return {name: dense_gram([(1.0, t)], self.n_items, active) for name, t in rows.items()}

    def _solve_items(self, terms: dict[str | None, sp.csr_matrix | np.ndarray], used: list[str]) -> np.ndarray:
        """The items the target's and the used sources' terms have (those the Grams of _gram_terms span, if made)."""
        if self._gram_items is not None:
            return self._gram_items
        return np.flatnonzero(gram_diagonal([(1.0, terms[None])] + [(1.0, terms[n]) for n in used], self.n_items) > 0)

    def _exact(self, terms: dict[str | None, sp.csr_matrix | np.ndarray], used: list[str]) -> bool:
        return len(self._solve_items(terms, used)) <= self.config.item_dense_max

    def _spread(self, block: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Weights among `items` (sorted) as the items x candidates array of the model (zero for other items)."""
        out = np.zeros((self.n_items, len(self.candidates)), dtype=np.float32)
        if not len(items):
            return out
        position = np.minimum(np.searchsorted(items, self.candidates), len(items) - 1)
        inside = items[position] == self.candidates
        out[np.ix_(items, np.flatnonzero(inside))] = block[:, position[inside]]
        return out

    def _solve(
        self,
        terms: dict[str | None, sp.csr_matrix | np.ndarray],
        used: list[str],
        alpha: float,
        lam: float,
        drop_p: float,
    ) -> np.ndarray | sp.csr_matrix:
        """The item-item weights over the candidates for the target's rows plus alpha^2 x the used sources': a dense
        array when solved exactly; by neighbourhoods, a sparse row-major one (a history reads its items' rows only)."""
        gram: list[GramTerm] = [(1.0, terms[None])] + [(alpha**2, terms[name]) for name in used]
        if self._exact(terms, used):
            items = self._solve_items(terms, used)
            if self._gram_items is not None:  # the terms are dense Grams over these items
                dense = sum((weight * term for weight, term in gram[1:]), gram[0][1].copy())
            else:
                dense = dense_gram(gram, self.n_items, items)
            return self._spread(item_item_solve(dense, lam, drop_p, overwrite=True), items)
        # the neighbourhoods of the last two Grams are kept: the settings of one alpha share them, and the source
        # check alternates between two
        key = (alpha, tuple(used))
        found = self._neighbourhoods.pop(key, None) or Neighbourhoods.find(
            gram, self.n_items, self.config.item_neighbours
        )
        self._neighbourhoods = {**dict(list(self._neighbourhoods.items())[-1:]), key: found}
        return found.solve(lam, drop_p, self.candidates).tocsr()

    def _choose_sources(
        self,
        terms: dict[str | None, sp.csr_matrix | np.ndarray],
        train: sp.csr_matrix,
        valid: sp.csr_matrix,
        emit: Callable[[dict[str, Any]], None],
    ) -> np.ndarray | sp.csr_matrix:
        """Backward elimination of sources at the configured (alpha, lam, drop_p): while leaving some source out
        scores at least as well on valid as keeping it, leave out the one whose absence scores best. Returns the
        weights solved for the kept sources (the item-item choice's first setting: not solved twice)."""
        alpha, lam, drop_p = self.config.alpha, self.config.lam, self.config.drop_p

        def trial(used: list[str]) -> tuple[float, np.ndarray | sp.csr_matrix]:
            weights = self._solve(terms, used, alpha, lam, drop_p)
            return self._valid_ndcg(times(train, weights), train, valid), weights

        used = list(self.source_items)
        current, kept = trial(used)
        while used:
            best: tuple[str, float, Any] | None = None  # only the best trial's weights are held
            for name in used:
                ndcg, weights = trial([n for n in used if n != name])
                if best is None or ndcg > best[1]:
                    best = (name, ndcg, weights)
                del weights
            name, without, weights = best
            if without < current:
                break
            used.remove(name)
            current, kept = without, weights
        self.source_weights = {name: float(name in used) for name in self.source_items}
        for index, (name, weight) in enumerate(self.source_weights.items()):
            emit({"stage": "source", "epoch": index, "source": name, "weight": weight, "valid_ndcg": current})
        return kept

    def _choose_kernel(
        self,
        train: sp.csr_matrix,
        judge_train: sp.csr_matrix,
        judge_valid: sp.csr_matrix,
        blend: np.ndarray,
        blend_ndcg: float,
        emit: Callable[[dict[str, Any]], None],
    ) -> float:
        """Fit the user-kernel part (on train) for each ridge setting; keep it with the blend weight best on the
        judges' valid, or leave it out (weight 0) when no weight beats the blend (the judges' scores) without it.
        Returns the final model's valid NDCG."""
        cfg = self.config
        self.kernel, self.kernel_weight = None, 0.0
        weights = [w for w in cfg.kernel_weights if w > 0]
        best = blend_ndcg
        if not weights:
            return best
        trials: list[tuple[float, float]] = []
        basis = min(cfg.kernel_max_users, max(1, cfg.kernel_cells_max // max(len(self.candidates), 1)))
        for lam in cfg.kernel_lams:
            started = time.perf_counter()
            part = UserKernel(lam, basis, cfg.seed).fit(train, self.candidates)
            z_kernel = zscore(part.score(judge_train))
            for weight in weights:
                ndcg = self._valid_ndcg(
                    self._with_kernel(blend, judge_train, part, weight, z_kernel), judge_train, judge_valid
                )
                emit(
                    {
                        "stage": "kernel",
                        "epoch": len(trials),
                        "lam": lam,
                        "weight": weight,
                        "valid_ndcg": ndcg,
                        "seconds": time.perf_counter() - started,
                    }
                )
                trials.append((lam, weight))
                if ndcg > best:
                    best, self.kernel, self.kernel_weight = ndcg, part, weight
        return best

    def _with_kernel(
        self,
        scores: np.ndarray,
        history: sp.spmatrix,
        part: UserKernel,
        weight: float,
        z_kernel: np.ndarray | None = None,
    ) -> np.ndarray:
        """The blend plus the kernel part for histories of at least warm_min_history items (it hurts short histories,
        which the short-history parts serve; docs/model.md)."""
        rows = np.flatnonzero(np.diff(sp.csr_matrix(history).indptr) >= self.config.warm_min_history)
        if not len(rows):
            return scores
        if z_kernel is None:
            z_kernel = zscore(part.score(sp.csr_matrix(history)[rows]))
        else:
            z_kernel = z_kernel[rows]
        out = np.array(scores, copy=True)
        out[rows] += weight * z_kernel
        return out

    def _fingerprint(self, train: sp.csr_matrix, valid: sp.csr_matrix) -> str:
        """What a checkpoint must match to be resumed: settings, data, candidates and the starting weights."""
        digest = hashlib.sha256(
            json.dumps({**self.config.model_dump(mode="json"), "k": self.k}, sort_keys=True).encode()
        )
        for matrix in (train, valid):
            for part in (matrix.indptr, matrix.indices, matrix.data, np.asarray(matrix.shape)):
                digest.update(np.ascontiguousarray(part).tobytes())
        digest.update(self.candidates.astype(np.int64).tobytes())
        for name, tensor in self.encoder.state_dict().items():
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().numpy().tobytes())
        digest.update(json.dumps(sorted(self.source_items)).encode() if self.source is not None else b"no source")
        return digest.hexdigest()

    # -- scoring ---------------------------------------------------------------------------------------------
    def _item_item(self, history: sp.spmatrix) -> np.ndarray:
        return times(history, self.weights)

    def _encoder_arrays(self) -> tuple[np.ndarray, np.ndarray, torch.Tensor, torch.Tensor]:
        """The encoder's weights for scoring: the input layer row-major by item (a history reads only its own
        items' rows) and each member's output layer cut to the candidates (members x hidden x candidates), built once
        per weights and candidate set (the dense forward pass over every item cost most of a one-user request)."""
        layers = (self.encoder.enc.weight, self.encoder.enc.bias, self.encoder.dec.weight, self.encoder.dec.bias)
        # in-place updates (per-tensor optimiser steps, load_state_dict) bump a tensor's version; fused Adam's steps do
        # not, so _epoch drops this cache when it ends
        key = (tuple((t.data_ptr(), t._version) for t in layers), hash(self.candidates.tobytes()))
        cached = getattr(self, "_encoder_cut", None)
        if cached is None or cached[0] != key:
            enc_w, enc_b, dec_w, dec_b = (t.detach().cpu().numpy() for t in layers)
            m = self.encoder.members
            dec_w = dec_w.reshape(m, self.n_items, -1)[:, self.candidates]
            cached = (
                key,
                (
                    np.ascontiguousarray(enc_w.T),
                    enc_b.copy(),
                    torch.from_numpy(np.ascontiguousarray(dec_w.transpose(0, 2, 1))),
                    torch.from_numpy(dec_b.reshape(m, self.n_items)[:, self.candidates].copy()),
                ),
            )
            self._encoder_cut = cached
        return cached[1]

    def _encoded(self, history: sp.spmatrix) -> np.ndarray:
        """The encoder's (eval mode) item logits over the candidates: L2-normalised history -> tanh -> output; with
        several members, the mean of their standardised logits."""
        enc_w, enc_b, dec_w, dec_b = self._encoder_arrays()
        normalised = _binary(history)
        lengths = np.diff(normalised.indptr)  # binary rows: the L2 norm is the root of the length
        normalised.data *= np.repeat((1.0 / np.maximum(np.sqrt(lengths), 1e-12)).astype(np.float32), lengths)
        hidden = torch.from_numpy(np.tanh(np.asarray(normalised @ enc_w, dtype=np.float32) + enc_b))
        # torch's matmul, not numpy's: it keeps to torch's thread setting (one thread for small requests)
        if len(dec_w) == 1:
            return torch.addmm(dec_b[0], hidden, dec_w[0]).numpy()
        size = hidden.shape[1] // len(dec_w)
        members = [
            zscore(torch.addmm(dec_b[m], hidden[:, m * size : (m + 1) * size], dec_w[m]).numpy())
            for m in range(len(dec_w))
        ]
        return np.mean(members, axis=0)

    def _full(self, candidate_scores: np.ndarray) -> np.ndarray:
        out = np.full((candidate_scores.shape[0], self.n_items), -np.inf, dtype=np.float64)
        out[:, self.candidates] = candidate_scores
        return out

    def score(self, history: sp.spmatrix, profiles: Any = None) -> np.ndarray:
        """Scores of every item for arbitrary users given their history; items outside the target score -inf.

        `profiles` (a users frame with age, gender, occupation, rows aligned with history) feed the short-history
        parts, if the model holds any; without them their profile prior falls back to the target's popularity.
        """
        return self._full(self.candidate_scores(history, profiles))

    def candidate_scores(self, history: sp.spmatrix, profiles: Any = None) -> np.ndarray:
        """The scores of `score` over the candidates only (column j: item candidates[j])."""
        scores = zscore(self._item_item(history))
        if self.beta != 0.0:
            scores = scores + self.beta * zscore(self._encoded(history))
        if self.kernel is not None and self.kernel_weight != 0.0:
            scores = self._with_kernel(scores, history, self.kernel, self.kernel_weight)
        if self.short_history is not None:
            scores = self.short_history.adjust(scores, history, profiles, self.candidates)
        return scores

    # -- persistence -----------------------------------------------------------------------------------------
    def state(self, with_source: bool = True) -> dict[str, Any]:
        """Everything to rebuild the model; the source statistics are only needed to fine-tune, not to serve."""
        state: dict[str, Any] = {
            "n_items": self.n_items,
            "config": self.config.model_dump(mode="json"),
            "k": self.k,
            "encoder": {name: value.cpu() for name, value in self.encoder.state_dict().items()},
            "weights": weights_state(self.weights),
            "candidates": torch.from_numpy(self.candidates),
            "beta": self.beta,
            "item_params": list(self.item_params),
            "source": None,
            "source_grams": None,
            "source_weights": dict(self.source_weights),
            "short_history": self.short_history.state() if self.short_history is not None else None,
            "kernel": self.kernel.state() if self.kernel is not None else None,
            "kernel_weight": self.kernel_weight,
        }
        if with_source and self.source is not None:
            state["source"] = _sparse_state(self.source)
            state["source_rows"] = {
                name: rows_state(rows) for name, rows in self.source_items.items() if sp.issparse(rows)
            }
            state["source_grams"] = {
                name: torch.from_numpy(gram.astype(np.float32))
                for name, gram in self.source_items.items()
                if isinstance(gram, np.ndarray)
            }
        return state

    @classmethod
    def from_state(cls, state: dict[str, Any], device: str | torch.device = "cpu") -> TransferRecommender:
        config = dict(state["config"])
        k = int(config.pop("k", state.get("k", 10)))
        model = cls(state["n_items"], TrainingConfig.model_validate(config), k, device)
        model.encoder.load_state_dict(state["encoder"])
        model.weights = weights_from(state["weights"])
        model.candidates = state["candidates"].numpy()
        model.beta = float(state["beta"])
        if state.get("item_params") is not None:
            model.item_params = tuple(float(v) for v in state["item_params"])
        if state.get("kernel") is not None:
            model.kernel = UserKernel.from_state(state["kernel"])
            model.kernel_weight = float(state["kernel_weight"])
        model.source = _sparse_from(state.get("source"))
        grams = state.get("source_grams")
        if grams is None and state.get("source_gram") is not None:  # one unnamed source: models saved before 0.6
            grams = {"source": state["source_gram"]}
        model.source_items = {name: gram.numpy().astype(np.float64) for name, gram in (grams or {}).items()}
        model.source_items.update({name: rows_from(rows) for name, rows in (state.get("source_rows") or {}).items()})
        model.source_weights = {name: 1.0 for name in model.source_items} | dict(state.get("source_weights") or {})
        parts = state.get("short_history", state.get("side"))  # "side": the key of models saved before 0.5
        if parts is not None:
            model.short_history = ShortHistoryParts.from_state(parts)
        return model
