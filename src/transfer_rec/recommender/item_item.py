"""Closed-form item-item weights (EASE with a dropout-equivalent regulariser), exact or by neighbourhoods.

The weights minimise ||X - X B||^2 + ||Lambda^1/2 B||^2 with diag(B) = 0 and Lambda = lam + p/(1-p) diag(G), where
G = X'X is a weighted sum of co-occurrence terms (the target's rows, each source's rows times alpha^2). Column j of B
is then a ridge regression of item j on the other items:

    B[-j, j] = (G[-j, -j] + Lambda[-j])^-1 G[-j, j]

`item_item_solve` solves all columns at once from the inverse of G + Lambda: exact, but its memory is items^2 and its
time items^3 (50,000 items: 20 GB per float64 copy). `neighbourhood_solve` regresses item j on its `neighbours`
items of largest co-occurrence only, reading G a block of columns at a time and keeping the co-occurrences among
each item's neighbours from a Gram pruned to the neighbour lists: memory items x neighbours, time
interactions-driven for the Gram plus items x neighbours^3 for the solves. With neighbours >= items - 1 it is the
exact solve (tests/unit/test_item_item.py); how close it is below that is measured in docs/results.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.linalg
import scipy.sparse as sp
import torch

# One term of G: (weight, rows) for rows' co-occurrences rows'rows, or (weight, gram) for a dense Gram already made.
GramTerm = tuple[float, "sp.csr_matrix | np.ndarray"]


def gram_diagonal(terms: Sequence[GramTerm], n_items: int) -> np.ndarray:
    diagonal = np.zeros(n_items, dtype=np.float64)
    for weight, term in terms:
        if isinstance(term, np.ndarray):
            diagonal += weight * np.diag(term)
        else:
            diagonal += weight * np.asarray(term.multiply(term).sum(axis=0), dtype=np.float64).ravel()
    return diagonal


def dense_gram(
    terms: Sequence[GramTerm],
    n_items: int,
    items: np.ndarray | None = None,
    block: int = 2048,
    dtype: type[np.floating] = np.float64,
) -> np.ndarray:
    """G as a dense array of `dtype`, over every item or over `items` only (sorted item indices: G[items][:, items]).
    A sparse term is multiplied `block` columns at a time (in float64): its co-occurrences as one sparse product
    would be up to items^2 entries of 12 bytes, more than the dense result itself."""
    if items is None:
        items = np.arange(n_items)
    gram = np.zeros((len(items), len(items)), dtype=dtype)
    for weight, term in terms:
        if isinstance(term, np.ndarray):
            gram += weight * term[np.ix_(items, items)]
        else:
            columns = sp.csc_matrix(term, dtype=np.float64)[:, items]
            by_item = columns.T.tocsr()
            for start in range(0, len(items), block):
                gram[:, start : start + block] += weight * (by_item @ columns[:, start : start + block]).toarray()
    return gram


def item_item_solve(gram: np.ndarray, lam: float, drop_p: float = 0.0, overwrite: bool = False) -> np.ndarray:
    """Closed-form zero-diagonal item-item weights (EASE when drop_p = 0), exact. With `overwrite` a C-contiguous
    float64 `gram` whose items all occur is turned into the weights in place and returned: at 18,000 items each
    items^2 float64 copy is 2.6 GB, and a general inverse makes four of them."""
    # An item nobody has (zero diagonal: its whole row and column are zero) is decoupled from the others and gets
    # zero weights, so only the items that occur are solved: the item index spans every family of platforms, and
    # the solve is cubic in its size.
    active = np.flatnonzero(np.diag(gram) > 0)
    if 0 < len(active) < gram.shape[0]:
        weights = np.zeros(gram.shape, dtype=np.float64)
        weights[np.ix_(active, active)] = item_item_solve(gram[np.ix_(active, active)], lam, drop_p, overwrite=True)
        return weights
    fits = overwrite and gram.dtype == np.float64 and gram.flags.c_contiguous
    weights = gram if fits else np.array(gram, dtype=np.float64, order="C")
    diagonal = np.diag(weights).copy()
    weights[np.diag_indices_from(weights)] += lam + drop_p / (1.0 - drop_p) * diagonal
    _invert_in_place(weights)
    weights /= -np.diag(weights)  # column j divided by the precision's P[j, j]
    np.fill_diagonal(weights, 0.0)
    return weights


def _invert_in_place(matrix: np.ndarray, block: int = 2048) -> None:
    """Replace a symmetric positive definite C-contiguous float64 matrix by its inverse, in place. Cholesky (LAPACK
    potrf/potri) is about twice as fast as a general inverse; LAPACK is handed the transposed view (Fortran order,
    the same symmetric matrix) so that it overwrites it instead of copying it."""
    if not len(matrix):
        return
    fortran = matrix.T
    factor, info = scipy.linalg.lapack.dpotrf(fortran, lower=0, clean=0, overwrite_a=1)
    if info == 0:
        inverse, info = scipy.linalg.lapack.dpotri(factor, lower=0, overwrite_c=1)
    if info != 0:
        raise np.linalg.LinAlgError(
            f"item-item solve: the regularised Gram is not positive definite (LAPACK info {info}); "
            "a positive L2 strength (lam) makes it so"
        )
    if not np.shares_memory(inverse, matrix):  # LAPACK copied after all: the result is elsewhere
        matrix[...] = inverse.T
    # potri wrote the Fortran upper triangle, the lower one of `matrix`: mirror it a block of rows at a time
    for start in range(0, len(matrix), block):
        stop = min(start + block, len(matrix))
        square = matrix[start:stop, start:stop]
        square[...] = np.tril(square) + np.tril(square, -1).T
        matrix[start:stop, stop:] = matrix[stop:, start:stop].T


def neighbourhood_solve(
    terms: Sequence[GramTerm],
    n_items: int,
    lam: float,
    drop_p: float,
    neighbours: int,
    columns: np.ndarray | None = None,
    kept: int | None = None,
    block: int = 1024,
    union: int = 4096,
) -> sp.csc_matrix:
    """Item-item weights with each item regressed on its `neighbours` most co-occurring items (see the module's
    docstring and Neighbourhoods): a sparse float32 items x len(columns) matrix, column j holding item columns[j]'s
    weights (all of them by default). Items nobody has get zero weights, as in the exact solve."""
    found = Neighbourhoods.find(terms, n_items, neighbours, kept, block)
    return found.solve(lam, drop_p, columns, union)


@dataclass
class Neighbourhoods:
    """Each item's neighbours in one Gram, and the Gram among them: what the neighbourhood solves of every (lam,
    drop_p) setting share (finding them is most of a solve's time; fine-tuning solves several settings per Gram)."""

    n_items: int
    diagonal: np.ndarray  # of the whole Gram
    active: np.ndarray  # the items with a non-zero diagonal
    neighbour: np.ndarray  # active x n: each active item's neighbours as positions among the active items
    cooccurrence: np.ndarray  # active x n: G between each active item and its neighbours
    # active x active: row a holds G[a, b] for the b in a's kept list only. G is symmetric, so the pruned Gram among
    # any items (an entry kept for either of its two items) is a block of it read with its transpose (_symmetric);
    # stored one-sided it is half the entries, and needs neither the COO copy nor the maximum with its transpose
    # that symmetrising it whole made: at 43,000 items with 1,600 kept they were most of a fit's peak.
    pruned: sp.csr_matrix

    @classmethod
    def find(
        cls, terms: Sequence[GramTerm], n_items: int, neighbours: int, kept: int | None = None, block: int = 1024
    ) -> Neighbourhoods:
        """`kept` (default 4 x neighbours) co-occurrences per item are kept for the pruned Gram the systems are read
        from: with only `neighbours` kept, the co-occurrences among an item's neighbours are mostly missing and the
        systems give nonsense (MovieLens-1M NDCG@10 0.02 against 0.39); with 4x, the same as the exact co-occurrences
        to 1e-4. `block` columns of G are made at a time."""
        diagonal = gram_diagonal(terms, n_items)
        active = np.flatnonzero(diagonal > 0)
        n = max(min(neighbours, len(active) - 1), 0)
        if n == 0:
            empty = np.zeros((len(active), 0))
            return cls(n_items, diagonal, active, empty.astype(np.int32), empty, sp.csr_matrix((len(active),) * 2))
        m = min(max(kept or 4 * n, n), len(active) - 1)
        neighbour, cooccurrence = _largest_cooccurrences(terms, active, m, block)
        # each row's kept list as it is (largest first: csr does not need sorted indices), the arrays not copied
        offsets = np.arange(0, len(active) * m + 1, m, dtype=np.int32 if len(active) * m < 2**31 else np.int64)
        pruned = sp.csr_matrix((cooccurrence.ravel(), neighbour.ravel(), offsets), shape=(len(active),) * 2)
        return cls(n_items, diagonal, active, neighbour[:, :n].copy(), cooccurrence[:, :n].copy(), pruned)

    def solve(self, lam: float, drop_p: float, columns: np.ndarray | None = None, union: int = 4096) -> sp.csc_matrix:
        """The weights for one (lam, drop_p): one ridge system per item over its neighbours, in batches of items
        whose neighbours together are at most `union` items (the pruned Gram among them is made dense once)."""
        active, neighbour, n = self.active, self.neighbour, self.neighbour.shape[1]
        wanted = np.arange(self.n_items) if columns is None else np.asarray(columns)
        if n == 0:
            return sp.csc_matrix((self.n_items, len(wanted)), dtype=np.float32)
        ridge = self.diagonal[active] * (1.0 + drop_p / (1.0 - drop_p)) + lam  # the diagonal of G + Lambda
        solve = np.flatnonzero(np.isin(active, wanted))
        coefficients = np.empty((len(solve), n), dtype=np.float64)
        for batch in _batches(neighbour[solve], max(union, 2 * n)):
            # each item's neighbours in index order (the systems then read `dense` row by row, ~2x faster)
            order = np.argsort(neighbour[solve[batch]], axis=1)
            near = np.take_along_axis(neighbour[solve[batch]], order, axis=1)
            members = np.unique(near)
            dense = self.pruned[members][:, members].toarray()  # one-sided
            local = np.searchsorted(members, near)  # positions in `dense`
            # made symmetric per system, not as the whole block: each system's transpose is a 400 x 400 block that
            # stays in cache, where the block's (up to 4,096 x 4,096) is read across rows; the median batch's
            # systems also hold fewer entries (41% of its block's on 100,000 x 20,000 power-law rows)
            systems = _symmetric(dense.ravel().take(local[:, :, None] * len(members) + local[:, None, :]))
            systems[:, np.arange(n), np.arange(n)] = ridge[near]
            rhs = np.take_along_axis(self.cooccurrence[solve[batch]], order, axis=1)
            solved = np.empty_like(rhs)
            np.put_along_axis(solved, order, _solve_systems(systems, rhs), axis=1)
            coefficients[batch] = solved
        column_of = np.full(self.n_items, -1, dtype=np.int64)
        column_of[wanted] = np.arange(len(wanted))
        weights = sp.csc_matrix(
            (
                coefficients.ravel().astype(np.float32),
                (active[neighbour[solve]].ravel(), np.repeat(column_of[active[solve]], n)),
            ),
            shape=(self.n_items, len(wanted)),
        )
        weights.sum_duplicates()
        return weights


def _largest_cooccurrences(
    terms: Sequence[GramTerm], active: np.ndarray, m: int, block: int
) -> tuple[np.ndarray, np.ndarray]:
    """Each active item's m largest co-occurrences with the other active items, largest first: their positions among
    the active items and their values. G is made `block` columns at a time (items x users once, times a block of
    columns), so memory is items x block, never items^2."""
    prepared = [
        (
            w,
            t
            if isinstance(t, np.ndarray)
            else (sp.csr_matrix(t.T, dtype=np.float64), sp.csc_matrix(t, dtype=np.float64)),
        )
        for w, t in terms
    ]
    neighbour = np.empty((len(active), m), dtype=np.int32)  # csr's own index type: the pruned Gram uses it as is
    cooccurrence = np.empty((len(active), m), dtype=np.float64)
    for start in range(0, len(active), block):
        cols = active[start : start + block]
        g = np.zeros((len(active), len(cols)), dtype=np.float64)
        for weight, term in prepared:
            if isinstance(term, np.ndarray):
                g += weight * term[np.ix_(active, cols)]
            else:
                by_item, by_column = term
                g += weight * (by_item @ by_column[:, cols]).toarray()[active]
        g[start + np.arange(len(cols)), np.arange(len(cols))] = -np.inf  # an item is not its own neighbour
        np.negative(g, out=g)  # the largest first, without a second items x block array
        top = np.argpartition(g, m - 1, axis=0)[:m].copy()
        values = -np.take_along_axis(g, top, axis=0)
        order = np.argsort(-values, axis=0, kind="stable")
        neighbour[start : start + len(cols)] = np.take_along_axis(top, order, axis=0).T
        cooccurrence[start : start + len(cols)] = np.take_along_axis(values, order, axis=0).T
    return neighbour, cooccurrence


def _symmetric(blocks: np.ndarray) -> np.ndarray:
    """The pruned Gram among some items from the one-sided rows among them, for a stack of such blocks: an entry is
    the one kept by either item (both keep the same value of the symmetric G; neither: 0)."""
    return np.where(blocks != 0, blocks, blocks.swapaxes(-1, -2))


def _solve_systems(systems: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """Solve a stack of symmetric ridge systems, each by Cholesky (LAPACK posv: half an LU's work; the LU was over a
    quarter of the neighbourhood solve's time). The pruned Gram is not always positive semi-definite (an entry
    missing from both items' kept lists reads as 0), so a system can be indefinite or singular where the exact one
    never is: an indefinite one is solved by LU, a singular one in the least-squares sense (minimum norm), instead of
    failing the fine-tune."""
    solved = np.empty_like(rhs, dtype=np.float64)
    for k, (a, b) in enumerate(zip(systems, rhs, strict=True)):
        # `a` is symmetric, so its transpose is the same matrix already in LAPACK's column order (no copy)
        _, x, info = scipy.linalg.lapack.dposv(a.T, b)
        if info == 0:
            solved[k] = x
            continue
        try:
            solved[k] = np.linalg.solve(a, b)
        except np.linalg.LinAlgError:
            solved[k] = np.linalg.lstsq(a, b, rcond=None)[0]
    return solved


def _batches(near: np.ndarray, union: int, most: int = 32) -> list[np.ndarray]:
    """Consecutive rows of `near` (each item's neighbours) in batches of at most `most` items whose neighbours
    together are at most `union` items."""
    batches, first, size = [], 0, 0
    seen = np.zeros(int(near.max()) + 1, dtype=bool)
    for row, items in enumerate(near):
        fresh = int(np.count_nonzero(~seen[items]))
        if row > first and (size + fresh > union or row - first >= most):
            batches.append(np.arange(first, row))
            seen[:] = False
            first, size, fresh = row, 0, len(items)
        seen[items] = True
        size += fresh
    if len(near) > first:
        batches.append(np.arange(first, len(near)))
    return batches


# Item x item matrices held dense (small catalogues) or sparse (pruned, large ones): the item-item weights and the
# short-history parts' lift are saved and multiplied into histories by the same functions.


def rows_state(matrix: sp.csr_matrix) -> dict[str, Any]:
    """A weighted sparse matrix as tensors (torch.load's weights_only reads them back)."""
    matrix = sp.csr_matrix(matrix)
    return {
        "indptr": torch.from_numpy(matrix.indptr.astype(np.int64)),
        "indices": torch.from_numpy(matrix.indices.astype(np.int64)),
        "data": torch.from_numpy(matrix.data.astype(np.float32)),
        "shape": list(matrix.shape),
    }


def rows_from(state: dict[str, Any]) -> sp.csr_matrix:
    return sp.csr_matrix(
        (state["data"].numpy(), state["indices"].numpy(), state["indptr"].numpy()), shape=tuple(state["shape"])
    )


def weights_state(weights: np.ndarray | sp.csr_matrix) -> torch.Tensor | dict[str, Any]:
    return rows_state(weights) if sp.issparse(weights) else torch.from_numpy(np.asarray(weights))


def weights_from(state: torch.Tensor | dict[str, Any]) -> np.ndarray | sp.csr_matrix:
    return rows_from(state) if isinstance(state, dict) else state.numpy().astype(np.float32)


# Users scored at a time by sparse item-item weights: the product of two sparse matrices is sparse, and a whole
# platform's users x candidates of it would take three times the dense scores' memory.
SPARSE_SCORE_ROWS = 4096


def times(history: sp.spmatrix, weights: np.ndarray | sp.csr_matrix) -> np.ndarray:
    """history @ weights as a dense float32 array."""
    history = sp.csr_matrix(history, dtype=np.float32)
    if not sp.issparse(weights):
        return np.asarray(history @ weights)
    out = np.empty((history.shape[0], weights.shape[1]), dtype=np.float32)
    for start in range(0, history.shape[0], SPARSE_SCORE_ROWS):
        out[start : start + SPARSE_SCORE_ROWS] = (history[start : start + SPARSE_SCORE_ROWS] @ weights).toarray()
    return out
