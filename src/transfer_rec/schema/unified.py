"""The unified tables every platform is mapped onto: the one place their columns and types are defined."""

from __future__ import annotations

import re
import unicodedata

INTERACTION_COLUMNS = ("platform", "user_id", "item_id", "rating", "label", "timestamp")
# Nothing else (no e-mail, phone or password) leaves landing: people are linked only through link_id, a salted hash.
USER_COLUMNS = ("platform", "user_id", "age", "gender", "occupation", "region", "link_id", "consent")
ITEM_COLUMNS = ("item_id", "title", "year", "genres")
# The link table: one row per account of a person who can be linked (a platform exports an identity column and the
# user consented), so a person's histories on other platforms can be found by link id or by any of their accounts.
LINK_COLUMNS = ("link_id", "platform", "user_id")
# Unified names a platform's users columns may map onto to link the same person across platforms; never kept as
# they are (unification hashes them into link_id; validation results keep no value of them)
IDENTITY_COLUMNS = ("email", "phone")
# The salt they are hashed with: a secret from the environment (or a file it names: a mounted secret, or the one
# `transfer-rec init` makes for the embedded demo), never stored with the data and needed by no model or server.
PII_SALT_ENV = "TRANSFER_REC_PII_SALT"
PII_SALT_FILE_ENV = "TRANSFER_REC_PII_SALT_FILE"
# Each platform's own id of each of its items (native_id), next to the unified key: serving answers in the former.
ITEM_ID_COLUMNS = ("platform", "native_id", "item_id")
TYPES = {"interactions": {"rating": "float64", "timestamp": "int64", "label": "int8"}}
# Unified ratings are on one scale: each platform's `rating_scale` is mapped onto it linearly, so the positive
# threshold (features.min_rating) and the rating weights mean the same on a 1-10 platform as on a 1-5 one.
RATING_SCALE = (1.0, 5.0)


def rating_mapping(scale: tuple[float, float]) -> tuple[float, float]:
    """(a, b) such that a platform's rating r is a + b * r on the unified RATING_SCALE."""
    (low, high), (to_low, to_high) = scale, RATING_SCALE
    if (low, high) == RATING_SCALE:
        return 0.0, 1.0
    factor = (to_high - to_low) / (high - low)
    return to_low - low * factor, factor


GENDERS = ("F", "M", "O")
# The profile a user may carry: what the short-history parts and a profile-only request read.
PROFILE_FIELDS = ("age", "gender", "occupation")

_NOT_IN_KEY = re.compile(r"[^\w()]+")


def item_key(native: str) -> str:
    """An item's unified key: its id with case, Unicode forms, spacing and punctuation folded, so that 'Toy Story
    (1995)' on one platform and 'toy story (1995)' on another are one item. Serving looks a requested id up as a key
    first and folds it only when that fails, so a request may name an item by either."""
    return _NOT_IN_KEY.sub(" ", unicodedata.normalize("NFKC", native.lower())).strip()


def user_key(platform: str, native: str) -> str:
    """A user's unified key: namespaced by platform, since the same native id on two platforms is two people."""
    return f"{platform}:{native}"
