"""Identity linking by salted hash, and consent flags, in unification."""

import os

import pandas as pd
import pytest

from transfer_rec.schema.unified import PII_SALT_ENV, PII_SALT_FILE_ENV
from transfer_rec.stages.unify import PrivacyError, consent_flags, link_ids


def test_the_same_person_links_across_platforms_and_only_through_the_salt(monkeypatch):
    monkeypatch.setenv(PII_SALT_ENV, "a-test-salt-of-sufficient-length")
    one = link_ids("a", pd.DataFrame({"email": [" Ann@Example.com", "bob@example.com", None]}))
    two = link_ids("b", pd.DataFrame({"email": ["ann@example.com"], "phone": ["+1 555 0100"]}))
    assert one[0] == two[0] and one[0] != one[1] and pd.isna(one[2])
    assert len(one[0]) == 64 and "ann" not in one[0]
    monkeypatch.setenv(PII_SALT_ENV, "another-salt-of-sufficient-length")
    assert link_ids("a", pd.DataFrame({"email": ["ann@example.com"]}))[0] != one[0]
    # phone fills in where email is missing, normalised
    phones = link_ids("c", pd.DataFrame({"email": [None, None], "phone": ["+1 (555) 0100", "+15550100"]}))
    assert phones[0] == phones[1] and not pd.isna(phones[0])
    # ... and links to a platform that exports phones only, as the phone it is (not as an e-mail)
    assert link_ids("d", pd.DataFrame({"phone": ["+1 555-0100"]}))[0] == phones[0]
    assert pd.isna(link_ids("e", pd.DataFrame({"email": ["15550100"]}))[0]), "an e-mail is never a phone"


def test_one_number_written_three_ways_and_read_from_parquet_links_one_person(monkeypatch, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from transfer_rec.io.formats import read_table

    monkeypatch.setenv(PII_SALT_ENV, "a-test-salt-of-sufficient-length")
    written = link_ids("a", pd.DataFrame({"phone": ["+1 (555) 123-4567", "001 555 123 4567", "1-555-123-4567"]}))
    assert written[0] == written[1] and not pd.isna(written[0]), "00 is the international prefix + is"
    # without a prefix the same digits may be another country's national number: never taken for the same person
    assert written[2] != written[0] and not pd.isna(written[2])
    # a Parquet integer column with a null comes back as float64: the number must not gain a ".0" digit
    # (an export's file, written by pyarrow with no pandas metadata)
    numbers = {"phone": pa.array([15551234567, None], pa.int64()), "consent": pa.array([1, None], pa.int64())}
    pq.write_table(pa.table(numbers), tmp_path / "users.parquet")
    read = read_table(tmp_path / "users.parquet", "parquet")
    assert read["phone"].dtype == "float64", "the case this guards"
    assert link_ids("b", read)[0] == written[2]
    assert consent_flags(read).tolist() == [True, False], "a 1 read as 1.0 is still consent"


def test_placeholders_and_crowded_identities_link_nobody(monkeypatch, caplog):
    """An export's 'NULL' or '000-000-0000' is nobody's identity: hashed, it would make everyone who has it one
    person. Nor is an address more than a few accounts of one platform share."""
    monkeypatch.setenv(PII_SALT_ENV, "a-test-salt-of-sufficient-length")
    placeholders = ["NULL", "null", "N/A", "none", "-", "a@b", "no email", "x@@y.org"]
    users = pd.DataFrame({"email": placeholders, "phone": ["000-000-0000", "1111111", "12345"] + [None] * 5})
    assert link_ids("a", users).isna().all()
    assert "8 users' email value(s) cannot name a person" in caplog.text
    assert "x@@y.org" not in caplog.text and "no email" not in caplog.text, "counts, never values"
    # a placeholder e-mail beside a real phone: the phone links
    both = link_ids("b", pd.DataFrame({"email": ["NULL"], "phone": ["+1 555 0100"]}))
    assert both[0] == link_ids("c", pd.DataFrame({"phone": ["+15550100"]}))[0]
    shared = link_ids("d", pd.DataFrame({"email": ["noreply@shop.example"] * 6 + ["family@home.example"] * 2}))
    assert shared[:6].isna().all(), "six accounts under one address are no person"
    assert shared[6] == shared[7] and not pd.isna(shared[6]), "a family's shared address still links"


def test_identity_columns_without_a_salt_are_refused(monkeypatch):
    monkeypatch.delenv(PII_SALT_ENV, raising=False)
    monkeypatch.delenv("TRANSFER_REC_PII_SALT_FILE", raising=False)  # nor a salt file
    with pytest.raises(
        PrivacyError,
        match=r"platform shop: users column\(s\) \['email'\] identify people; "
        r"set the secret TRANSFER_REC_PII_SALT",
    ):
        link_ids("shop", pd.DataFrame({"email": ["x@y.z"]}))
    monkeypatch.setenv(PII_SALT_ENV, " " * 20)  # blanks are no secret
    with pytest.raises(PrivacyError, match="set the secret TRANSFER_REC_PII_SALT"):
        link_ids("shop", pd.DataFrame({"email": ["x@y.z"]}))
    assert link_ids("shop", pd.DataFrame({"age": [3]})).isna().all(), "no identity column: nothing to hash"


def test_a_model_server_is_not_given_the_linking_secret(monkeypatch, tmp_path):
    from transfer_rec.serving import http

    monkeypatch.setenv(PII_SALT_ENV, "a-test-salt-of-sufficient-length")
    monkeypatch.setenv(PII_SALT_FILE_ENV, str(tmp_path / "salt"))
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "MLmodel").write_text("flavors: {}\n")
    _, env = http.serve_command(str(tmp_path / "model"), "127.0.0.1", 5001, 1, 1000)
    assert PII_SALT_ENV not in env and PII_SALT_FILE_ENV not in env
    assert env["PATH"] == os.environ["PATH"], "the rest of the environment is passed on"


