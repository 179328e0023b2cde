"""The linked recommender on planted people: newcomers are found through their sources, and a source that carries
nothing (wrong links, meaningless items) is guarded against."""

import numpy as np
import pytest
import scipy.sparse as sp
from tests.model.planted_linked import planted_people, scrambled_items, shuffled_links

from transfer_rec.metrics.ranking import per_user_metrics, top_k
from transfer_rec.recommender.linked import LinkedPart, LinkedRecommender, LinkedSettings
from transfer_rec.selection.linked import choose


def ndcg(world, scores, users):
    seen = world.train + world.valid
    ranked = top_k(scores[users], 10, seen[users])
    return float(per_user_metrics(ranked, world.test[users], 10)["ndcg"].mean())


def fitted(world, sources):
    choice = choose(sources, world.train, world.valid, seed=3)
    model = LinkedRecommender(choice.settings).fit(sources, world.train)
    return choice, model.score(sources, world.train)


@pytest.fixture(scope="module")
def world():
    return planted_people(seed=5)


def test_newcomers_are_found_through_their_sources(world):
    _, scores = fitted(world, world.sources)
    on_source = world.new[sum(np.diff(m.indptr)[world.new] > 0 for m in world.sources.values()) > 0]
    popularity = np.tile(np.asarray(world.train.sum(axis=0)).ravel(), (world.train.shape[0], 1))
    linked, popular = ndcg(world, scores, on_source), ndcg(world, popularity, on_source)
    assert linked > popular + 0.2, (linked, popular)


def test_two_sources_do_better_than_one_for_newcomers(world):
    _, both = fitted(world, world.sources)
    _, one = fitted(world, {"books": world.sources["books"]})
    on = {name: np.diff(matrix.indptr)[world.new] > 0 for name, matrix in world.sources.items()}
    on_both = world.new[on["books"] & on["films"]]
    assert ndcg(world, both, on_both) > ndcg(world, one, on_both)


@pytest.mark.parametrize("spoil", [shuffled_links, scrambled_items], ids=["shuffled-links", "scrambled-items"])
def test_a_source_that_carries_nothing_costs_at_most_one_percent(world, spoil):
    good = {"books": world.sources["books"]}
    choice, with_bad = fitted(world, {**good, "noise": spoil(world.sources["films"], seed=9)})
    _, without = fitted(world, good)
    users = np.flatnonzero(np.diff(world.test.indptr) > 0)
    assert ndcg(world, with_bad, users) >= 0.99 * ndcg(world, without, users)
    assert choice.settings.new_sources["noise"] == 0.0
    assert choice.settings.new_sources["books"] == 1.0


def test_the_newcomers_part_learns_from_the_known_history_and_the_warm_part_from_train_only(world):
    settings = choose(world.sources, world.train, world.valid, seed=3).settings
    known = world.train + world.valid
    on_train = LinkedRecommender(settings).fit(world.sources, world.train)
    both = LinkedRecommender(settings).fit(world.sources, world.train, known=known)
    on_known = LinkedRecommender(settings).fit(world.sources, known)
    # the warm part is judged on valid items: it never learns them
    np.testing.assert_array_equal(both.warm, on_train.warm)
    np.testing.assert_array_equal(both.new, on_known.new)
    assert not np.allclose(both.new, on_train.new)
    with pytest.raises(ValueError, match="same people"):
        LinkedRecommender(settings).fit(world.sources, world.train, known=known[:-1])


def test_someone_on_no_platform_gets_the_target_popularity(world):
    model = LinkedRecommender(LinkedSettings(new_sources={"books": 1.0, "films": 1.0})).fit(world.sources, world.train)
    empty = {name: matrix[[0]] * 0 for name, matrix in world.sources.items()}
    scores = model.score_new(empty, 1)[0]
    popularity = np.asarray(world.train[np.diff(world.train.indptr) > 0].sum(axis=0)).ravel()
    assert np.argmax(scores) == np.argmax(popularity)
    assert np.corrcoef(scores, popularity)[0, 1] > 0.95


