"""Unification of the two embedded MovieLens schemas: shared vocabularies, item keys, namespaced users."""

import pandas as pd
import pytest

from transfer_rec.benchmark import read_described
from transfer_rec.config import load_config
from transfer_rec.io.formats import read_table
from transfer_rec.io.storage import copy_to_local
from transfer_rec.schema.unified import item_key
from transfer_rec.stages.unify import canonical_item_key, unified_profiles, unify_platform


def test_canonical_item_key_folds_case_spacing_and_punctuation():
    keys = canonical_item_key(pd.Series(["Toy Story (1995)", "toy  story (1995)", "Toy Story: (1995)", "Heat (1995)"]))
    assert keys.tolist() == ["toy story (1995)"] * 3 + ["heat (1995)"]
    # a key folds to itself, so serving may be asked by key or by a platform's own id
    assert [item_key(k) for k in keys] == keys.tolist()
    assert item_key("Cit\u00e9  des Enfants Perdus, La (1995)") == "cité des enfants perdus la (1995)"


@pytest.fixture(scope="module")
def unified(tmp_path_factory):
    config = load_config()
    out = {}
    for platform in config.platforms:
        if platform.world is not None:
            continue  # cut at init, not copied from the package (tests/unit/test_embedded.py)
        folder = tmp_path_factory.mktemp(platform.name)
        for name in platform.files.values():
            if name.endswith(".inter") and platform.name == "ml-1m":
                continue  # the 1M-row interactions are not needed for profile checks
            copy_to_local(f"{platform.embedded}/{name}", folder / name)  # the package the demo exports come from
        if platform.name == "ml-1m":
            # a small interactions file in ml-1m's native schema
            (folder / "ml-1m.inter").write_text(
                "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
                "1m_1\tToy Story (1995)\t5\t978300760\n"
                "1m_1\tToy Story (1995)\t4\t978300761\n"
            )
        out[platform.name] = unify_platform(folder, platform, config)
    return config, out


def test_both_platforms_share_the_age_and_occupation_vocabularies(unified):
    config, out = unified
    for name in ("ml-1m", "ml-100k"):
        users = out[name]["users"]
        assert set(users["age"].dropna()) <= set(config.vocabularies["age"])
        assert set(users["occupation"].dropna()) <= set(config.vocabularies["occupation"])
        assert users["age"].notna().all() and users["occupation"].notna().all(), f"{name}: unmapped values"
        assert users["user_id"].str.startswith(f"{name}:").all()
    one_m = out["ml-1m"]["users"].set_index("user_id")
    assert one_m.loc["ml-1m:1m_1", "age"] == "under-18"  # ML-1M age code 1
    assert one_m.loc["ml-1m:1m_2", "occupation"] == "self-employed"  # ML-1M occupation code 16
    hundred_k = out["ml-100k"]["users"].set_index("user_id")
    assert hundred_k.loc["ml-100k:100k_1", "age"] == "18-24"  # 24 years
    assert hundred_k.loc["ml-100k:100k_1", "occupation"] == "engineer-technician"  # technician
    assert hundred_k["region"].str.len().max() == 2, "only a coarse region leaves landing"


def test_items_are_aligned_and_duplicates_dropped_and_counted(unified):
    _, out = unified
    shared = set(out["ml-1m"]["items"]["item_id"]) & set(out["ml-100k"]["items"]["item_id"])
    assert "toy story (1995)" in shared and len(shared) > 1000
    one_m = out["ml-1m"]
    assert len(one_m["interactions"]) == 1 and one_m["counts"]["dropped"]["duplicate_user_item"] == 1

    assert one_m["interactions"]["rating"].iloc[0] == 5, "the earliest of duplicate rows is kept"
    assert out["ml-100k"]["counts"]["dropped"]["duplicate_user_item"] == 307
    genres = out["ml-100k"]["items"].set_index("item_id").loc["toy story (1995)", "genres"]
    assert genres == "Animation|Children's|Comedy"


def test_each_platform_keeps_its_own_item_ids_beside_the_keys(unified):
    _, out = unified
    ids = out["ml-100k"]["item_ids"].set_index("item_id")
    assert (ids["platform"] == "ml-100k").all() and ids.index.is_unique
    assert ids.loc["toy story (1995)", "native_id"] == "Toy Story (1995)"
    assert set(ids.index) >= set(out["ml-100k"]["items"]["item_id"])


