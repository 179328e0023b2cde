"""The linked-world generator: disjoint catalogues, native ids that align nothing, e-mail the only link, newcomers
wholly in test, and the same world from the same seed."""

import pandas as pd
import pytest

from bench.linked_world import PLATFORMS, build_world


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("world")
    info = build_world(out, "family", seed=4, target_keep=0.2, source_drop=0.4, new_share=0.3)
    return out, info


def read(out, name):
    return pd.read_csv(out / name, sep="\t", dtype=str)


def test_catalogues_and_ids_are_the_platforms_own(world):
    out, _ = world
    titles = {p: set(read(out, f"{p}_items.tsv")["title"] + read(out, f"{p}_items.tsv")["year"]) for p in PLATFORMS}
    assert not titles["action"] & titles["family"] and not titles["family"] & titles["drama"]
    users = {p: read(out, f"{p}_users.tsv") for p in PLATFORMS}
    assert not set(users["action"]["user_id"]) & set(users["drama"]["user_id"])
    shared = set(users["action"]["email"]) & set(users["family"]["email"])
    assert shared, "people are shared between platforms"
    assert all(not u["user_id"].str.contains("1m_").any() for u in users.values())


def test_newcomers_are_wholly_test_and_warm_users_split(world):
    out, info = world
    train, valid, test = (read(out, f"target_{s}.tsv") for s in ("train", "valid", "test"))
    new = set(test["user_id"]) - set(train["user_id"])
    assert len(new) == info["platforms"]["family"]["new_users"] > 0
    assert not new & set(valid["user_id"])
    warm = train.groupby("user_id").size()
    assert (warm >= 3).all() and set(valid["user_id"]) == set(warm.index)
    assert not (out / "source_family.tsv").exists() and (out / "source_action.tsv").exists()


def test_the_same_seed_draws_the_same_world(world, tmp_path):
    out, _ = world
    build_world(tmp_path, "family", seed=4, target_keep=0.2, source_drop=0.4, new_share=0.3, cache=out / ".ml-1m")
    for name in ("target_test.tsv", "source_drama.tsv", "family_users.tsv"):
        assert (tmp_path / name).read_bytes() == (out / name).read_bytes()