def test_the_part_in_a_model_answers_linked_newcomers_and_survives_save_and_load(world, tmp_path):
    # the unified item index of a pipeline: books 0-59, films 60-119, the target 120-167
    columns = {"books": np.arange(60), "films": np.arange(60, 120)}
    target_columns = np.arange(120, 168)
    people = np.array([f"{p:064x}" for p in range(world.train.shape[0])], dtype=object)
    choice = choose(world.sources, world.train, world.valid, seed=3)
    model = LinkedRecommender(choice.settings).fit(world.sources, world.train)
    part = LinkedPart(model, "shop", target_columns, columns, people, world.sources)
    wide = sp.hstack([sp.csr_matrix((world.train.shape[0], 120)), world.train], format="csr")
    on_source = sum(np.diff(m.indptr) > 0 for m in world.sources.values()) > 0
    newcomer = int(world.new[on_source[world.new]][0])
    stranger = int(np.flatnonzero(~on_source)[0])
    links = [people[newcomer], people[stranger], None]
    rows, scores, used = part.answer(wide[[newcomer, stranger, stranger]] * 0, links)
    # the newcomer known on a source is answered, from the target's columns only; nobody else
    assert rows.tolist() == [0]
    assert np.isinf(scores[0, :120]).all() and np.isfinite(scores[0, 120:]).all()
    assert np.allclose(scores[0, 120:], model.score_new({k: m[[newcomer]] for k, m in world.sources.items()}, 1)[0])
    assert used[0] == [k for k in ("books", "films") if world.sources[k][newcomer].nnz]
    part.save(tmp_path / "linked")
    again = LinkedPart.load(tmp_path / "linked")
    rows2, scores2, used2 = again.answer(wide[[newcomer, stranger, stranger]] * 0, links)
    assert rows2.tolist() == rows.tolist() and used2 == used and np.allclose(scores2, scores)