def test_first_per_pair_keeps_the_rows_a_stable_three_key_sort_keeps():
    import numpy as np

    from transfer_rec.stages.unify import _first_per_pair

    rng = np.random.default_rng(4)
    for n, users, items in [(2000, 40, 30), (500, 5, 3), (1, 1, 1), (0, 1, 1)]:
        u, i = rng.integers(0, users, n), rng.integers(0, items, n)
        t = rng.integers(0, 5, n).astype(float)  # many ties: the file order decides
        order = np.lexsort((t, i, u))
        pair = (u * items + i)[order]
        first = np.ones(n, dtype=bool)
        first[1:] = pair[1:] != pair[:-1]
        assert _first_per_pair(u, i, items, t).tolist() == order[first].tolist()
    # ids too many for an integer (user, item) key take the lexsort path, with the same result
    u, i, t = rng.integers(0, 3, 50), rng.integers(0, 3, 50), rng.integers(0, 3, 50)
    big = u * (2**61)
    assert _first_per_pair(big, i, 4, t).tolist() == _first_per_pair(u, i, 4, t).tolist()


def test_benchmark_file_mode_reads_native_and_unified_files_as_unification_does(unified, tmp_path):
    """The benchmark's file mode (another library's split, with the platforms' own users and items files) must give
    the profiles and item descriptions the pipeline's unification gives, and read its own exported files unchanged."""
    config, out = unified
    for platform in config.platforms:
        if platform.name not in out:
            continue
        for table in ("users", "items"):
            native = tmp_path / platform.files[table]
            copy_to_local(f"{platform.embedded}/{platform.files[table]}", native)
            described = read_described(native, platform, table, config)
            expected = out[platform.name][table].reset_index(drop=True)
            columns = ["age", "gender", "occupation"] if table == "users" else ["title", "year", "genres"]
            if table == "items":  # unification keys items by their canonical title (duplicates dropped)
                described = described[~canonical_item_key(described["item_id"]).duplicated()]
            got = described.reset_index(drop=True)[columns]
            pd.testing.assert_frame_equal(got, expected[columns], check_dtype=False)
            again = tmp_path / f"unified-{platform.name}-{table}.tsv"
            described.to_csv(again, sep="\t", index=False)
            reread = read_described(again, platform, table, config).reset_index(drop=True)[columns]
            pd.testing.assert_frame_equal(reread, got, check_dtype=False)


def test_a_profile_value_the_map_cannot_read_is_named_with_its_file_and_column(tmp_path, caplog):
    # as unification and the benchmark's file mode read users: both warn
    config = load_config()
    source = config.sources[0]
    native = tmp_path / "users.tsv"
    native.write_text("user_id\tage\tgender\toccupation\tzip_code\nu1\t25\tM\t12\t12345\nu2\t25\tF\t99\t54321\n")
    with caplog.at_level("WARNING", logger="transfer_rec.stages.unify"):
        users = read_described(native, source, "users", config)
    assert users["occupation"].tolist()[0] == "programmer" and pd.isna(users["occupation"].tolist()[1])
    assert users["age"].tolist() == ["25-34", "25-34"]
    assert f"platform {source.name}, {native}, column occupation: 1 value(s) outside the value map" in caplog.text
    assert "['99']" in caplog.text
    assert "column age" not in caplog.text


def test_a_parquet_profile_column_of_numbers_with_a_null_is_read_through_its_value_map(tmp_path):
    # Parquet keeps an integer column with a null as float64: "4.0" matched no value map, so every age and
    # occupation of the platform was read as unknown
    config = load_config()
    source = config.sources[0]
    native = tmp_path / "users.parquet"
    table = pd.DataFrame(
        {"user_id": ["u1", "u2", "u3"], "age": [18, 25, None], "gender": ["M", "F", "M"], "occupation": [4, None, 12]}
    )
    table.to_parquet(native)
    read = read_table(native, "parquet")
    assert read["age"].dtype == "float64"
    users = unified_profiles(read, source, config, file=native)
    assert users["occupation"].tolist()[::2] == ["student", "programmer"]
    assert users["age"].tolist()[:2] == ["18-24", "25-34"]
    assert users["occupation"].isna().sum() == 1 and users["age"].isna().sum() == 1


def _ratings_unified(folder, rows: str, **platform) -> pd.DataFrame:
    """`rows` (user, item, rating, timestamp; tab-separated lines) unified as a platform of ml-1m's kind would be."""
    config = load_config()
    columns = {"interactions": {"uid": "user_id", "iid": "item_id", "r": "rating", "ts": "timestamp"}}
    update = {"files": {"interactions": "ratings.tsv"}, "format": "tsv", "columns": columns, **platform}
    (folder / "ratings.tsv").write_text("uid\tiid\tr\tts\n" + rows)
    return unify_platform(folder, config.sources[0].model_copy(update=update), config)["interactions"]


