"""Store fixtures: every store test runs on SQLite and on the PostgreSQL server at 127.0.0.1:5432.

``store_url`` is parametrised over both; each PostgreSQL test gets a schema of its own, dropped
afterwards. Where CI=true a missing PostgreSQL fails the run; elsewhere those tests skip.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

PG_DSN = os.environ.get("GATEWAY_TEST_POSTGRES", "host=127.0.0.1 port=5432 dbname=test user=postgres")


def _pg_url(schema: str) -> str:
    parts = dict(p.split("=", 1) for p in PG_DSN.split())
    return (
        f"postgresql+psycopg://{parts.get('user', 'postgres')}@{parts.get('host', '127.0.0.1')}:"
        f"{parts.get('port', '5432')}/{parts.get('dbname', 'test')}?options=-csearch_path%3D{schema}"
    )


def postgres_available() -> str | None:
    """None when PostgreSQL answers, else the reason."""
    try:
        import psycopg

        with psycopg.connect(PG_DSN, connect_timeout=3):
            return None
    except Exception as exc:  # noqa: BLE001 - any failure means "not available"
        return f"PostgreSQL not reachable at {PG_DSN}: {exc}"


def require_postgres() -> None:
    reason = postgres_available()
    if reason is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


def new_pg_schema() -> tuple[str, str]:
    import psycopg

    schema = "t_" + uuid.uuid4().hex[:12]
    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    return schema, _pg_url(schema)


def drop_pg_schema(schema: str) -> None:
    import psycopg

    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request, tmp_path: Path) -> Iterator[str]:
    """A migrated, empty store: SQLite in tmp_path, or a fresh PostgreSQL schema."""
    from gateway.store.db import upgrade

    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'gateway.db'}"
        upgrade(url)
        yield url
        return
    yield from _migrated_postgres()


def _migrated_postgres() -> Iterator[str]:
    from gateway.store.db import upgrade

    require_postgres()
    schema, url = new_pg_schema()
    try:
        upgrade(url)
        yield url
    finally:
        drop_pg_schema(schema)


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A migrated, empty PostgreSQL schema (for tests that need several processes on one store)."""
    yield from _migrated_postgres()


@pytest.fixture
def engine(store_url):
    from gateway.store.db import make_engine

    eng = make_engine(store_url)
    yield eng
    eng.dispose()