def _group_content(n_items: int, noise: float, seed: int) -> np.ndarray:
    """Content vectors that say which taste group an item belongs to (items in blocks of n_items / 4), plus noise."""
    rng = np.random.default_rng(seed)
    vectors = np.zeros((n_items, 4)) + noise * rng.standard_normal((n_items, 4))
    vectors[np.arange(n_items), np.arange(n_items) // (n_items // 4)] += 1.0
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def test_content_carries_newcomers_whose_source_items_nobody_in_the_fit_has(world):
    # newcomers read a second half of each source's catalogue that the people who use both platforms never touched:
    # only what those items are about (their content) links them to the target
    wide = {}
    for name, matrix in world.sources.items():
        coo = matrix.tocoo()
        fresh = np.isin(coo.row, world.new)
        cols = np.where(fresh, coo.col + 60, coo.col)
        wide[name] = sp.csr_matrix((coo.data, (coo.row, cols)), shape=(matrix.shape[0], 120))
    # items 0-59 and 60-119 come in the same four group blocks
    vectors = {name: np.vstack([_group_content(60, 0.1, 1)] * 2) for name in wide}
    on_source = world.new[sum(np.diff(m.indptr)[world.new] > 0 for m in wide.values()) > 0]
    settings = LinkedSettings(new_l2=50.0, new_sources={"books": 1.0, "films": 1.0})
    items_only = LinkedRecommender(settings).fit(wide, world.train).score(wide, world.train)
    with_content = LinkedSettings(new_l2=50.0, new_sources={"books": 1.0, "films": 1.0}, content_weight=8.0)
    content = LinkedRecommender(with_content, vectors).fit(wide, world.train).score(wide, world.train)
    assert ndcg(world, content, on_source) > ndcg(world, items_only, on_source) + 0.2


def test_content_that_says_nothing_is_left_out_and_costs_at_most_one_percent(world):
    noise = {name: _group_content(60, 50.0, 7) for name in world.sources}  # the group buried under noise
    choice = choose(world.sources, world.train, world.valid, seed=3, vectors=noise)
    scores = LinkedRecommender(choice.settings, noise).fit(world.sources, world.train).score(world.sources, world.train)
    _, plain = fitted(world, world.sources)
    assert choice.settings.content_weight == 0.0, "noise content is left out"
    assert ndcg(world, scores, world.new) >= 0.99 * ndcg(world, plain, world.new)


def test_the_content_weight_and_vectors_survive_save_and_load(world, tmp_path):
    columns = {"books": np.arange(60), "films": np.arange(60, 120)}
    vectors = {name: _group_content(60, 0.1, 2) for name in world.sources}
    settings = LinkedSettings(new_l2=50.0, new_sources={"books": 1.0, "films": 1.0}, content_weight=8.0)
    model = LinkedRecommender(settings, vectors).fit(world.sources, world.train)
    people = np.array([f"{p:064x}" for p in range(world.train.shape[0])], dtype=object)
    part = LinkedPart(model, "shop", np.arange(120, 168), columns, people, world.sources)
    part.save(tmp_path / "linked")
    again = LinkedPart.load(tmp_path / "linked")
    assert again.model.settings.content_weight == 8.0 and again.describe()["newcomers_content_weight"] == 8.0
    newcomers = [people[p] for p in world.new[:20]]
    blank = sp.csr_matrix((20, 168))
    np.testing.assert_allclose(again.answer(blank, newcomers)[1], part.answer(blank, newcomers)[1])


def test_the_newcomers_regression_by_blocks_is_plain_ridge_least_squares():
    from transfer_rec.recommender.linked import ridge_map, ridge_scores

    rng = np.random.default_rng(3)
    items = sp.random(120, 30, density=0.2, random_state=4, format="csr")
    content = rng.random((120, 5))
    target = sp.random(120, 12, density=0.3, random_state=5, format="csr")
    for features, x in (
        ((items, content), np.hstack([np.ones((120, 1)), content, items.toarray()])),
        (items, np.hstack([np.ones((120, 1)), items.toarray()])),
        ((None, content), np.hstack([np.ones((120, 1)), content])),
    ):
        expected = np.linalg.solve(x.T @ x + 7.0 * np.eye(x.shape[1]), x.T @ (target.toarray() > 0))
        weights = ridge_map(features, target, 7.0)
        np.testing.assert_allclose(weights, expected, atol=1e-5)
        np.testing.assert_allclose(ridge_scores(weights, features, 120), x @ expected, atol=1e-4)


def test_the_part_knows_a_newcomer_only_through_a_source_its_newcomers_part_weighs(world):
    """A person with no target history and a history on a warm-only source is not answered by the part (answer
    leaves the row to the base model), so serving must not take them as known through it."""
    settings = LinkedSettings(new_sources={"books": 1.0, "films": 0.0}, warm_sources={"films": 1.0})
    model = LinkedRecommender(settings).fit(world.sources, world.train)
    people = np.array([f"{p:064x}" for p in range(world.train.shape[0])], dtype=object)
    part = LinkedPart(
        model,
        "shop",
        np.arange(120, 168),
        {"books": np.arange(60), "films": np.arange(60, 120)},
        people,
        world.sources,
        warm=True,
    )
    on = {name: np.diff(m.indptr) > 0 for name, m in world.sources.items()}
    films_only, on_books = np.flatnonzero(on["films"] & ~on["books"]), np.flatnonzero(on["books"])
    assert len(films_only) and len(on_books)
    blank = sp.csr_matrix((1, 168))
    for person, answered in ((films_only[0], False), (on_books[0], True)):
        rows, _, _ = part.answer(blank, [people[person]])
        assert part.knows(people[person]) is answered and (len(rows) == 1) is answered