def test_two_ratings_of_a_pair_within_one_second_keep_the_first_in_file_order(tmp_path):
    # timestamps are whole seconds once unified, and Spark orders on those: ordering on the fractions first kept
    # the other row (rating 1 here, rating 5 on Spark)
    inter = _ratings_unified(tmp_path, "u1\ta\t5\t978300760.9\nu1\ta\t1\t978300760.1\n")
    assert inter["rating"].tolist() == [5.0] and inter["timestamp"].tolist() == [978300760]


def test_ratings_of_another_scale_are_unified_onto_one_to_five(tmp_path):
    # on a 1-10 platform a 3 is a dislike: min_rating (3) and the rating weights are on the unified 1-5 scale
    inter = _ratings_unified(tmp_path, "u1\ta\t3\t978300760\nu1\tb\t10\t978300761\n", rating_scale=(1.0, 10.0))
    assert inter["rating"].tolist() == pytest.approx([1 + 4 * 2 / 9, 5.0])
    assert inter["label"].tolist() == [0, 1]


def test_a_platform_without_ratings_has_every_interaction_a_positive(tmp_path):
    """Implicit feedback (views, enrolments): no rating column mapped, so each interaction counts as liked, not as
    a rating of 1 below features.min_rating (which left such a platform with no positives at all)."""
    config = load_config()
    platform = config.sources[0].model_copy(
        update={
            "files": {"interactions": "views.tsv"},
            "format": "tsv",
            "columns": {"interactions": {"uid": "user_id", "iid": "item_id", "ts": "timestamp"}},
        }
    )
    (tmp_path / "views.tsv").write_text("uid\tiid\tts\nu1\ta\t978300760\nu1\tb\t978300761\nu2\ta\t978300762\n")
    inter = unify_platform(tmp_path, platform, config)["interactions"]
    assert len(inter) == 3 and inter["label"].tolist() == [1, 1, 1]
    assert (inter["rating"] == platform.rating_scale[1]).all()


def test_user_ids_that_are_identities_in_files_landed_before_the_rule_are_refused_at_unification(tmp_path):
    """Partitions landed and validated before rule opaque_user_id (or before it knew phone numbers) are read again
    with every run's: unification checks the user ids of all of them, quoting none."""
    from transfer_rec.schema.rules import BatchRefused

    with pytest.raises(
        BatchRefused, match=r"rule opaque_user_id: 1 user id\(s\) are e-mail addresses or phone"
    ) as caught:
        _ratings_unified(tmp_path, "u1\ta\t5\t978300760\n+44 7700 900123\tb\t4\t978300761\n")
    assert "7700" not in str(caught.value), "the refusal quotes no id"
    # a platform whose ids only look like identities says so
    inter = _ratings_unified(
        tmp_path, "u1\ta\t5\t978300760\n+44 7700 900123\tb\t4\t978300761\n", e_mail_user_ids="allow"
    )
    assert len(inter) == 2
    # with a users file, its ids are checked (every interaction's user must be one of them)
    config = load_config()
    platform = config.sources[0].model_copy(
        update={
            "files": {"interactions": "ratings.tsv", "users": "users.tsv"},
            "format": "tsv",
            "columns": {
                "interactions": {"uid": "user_id", "iid": "item_id", "r": "rating", "ts": "timestamp"},
                "users": {"uid": "user_id"},
            },
            "value_maps": {},
        }
    )
    (tmp_path / "ratings.tsv").write_text("uid\tiid\tr\tts\nann@example.org\ta\t5\t978300760\n")
    (tmp_path / "users.tsv").write_text("uid\nann@example.org\n")
    with pytest.raises(BatchRefused, match="users.tsv.*rule opaque_user_id: 1 user id") as caught:
        unify_platform(tmp_path, platform, config)
    assert "ann@" not in str(caught.value)


def test_the_id_rules_judge_only_ids_some_row_has():
    # a Parquet file written from a categorical keeps categories no row uses any more (an address deleted from the
    # rows stays in the column's categories); validation drops them, and so must the id rules of unification
    from transfer_rec.stages.unify import _distinct

    frame = pd.DataFrame({"user_id": pd.Categorical(["u1", "u1"], categories=["u1", "ann@example.org"])})
    assert _distinct(frame, ("user_id",))["user_id"].tolist() == ["u1"]