def test_consent_is_opt_in_when_the_platform_exports_it():
    flags = consent_flags(pd.DataFrame({"consent": ["yes", "no", None, "1", "FALSE", "opt-in"]}))
    assert flags.tolist() == [True, False, False, True, False, True]
    assert consent_flags(pd.DataFrame({"age": [1, 2]})).all()


def test_the_link_table_holds_linkable_accounts_only_and_counts_targets_linked_to_a_source():
    from transfer_rec.config import load_config
    from transfer_rec.stages.unify import link_counts, link_table

    users = pd.DataFrame(
        {
            "platform": ["ml-1m", "ml-1m", "ml-100k", "ml-100k", "ml-100k"],
            "user_id": ["ml-1m:1", "ml-1m:2", "ml-100k:1", "ml-100k:2", "ml-100k:3"],
            "link_id": ["b" * 64, "a" * 64, "a" * 64, None, "c" * 64],
            "consent": [True, True, True, True, True],
            "age": ["18-24"] * 5,
        }
    )
    links = link_table(users)
    assert list(links.columns) == ["link_id", "platform", "user_id"], "no profile column in the link table"
    assert links["user_id"].tolist() == ["ml-100k:1", "ml-1m:2", "ml-1m:1", "ml-100k:3"]
    # ml-1m is ml-100k's source in the embedded config: one ml-100k user shares a link id with it; action's
    # sources (family, drama) have no account here
    assert link_counts(links, load_config()) == {"ml-100k": 1, "action": 0}


def test_an_opted_out_person_is_never_linked(monkeypatch, tmp_path, caplog):
    from transfer_rec.config import load_config
    from transfer_rec.stages.unify import unify_platform

    monkeypatch.setenv(PII_SALT_ENV, "a-test-salt-of-sufficient-length")
    config = load_config()
    raw = config.platform("ml-100k").model_dump()
    raw.update(format="csv", delimiter=",", files={"interactions": "i.csv", "users": "u.csv"})
    raw["columns"] = {
        "interactions": {"uid": "user_id", "iid": "item_id", "r": "rating", "t": "timestamp"},
        "users": {"uid": "user_id", "mail": "email", "ok": "consent"},
    }
    raw["value_maps"] = {}
    platform = type(config.platform("ml-100k")).model_validate(raw)
    (tmp_path / "i.csv").write_text("uid,iid,r,t\n1,x,5,1\n2,x,5,2\n")
    (tmp_path / "u.csv").write_text("uid,mail,ok\n1,ann@example.com,yes\n2,bob@example.com,no\n")
    part = unify_platform(tmp_path, platform, config, [tmp_path / "i.csv"])
    users = part["users"].set_index("user_id")
    assert len(users.loc["ml-100k:1", "link_id"]) == 64
    assert pd.isna(users.loc["ml-100k:2", "link_id"]) and not users.loc["ml-100k:2", "consent"]
    assert "no column mapped to consent" not in caplog.text
    # the consent mapping gone (the export stopped carrying it, the config was edited to match): said, not silent
    raw["columns"]["users"] = {"uid": "user_id", "mail": "email"}
    part = unify_platform(tmp_path, type(platform).model_validate(raw), config, [tmp_path / "i.csv"])
    assert part["users"]["link_id"].notna().all()
    assert "platform ml-100k: identity columns but no column mapped to consent: every user counts" in caplog.text


