"""Small helpers the tests share (importable as tests.support: pytest puts the repository on the path)."""

from __future__ import annotations

from typing import Any

from transfer_rec.config import TrainingConfig
from transfer_rec.recommender.transfer import TransferRecommender

# The smallest model that still has every part: one encoder, the best item-item setting, no kernel part unless a
# test asks for one.
SMALL = {"encoders": 1, "item_combine": "best", "kernel_weights": [0.0]}


def training(**overrides: Any) -> TrainingConfig:
    """Training settings for a small, fast model (validated as the config file is)."""
    return TrainingConfig.model_validate({**SMALL, **overrides})


def small_model(n_items: int, k: int = 10, **overrides: Any) -> TransferRecommender:
    return TransferRecommender(n_items, training(**overrides), k)


def refuse_e_mail_user_ids(env: dict, engine: Any = None) -> str:
    """On the synthetic world `env`: the village exports e-mail addresses as some users' ids (in its users and
    interactions files, one user listed twice, which a uniqueness warning would quote). Validation on `engine`
    (pandas when None) refuses the batch by rule opaque_user_id; neither the refusal, the quarantine record nor the
    Data Docs pages hold an address. Returns the refusal."""
    import pandas as pd
    import pytest

    from transfer_rec.config import load_config
    from transfer_rec.io.state import StateLayout
    from transfer_rec.stages.pull import pull_platform
    from transfer_rec.stages.validate import DataValidationError, validate_batch

    folder = env["exports"] / "village"
    users = pd.read_csv(folder / "users.txt", dtype=str)
    interactions = pd.read_csv(folder / "interactions.txt", dtype=str)
    named = {uid: f"Learner.{i}@Example.org" for i, uid in enumerate(users["uid"].iloc[:4])}
    named[users["uid"].iloc[4]] = "+44 7700 900123"  # a phone number is an identity too
    users["uid"] = users["uid"].replace(named)
    pd.concat([users, users.iloc[:1]]).to_csv(folder / "users.txt", index=False)
    interactions["learner"] = interactions["learner"].replace(named)
    interactions.to_csv(folder / "interactions.txt", index=False)

    platform, state = load_config().platform("village"), StateLayout.from_env()
    with pytest.raises(DataValidationError) as caught:
        validate_batch(pull_platform(platform, state, "mail-ids"), platform, state, engine=engine)
    message = str(caught.value)
    assert "users.txt, column 'uid': rule opaque_user_id: 5 user id(s) are e-mail addresses or phone numbers" in message
    assert "interactions.txt, column 'learner': rule opaque_user_id" in message, message
    addresses = {a.lower() for a in named.values()} | {"447700900123", "7700 900123"}
    pages = [*(state.quarantine / "village" / "mail-ids").rglob("validation.json"), *state.data_docs.rglob("*")]
    texts = [message] + [p.read_text(errors="replace") for p in pages if p.is_file() and p.suffix in (".json", ".html")]
    assert not [a for a in addresses for text in texts if a in text.lower()]
    return message


def refuse_an_e_mail_rule(env: dict, monkeypatch: Any, engine: Any = None, raising: bool = False) -> None:
    """On the synthetic world `env`: the village maps a `mail` column to `email`, an operator's rule on it (an
    address at Example.org) fails for a third of the users, and validation on `engine` (pandas when None) refuses
    the batch. Asserts that the refusal, the quarantine record and the Data Docs pages count the failures and hold
    no address. `raising`: the rule is one that cannot be evaluated on text (a mean), whose error message is
    withheld (today's pandas quotes no value in it; another version's error might)."""
    import great_expectations.expectations as gxe
    import pandas as pd
    import pytest
    import yaml

    from bench.synthetic import write_config
    from transfer_rec.config import load_config
    from transfer_rec.io.state import StateLayout
    from transfer_rec.stages.pull import pull_platform
    from transfer_rec.stages.validate import DataValidationError, ensure_suites, gx_context, suite_name, validate_batch

    monkeypatch.setenv("TRANSFER_REC_PII_SALT", "a-test-salt-of-sufficient-length")
    folder = env["exports"] / "village"
    users = pd.read_csv(folder / "users.txt", dtype=str)
    users["mail"] = [f"Person{i}@Example.org" if i % 3 else f"person{i}@elsewhere.example" for i in range(len(users))]
    users.to_csv(folder / "users.txt", index=False)
    raw = yaml.safe_load(env["config"].read_text())
    raw["platforms"][1]["columns"]["users"]["mail"] = "email"
    write_config(env["config"], raw)
    platform = load_config().platform("village")
    context = gx_context()
    ensure_suites(context, platform)
    suite = context.suites.get(suite_name("village", "users"))
    if raising:
        suite.add_expectation(gxe.ExpectColumnMeanToBeBetween(column="mail", min_value=0, max_value=1))
    else:
        suite.add_expectation(gxe.ExpectColumnValuesToMatchRegex(column="mail", regex=r"@Example\.org$"))
    suite.save()

    state = StateLayout.from_env()
    with pytest.raises(DataValidationError) as caught:
        validate_batch(pull_platform(platform, state, "bad-mail"), platform, state, engine=engine)
    message = str(caught.value)
    if raising:
        assert "mean_to_be_between" in message and "could not be evaluated: <withheld" in message, message
    else:
        assert "ExpectColumnValuesToMatchRegex" in message or "match_regex" in message, message
    addresses = set(users["mail"]) | {a.lower() for a in users["mail"]}
    assert not [a for a in addresses if a in message], message
    pages = [*(state.quarantine / "village" / "bad-mail").rglob("validation.json"), *state.data_docs.rglob("*")]
    for path in pages:
        if path.is_file() and path.suffix in (".json", ".html"):
            text = path.read_text(errors="replace")
            assert not [a for a in addresses if a in text], path
    if raising:
        return
    bad = sum(1 for i in range(len(users)) if i % 3 == 0)
    assert f"failed: {bad} unexpected value(s)" in message and "e.g." not in message.split("mail")[-1], message
