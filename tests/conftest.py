from __future__ import annotations

import contextlib
import os
import secrets

import pytest
from sqlalchemy import text

from pbx.mikopbx import MikoPbxClient
from sandbox.demo import demo_state
from sandbox.mikopbx import MikoPbxSimulator
from storage.db import make_engine, migrate
from storage.repos import Repos

API_KEY = secrets.token_hex(32)


def fast_client(url: str, **kwargs) -> MikoPbxClient:
    """A client whose limiter and backoff do not slow the tests down."""
    options = {
        "api_key": API_KEY,
        "rate_limit_per_min": 60_000,
        "burst": 1000,
        "backoff": 0.01,
        "timeout": 5.0,
    }
    options.update(kwargs)
    if "login" in options:
        options.pop("api_key")
    return MikoPbxClient(url, **options)


async def start_demo_sim(registration_delay: float = 0.05) -> MikoPbxSimulator:
    """The demo PBX over HTTP on loopback, started; nginx's rate limit off unless a test turns it on."""
    state = demo_state()
    state.settings["PBXRateLimitEnabled"] = "0"
    state.registrar.delay = registration_delay
    simulator = MikoPbxSimulator(state, api_keys=[API_KEY])
    await simulator.start()
    return simulator


@pytest.fixture
async def sim():
    """The demo PBX (`start_demo_sim`), stopped after the test."""
    simulator = await start_demo_sim()
    yield simulator
    await simulator.stop()


@pytest.fixture
async def client(sim):
    async with fast_client(sim.url, name="demo") as c:
        yield c


PG_URL = os.environ.get("PBXBOT_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def _sqlite_engine(tmp_path):
    return make_engine(f"sqlite:///{tmp_path / 'pbxbot.db'}")


@contextlib.contextmanager
def _pg_engine():
    """A schema of its own per test in the shared `test` database, dropped afterwards."""
    if os.environ.get("PBXBOT_TEST_NO_PG") == "1":
        pytest.skip("PostgreSQL tests switched off by PBXBOT_TEST_NO_PG=1")
    schema = f"t_{secrets.token_hex(6)}"
    admin = make_engine(PG_URL)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    engine = make_engine(PG_URL, connect_args={"options": f"-csearch_path={schema}"})
    try:
        yield engine
    finally:
        engine.dispose()
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request, tmp_path):
    if request.param == "sqlite":
        engine = _sqlite_engine(tmp_path)
        migrate(engine)
        yield engine
        engine.dispose()
        return
    with _pg_engine() as engine:
        migrate(engine)
        yield engine


@pytest.fixture
def store(engine):
    return Repos(engine)