def test_the_salt_can_come_from_a_file_made_once_and_readable_by_its_owner_only(monkeypatch, tmp_path):
    import stat

    from transfer_rec.stages.unify import PII_SALT_FILE_ENV, ensure_salt_file, pii_salt

    path = tmp_path / "secrets" / "pii-salt"
    assert ensure_salt_file(path) and not ensure_salt_file(path), "written once, then kept"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    salt = path.read_text().strip()
    assert len(salt) == 64
    monkeypatch.delenv(PII_SALT_ENV, raising=False)
    monkeypatch.setenv(PII_SALT_FILE_ENV, str(path))
    users = pd.DataFrame({"user_id": ["a"], "email": ["Someone@Example.org "]})
    from_file = link_ids("books", users)
    monkeypatch.setenv(PII_SALT_ENV, salt)
    assert from_file.tolist() == link_ids("films", users).tolist(), "the same salt, from the file or the variable"
    monkeypatch.setenv(PII_SALT_ENV, "x" * 32)
    assert pii_salt() == "x" * 32, "the variable wins over the file"
    assert link_ids("books", users).tolist() != from_file.tolist()


def test_a_champion_forgets_the_links_and_accounts_of_people_who_withheld_consent_since(tmp_path):
    """The champion was trained before: it still holds a person's source account and target history; the current
    unified users mark them withheld. Publish must not rank by that person's link (their other-platform history),
    and the gate and rollback count the accounts."""
    import numpy as np

    from transfer_rec.serving.bundle import ModelBundle
    from transfer_rec.stages.evaluate import withdrawn_accounts, withdrawn_links
    from transfer_rec.stages.publish import _unless

    accounts = pd.DataFrame(
        {
            "platform": ["shop", "shop", "books", "books"],
            "user_id": ["shop:a", "shop:b", "books:a", "books:c"],
            "link_id": ["L-a", "L-b", "L-a", "L-c"],
        }
    )
    histories = pd.DataFrame({"user_id": ["shop:a", "shop:b"], "item_id": ["i1", "i2"]})
    champion = ModelBundle(
        None, np.array(["i1", "i2"]), np.ones(2, bool), histories, {"target": "shop"}, None, None, accounts
    )
    unified = tmp_path / "unified"
    unified.mkdir()
    pd.DataFrame(
        {
            "platform": ["shop", "shop", "books", "books"],
            "user_id": ["shop:a", "shop:b", "books:a", "books:c"],
            "consent": [True, True, False, True],
        }
    ).to_parquet(unified / "users.parquet")
    # a consents on shop but withheld on books: their link (and so their books history) is out; b and c stay
    assert withdrawn_links(champion, unified) == {"L-a"}
    assert withdrawn_accounts(champion, unified) == 1
    assert [_unless(link, {"L-a"}) for link in ("L-a", "L-b", None, float("nan"))] == [None, "L-b", None, None]
    assert withdrawn_links(champion, None) == set() and withdrawn_accounts(champion, tmp_path / "none") == 0

    # c's books account deleted since (no users row any more), and a target user gone with their history: both
    # count as withdrawn; an account on a platform that exports no users file ("music") cannot tell, and stays
    champion = ModelBundle(
        None,
        np.array(["i1", "i2"]),
        np.ones(2, bool),
        pd.concat([histories, pd.DataFrame({"user_id": ["shop:e"], "item_id": ["i1"]})]),
        {"target": "shop"},
        None,
        None,
        pd.concat([accounts, pd.DataFrame({"platform": ["music"], "user_id": ["music:a"], "link_id": ["L-a"]})]),
    )
    pd.read_parquet(unified / "users.parquet").query("user_id != 'books:c'").to_parquet(unified / "users.parquet")
    assert withdrawn_links(champion, unified) == {"L-a", "L-c"}
    assert withdrawn_accounts(champion, unified) == 3  # books:a (consent), books:c and shop:e (deleted)
    # a platform whose users file lists only some accounts (users_export: partial): missing is not deleted there
    (unified / "manifest.json").write_text('{"partial_users": ["books"]}')
    assert withdrawn_links(champion, unified) == {"L-a"}
    assert withdrawn_accounts(champion, unified) == 2  # books:a (consent) and shop:e


def test_an_e_mail_address_or_a_phone_number_as_a_user_id_is_found_and_opaque_ids_are_not():
    from transfer_rec.schema.rules import identity_ids

    addresses = pd.Series([" a@b.org", "x@y.org@old", "name@host.co\r", "Person.Seven@Example.org"])
    phones = pd.Series(["+447700900123", "+44 7700 900123", "+1 (555) 123-4567", " +33 1 23 45 67 89 "])
    opaque = pd.Series(["u123", "42", "a@b", "@home.org", "user.name", "7f3c9e", "learner-17@v2.1", "t:abc@1.0"])
    # numbers without a "+" are the commonest opaque ids; a "+" with a few digits, or inside an id, is no phone
    numbers = pd.Series(["447700900123", "0044770090", "+12345", "u+4477009001", "+44 7700 900123 x"])
    assert identity_ids(addresses) == len(addresses)
    assert identity_ids(phones) == len(phones)
    assert identity_ids(opaque) == 0 and identity_ids(numbers) == 0
