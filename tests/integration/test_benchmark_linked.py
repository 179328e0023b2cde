"""The benchmark's platform-registry mode on planted linked people written as files, as another team would hand
over a world: native ids per platform, an e-mail column as the only link."""

import json

import numpy as np
import pandas as pd
import pytest
import yaml
from tests.model.planted_linked import planted_people

from transfer_rec import cli
from transfer_rec.stages.unify import PrivacyError

SALT = "a-test-salt-of-enough-length"


def _write_world(folder, opted_out=()):
    world = planted_people(seed=5, people=500)
    email = [f"person{p}@people.example" for p in range(len(world.group))]
    entries = []

    def write_platform(name, matrix, role):
        people = np.flatnonzero(np.diff(matrix.indptr) > 0) if role == "source" else None
        if people is None:
            people = np.flatnonzero(np.diff((world.train + world.valid + world.test).indptr) > 0)
        users = pd.DataFrame(
            {
                "uid": [f"{name[0]}{p}" for p in people],
                "mail": [email[p] for p in people],
                "ok": ["no" if p in opted_out else "yes" for p in people],
            }
        )
        users.to_csv(folder / f"{name}_users.tsv", sep="\t", index=False)
        pd.DataFrame({"iid": [f"{name[0]}i{i}" for i in range(matrix.shape[1])]}).to_csv(
            folder / f"{name}_items.tsv", sep="\t", index=False
        )
        files = {"users": f"{name}_users.tsv", "items": f"{name}_items.tsv"}
        if role == "source":
            rows, cols = matrix.nonzero()
            pd.DataFrame({"user": [f"{name[0]}{r}" for r in rows], "item": [f"{name[0]}i{c}" for c in cols]}).to_csv(
                folder / f"{name}.tsv", sep="\t", index=False
            )
            files["interactions"] = f"{name}.tsv"
        entries.append(
            {
                "name": name,
                "role": role,
                "location": ".",
                "format": "tsv",
                "files": files,
                "columns": {
                    "users": {"uid": "user_id", "mail": "email", "ok": "consent"},
                    "items": {"iid": "item_id"},
                    **({"interactions": {"user": "user_id", "item": "item_id"}} if role == "source" else {}),
                },
            }
        )

    for name, matrix in world.sources.items():
        write_platform(name, matrix, "source")
    write_platform("courses", world.train, "target")
    for split in ("train", "valid", "test"):
        rows, cols = getattr(world, split).nonzero()
        pd.DataFrame({"user_id": [f"c{r}" for r in rows], "item_id": [f"ci{c}" for c in cols]}).to_csv(
            folder / f"target_{split}.tsv", sep="\t", index=False
        )
    (folder / "platforms.yaml").write_text(yaml.safe_dump({"platforms": entries}))
    return world


def _benchmark(folder, out, monkeypatch, salt=SALT):
    """`transfer-rec benchmark --platforms ...`, in this process (the CLI's own entry point)."""
    monkeypatch.setenv("TRANSFER_REC_PII_SALT", salt)
    args = ["benchmark", "--platforms", str(folder / "platforms.yaml")]
    for split in ("train", "valid", "test"):
        args += [f"--target-{split}", str(folder / f"target_{split}.tsv")]
    cli.main([*args, "--out", str(out)])


def test_every_test_user_gets_a_top10_and_newcomers_are_reported_apart(tmp_path, pipeline_env, monkeypatch):
    pipeline_env()
    world = _write_world(tmp_path)
    _benchmark(tmp_path, tmp_path / "out", monkeypatch)
    recs = pd.read_csv(tmp_path / "out" / "recommendations.tsv", sep="\t", dtype=str)
    test = pd.read_csv(tmp_path / "target_test.tsv", sep="\t", dtype=str)
    assert set(recs["user_id"]) == set(test["user_id"])
    assert recs.groupby("user_id").size().eq(10).all()
    seen = pd.concat([pd.read_csv(tmp_path / f"target_{s}.tsv", sep="\t", dtype=str) for s in ("train", "valid")])
    assert not set(zip(recs["user_id"], recs["item_id"])) & set(zip(seen["user_id"], seen["item_id"]))

    report = json.loads((tmp_path / "out" / "metrics.json").read_text())
    linked = report["metrics"]["linked"]
    assert linked["new"]["users"] == len(world.new)
    assert linked["warm"]["users"] + linked["new"]["users"] == test["user_id"].nunique()
    assert sum(linked[f"new_on_{n}_sources"]["users"] for n in range(3)) == len(world.new)
    # linked newcomers are found through their sources; people on no source get no such help
    assert linked["new_on_2_sources"]["ndcg"] > report["metrics"]["popularity"]["new_on_2_sources"]["ndcg"] + 0.1
    low, high = linked["new"]["ndcg_ci95"]
    assert low <= linked["new"]["ndcg"] <= high
    # raw identities reach no output
    for path in (tmp_path / "out").rglob("*"):
        if path.is_file():
            assert "@people.example" not in path.read_text(errors="ignore"), path


