"""Identity linking by salted hash, and consent flags, in unification."""

import pandas as pd
import pytest

from transfer_rec.stages.unify import PII_SALT_ENV, PrivacyError, consent_flags, link_ids


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


def test_identity_columns_without_a_salt_are_refused(monkeypatch):
    monkeypatch.delenv(PII_SALT_ENV, raising=False)
    with pytest.raises(
        PrivacyError,
        match=r"platform shop: users column\(s\) \['email'\] identify people; "
        r"set the secret TRANSFER_REC_PII_SALT",
    ):
        link_ids("shop", pd.DataFrame({"email": ["x@y.z"]}))
    assert link_ids("shop", pd.DataFrame({"age": [3]})).isna().all(), "no identity column: nothing to hash"


def test_consent_is_opt_in_when_the_platform_exports_it():
    flags = consent_flags(pd.DataFrame({"consent": ["yes", "no", None, "1", "FALSE", "opt-in"]}))
    assert flags.tolist() == [True, False, False, True, False, True]
    assert consent_flags(pd.DataFrame({"age": [1, 2]})).all()
