from __future__ import annotations

import secrets

import pytest

from pbx.mikopbx import MikoPbxClient
from sandbox.demo import demo_state
from sandbox.mikopbx import MikoPbxSimulator

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


@pytest.fixture
async def sim():
    """The demo PBX over HTTP on loopback; nginx's rate limit off unless a test turns it on."""
    state = demo_state()
    state.settings["PBXRateLimitEnabled"] = "0"
    state.registrar.delay = 0.05
    simulator = MikoPbxSimulator(state, api_keys=[API_KEY])
    await simulator.start()
    yield simulator
    await simulator.stop()


@pytest.fixture
async def client(sim):
    async with fast_client(sim.url, name="demo") as c:
        yield c