def test_opted_out_people_are_not_linked(tmp_path, pipeline_env, monkeypatch):
    pipeline_env()
    world = _write_world(tmp_path, opted_out=set(range(500)))
    _benchmark(tmp_path, tmp_path / "out", monkeypatch)
    linked = json.loads((tmp_path / "out" / "metrics.json").read_text())["metrics"]["linked"]
    assert linked["new_on_0_sources"]["users"] == len(world.new)
    # ... and their source interactions train nothing
    from transfer_rec.benchmark_linked import read_interactions, read_registry

    books = next(p for p in read_registry(tmp_path / "platforms.yaml") if p.name == "books")
    users = pd.read_csv(tmp_path / "books_users.tsv", sep="\t", dtype=str)
    withheld = set(users.loc[users["ok"] == "no", "uid"])
    assert withheld and not set(read_interactions(books, tmp_path)["user_id"]) & withheld
    # one missing from the users file gave no consent either
    _write_world(tmp_path)  # everyone consents
    users = pd.read_csv(tmp_path / "books_users.tsv", sep="\t", dtype=str)
    absent = users["uid"].iloc[-1]
    assert absent in set(read_interactions(books, tmp_path)["user_id"])
    users.iloc[:-1].to_csv(tmp_path / "books_users.tsv", sep="\t", index=False)
    assert absent not in set(read_interactions(books, tmp_path)["user_id"])


def test_identities_without_a_salt_are_refused(tmp_path, pipeline_env, monkeypatch):
    pipeline_env()
    monkeypatch.delenv("TRANSFER_REC_PII_SALT_FILE", raising=False)  # nor a salt file
    _write_world(tmp_path)
    with pytest.raises(PrivacyError, match="platform books.*TRANSFER_REC_PII_SALT"):
        _benchmark(tmp_path, tmp_path / "out", monkeypatch, salt="")
    assert not (tmp_path / "out" / "recommendations.tsv").exists()


@pytest.mark.parametrize("drop", ["interactions", "users"])
def test_a_source_without_its_files_is_named(tmp_path, pipeline_env, monkeypatch, drop):
    pipeline_env()
    _write_world(tmp_path)
    registry = yaml.safe_load((tmp_path / "platforms.yaml").read_text())
    del registry["platforms"][0]["files"][drop]
    (tmp_path / "platforms.yaml").write_text(yaml.safe_dump(registry))
    with pytest.raises(SystemExit, match=f"platform books.*{drop}"):
        _benchmark(tmp_path, tmp_path / "out", monkeypatch)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda ps: ps.append(dict(ps[0])), r"platform names must be unique, \['books'\] given more than once"),
        (lambda ps: ps.__setitem__(slice(None), [p for p in ps if p["role"] == "target"]), r"at least one .*source"),
        (lambda ps: ps[0].update(format="xlsx"), r"platform books: format: "),
        (
            lambda ps: ps[-1].update(sources=["books", "nosuch"]),
            r"platform courses: `sources` is the target's, and names one or more source platforms",
        ),
        (
            lambda ps: ps[0].update(value_maps={"age": "no_such_map"}),
            r"platform books: value map 'no_such_map' for 'age' is not one of config/pipeline.yaml's value_maps",
        ),
        (
            lambda ps: (
                ps[-1]["files"].update(interactions="x.tsv"),
                ps[-1]["columns"].update(interactions={"u": "user_id", "i": "item_id"}),
            ),
            r"platform courses: a target names no interactions file",
        ),
    ],
)
def test_a_registry_that_cannot_be_read_as_given_is_refused_naming_why(
    tmp_path, pipeline_env, monkeypatch, change, message
):
    pipeline_env()
    _write_world(tmp_path)
    registry = yaml.safe_load((tmp_path / "platforms.yaml").read_text())
    change(registry["platforms"])
    (tmp_path / "platforms.yaml").write_text(yaml.safe_dump(registry))
    with pytest.raises(SystemExit, match=message):
        _benchmark(tmp_path, tmp_path / "out", monkeypatch)
    assert not (tmp_path / "out" / "recommendations.tsv").exists()


