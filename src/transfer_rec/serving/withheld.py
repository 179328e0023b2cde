"""People a served model must no longer answer from: accounts it holds whose people have since withheld consent or
were deleted, while no candidate has replaced it.

A model cannot forget them without retraining (their rows shaped its weights), but its server can stop using what it
holds about them: their stored target history and profile, and their link to other platforms' histories. The
pipeline writes the list as an artifact and names it in a tag of the champion's model version (`WITHHELD_TAG`); a
server that follows the registry (serving/http.py) reads it before it answers and with every check, so a served
champion honours a withdrawal from the first run that sees it, not only from its replacement. The list holds
platform user ids and link ids (salted hashes), never a raw identity.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

# On a model version: the artifact URI of its withheld list ("runs:/<evaluation run>/serving/withheld.json"), and
# how many accounts it names (for a person reading the version's page).
WITHHELD_TAG = "serving.withheld"
WITHHELD_COUNT_TAG = "serving.withheld.accounts"


@dataclass(frozen=True)
class Withheld:
    accounts: frozenset[tuple[str, str]] = field(default_factory=frozenset)  # (platform, unified user id)
    links: frozenset[str] = field(default_factory=frozenset)

    def __bool__(self) -> bool:
        return bool(self.accounts or self.links)

    def account(self, platform: str, user_id: str | None) -> bool:
        return user_id is not None and (platform, user_id) in self.accounts

    def link(self, link_id: str | None) -> bool:
        return link_id is not None and link_id in self.links

    def write(self, path: Path) -> Path:
        path.write_text(
            json.dumps({"accounts": sorted(map(list, self.accounts)), "links": sorted(self.links)}, indent=1)
        )
        return path

    @classmethod
    def read(cls, path: Path) -> Withheld:
        """The list at `path`; a file that is not one is a ValueError naming it (the server keeps its last list)."""
        try:
            raw = json.loads(Path(path).read_text())
            accounts = frozenset((str(p), str(u)) for p, u in raw["accounts"])
            links = frozenset(str(link) for link in raw["links"])
        except (ValueError, KeyError, TypeError) as error:
            raise ValueError(f"{path}: not a withheld list ({type(error).__name__}: {error})") from error
        return cls(accounts, links)


NOBODY = Withheld()
