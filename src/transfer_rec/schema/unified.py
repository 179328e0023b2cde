"""The unified tables every platform is mapped onto: the one place their columns and types are defined."""

from __future__ import annotations

INTERACTION_COLUMNS = ("platform", "user_id", "item_id", "rating", "label", "timestamp")
# Nothing else (no e-mail, phone or password) leaves landing: people are linked only through link_id, a salted hash.
USER_COLUMNS = ("platform", "user_id", "age", "gender", "occupation", "region", "link_id", "consent")
ITEM_COLUMNS = ("item_id", "title", "year", "genres")
# The link table: one row per account of a person who can be linked (a platform exports an identity column and the
# user consented), so a person's histories on other platforms can be found by link id or by any of their accounts.
LINK_COLUMNS = ("link_id", "platform", "user_id")
TYPES = {"interactions": {"rating": "float64", "timestamp": "int64", "label": "int8"}}
GENDERS = ("F", "M", "O")
# The profile a user may carry: what the short-history parts and a profile-only request read.
PROFILE_FIELDS = ("age", "gender", "occupation")