def test_two_target_accounts_with_one_identity_stay_two_test_users(tmp_path, pipeline_env, monkeypatch):
    """A shared family address: both accounts are the same person on the sources, and each keeps its own target
    history and its own top-10."""
    pipeline_env()
    _write_world(tmp_path)
    users = pd.read_csv(tmp_path / "courses_users.tsv", sep="\t", dtype=str)
    test = pd.read_csv(tmp_path / "target_test.tsv", sep="\t", dtype=str)
    first, second = [u for u in users["uid"] if u in set(test["user_id"])][:2]
    users.loc[users["uid"] == second, "mail"] = users.loc[users["uid"] == first, "mail"].iloc[0]
    users.to_csv(tmp_path / "courses_users.tsv", sep="\t", index=False)
    _benchmark(tmp_path, tmp_path / "out", monkeypatch)
    recs = pd.read_csv(tmp_path / "out" / "recommendations.tsv", sep="\t", dtype=str)
    assert set(recs["user_id"]) == set(test["user_id"]) and {first, second} <= set(recs["user_id"])
    seen = pd.concat([pd.read_csv(tmp_path / f"target_{s}.tsv", sep="\t", dtype=str) for s in ("train", "valid")])
    assert not set(zip(recs["user_id"], recs["item_id"])) & set(zip(seen["user_id"], seen["item_id"]))


def test_a_file_that_is_not_there_is_named_before_anything_is_fitted(tmp_path, pipeline_env, monkeypatch, capsys):
    pipeline_env()
    _write_world(tmp_path)
    (tmp_path / "target_valid.tsv").unlink()
    with pytest.raises(SystemExit):
        _benchmark(tmp_path, tmp_path / "out", monkeypatch)
    assert f"no such file: --target-valid {tmp_path / 'target_valid.tsv'}" in capsys.readouterr().err
    _write_world(tmp_path)
    (tmp_path / "books_items.tsv").unlink()
    with pytest.raises(SystemExit, match=r"platform books: .*books_items.tsv \(files.items, under location '.'\)"):
        _benchmark(tmp_path, tmp_path / "out", monkeypatch)
    assert not (tmp_path / "out").exists()


def test_empty_ids_and_items_outside_the_target_catalogue_are_refused_naming_file_and_column(
    tmp_path, pipeline_env, monkeypatch
):
    """An empty user id would pool strangers into one person; an item only a split file names would become a
    candidate shaped by test data. Both are refused before anything is fitted, naming the file, column and rule."""
    pipeline_env()
    _write_world(tmp_path)
    test = pd.read_csv(tmp_path / "target_test.tsv", sep="\t", dtype=str)
    pd.concat([test, pd.DataFrame({"user_id": ["c1"], "item_id": ["only-in-test"]})]).to_csv(
        tmp_path / "target_test.tsv", sep="\t", index=False
    )
    with pytest.raises(SystemExit, match=r"target_test.tsv: column item_id: 1 item id\(s\) not in target courses"):
        _benchmark(tmp_path, tmp_path / "out", monkeypatch)
    _write_world(tmp_path)
    pd.concat([test, pd.DataFrame({"user_id": ["nobody"], "item_id": [test["item_id"].iloc[0]]})]).to_csv(
        tmp_path / "target_test.tsv", sep="\t", index=False
    )
    with pytest.raises(SystemExit, match=r"target_test.tsv: column user_id: 1 user id\(s\) not in target courses's "):
        _benchmark(tmp_path, tmp_path / "out", monkeypatch)
    _write_world(tmp_path)
    books = pd.read_csv(tmp_path / "books.tsv", sep="\t", dtype=str)
    books.loc[3, "user"] = ""
    books.to_csv(tmp_path / "books.tsv", sep="\t", index=False)
    with pytest.raises(SystemExit, match=r"platform books: books.tsv: column user_id: 1 row\(s\) with an empty id"):
        _benchmark(tmp_path, tmp_path / "out", monkeypatch)
    assert not (tmp_path / "out").exists()


def test_a_targets_sources_are_the_only_ones_it_learns_from(tmp_path, pipeline_env, monkeypatch):
    from transfer_rec.benchmark_linked import World

    pipeline_env()
    monkeypatch.setenv("TRANSFER_REC_PII_SALT", SALT)
    _write_world(tmp_path)
    registry = yaml.safe_load((tmp_path / "platforms.yaml").read_text())
    splits = {s: str(tmp_path / f"target_{s}.tsv") for s in ("train", "valid", "test")}
    everyone = sorted(World(tmp_path / "platforms.yaml", splits).sources)
    assert len(everyone) == 2, everyone
    registry["platforms"][-1]["sources"] = everyone[:1]
    (tmp_path / "platforms.yaml").write_text(yaml.safe_dump(registry))
    assert sorted(World(tmp_path / "platforms.yaml", splits).sources) == everyone[:1]
