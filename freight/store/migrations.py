"""Numbered schema migrations: freight/store/sql/migrations/<dialect>/NNNN_<what>.sql.

Each is applied once, in order, in its own transaction with the row that records it in
``freight_migrations`` (version, name, when). A migration is never edited once released; a
schema change is a new file, and the dialect's reference schema (sql/<dialect>/schema.sql) is
kept equal to what all of them build.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from importlib import resources

from freight.domain.errors import ConfigError

_FILE = re.compile(r"^(\d{4})_(\w+)\.sql$")

#: The table that records which migrations a database has.
MIGRATIONS_TABLE = "freight_migrations"


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


@functools.cache
def migrations(dialect: str) -> tuple[Migration, ...]:
    """Every migration of a dialect ("sqlite" or "postgres"), numbered 1..N without gaps."""
    folder = resources.files("freight.store").joinpath("sql", "migrations", dialect)
    found = []
    for entry in folder.iterdir():
        m = _FILE.match(entry.name)
        if m:
            found.append(Migration(int(m.group(1)), m.group(2), entry.read_text()))
    found.sort(key=lambda mig: mig.version)
    if [mig.version for mig in found] != list(range(1, len(found) + 1)):
        raise RuntimeError(f"the {dialect} migrations are not numbered 1..N: {[mig.version for mig in found]}")
    return tuple(found)


def latest(dialect: str) -> int:
    return migrations(dialect)[-1].version


def pending(dialect: str, applied: set[int], where: str = "the database") -> list[Migration]:
    """The migrations ``applied`` lacks, in order. A schema made by a newer freight (a version this one does
    not know) is refused: nothing here can tell whether this freight's code still fits it."""
    if applied and max(applied) > latest(dialect):
        raise ConfigError(f"{where} has freight's schema version {max(applied)}, made by a newer freight (this one "
                          f"knows versions up to {latest(dialect)}); upgrade freight.")
    return [mig for mig in migrations(dialect) if mig.version not in applied]


def reference_schema(dialect: str) -> str:
    return resources.files("freight.store").joinpath("sql", dialect, "schema.sql").read_text()
