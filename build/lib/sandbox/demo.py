"""Seeds for the simulator.

`demo`: the start of the MikoPBX manual's case — one Zadarma account (login
847706 on sip.zadarma.com) with a provider-bound route to the "Sales" queue,
an IVR menu "Main menu", employees 201, 202, 203 (the queue has 201 and 202).
`empty`: a fresh MikoPBX (the default route only).
"""

from __future__ import annotations

import json
from pathlib import Path

from .pbxstate import PROVIDER_DEFAULTS, PbxState

DEMO_PROVIDER_ID = "SIP-TRUNK-5A1D8E20"
DEMO_QUEUE_EXTENSION = "2200"
DEMO_IVR_EXTENSION = "2000"


def _employees() -> list[dict]:
    names = {"201": "Anna Smirnova", "202": "Boris Ivanov", "203": "Olga Petrova"}
    return [
        {"id": str(i), "number": n, "user_username": name, "user_email": "", "mobile_number": ""}
        for i, (n, name) in enumerate(names.items(), start=1)
    ]


def empty_state(**kwargs) -> PbxState:
    return PbxState(**kwargs)


def demo_state(**kwargs) -> PbxState:
    state = PbxState(**kwargs)
    state.employees = _employees()
    state.queues = [
        {
            "id": "QUEUE-5B3C1A2D",
            "name": "Sales",
            "extension": DEMO_QUEUE_EXTENSION,
            "strategy": "ringall",
            "members": [{"extension": "201", "priority": 0}, {"extension": "202", "priority": 1}],
        }
    ]
    state.ivr_menus = [
        {
            "id": "IVR-1F4E9B7C",
            "name": "Main menu",
            "extension": DEMO_IVR_EXTENSION,
            "timeout": 7,
            "number_of_repeat": 3,
            "timeout_extension": DEMO_QUEUE_EXTENSION,
            "actions": [
                {"digits": "1", "extension": DEMO_QUEUE_EXTENSION},
                {"digits": "2", "extension": "203"},
            ],
        }
    ]
    state.providers[DEMO_PROVIDER_ID] = {
        **PROVIDER_DEFAULTS,
        "id": DEMO_PROVIDER_ID,
        "description": "Zadarma 847706",
        "username": "847706",
        "secret": "demo-847706-secret",
        "host": "sip.zadarma.com",
        "transport": "udp",
        "additionalHosts": [],
    }
    state.routes[2] = {
        "id": 2,
        "rulename": "Zadarma 847706 → Sales",
        "number": "",
        "provider": DEMO_PROVIDER_ID,
        "priority": 1,
        "timeout": 120,
        "extension": DEMO_QUEUE_EXTENSION,
        "audio_message_id": None,
        "note": "",
    }
    return state


def load_seed(seed: str, **kwargs) -> PbxState:
    """`demo`, `empty`, or the path of a state file (JSON, as --state writes it)."""
    if seed == "demo":
        return demo_state(**kwargs)
    if seed == "empty":
        return empty_state(**kwargs)
    path = Path(seed)
    if not path.is_file():
        raise ValueError(f"seed must be demo, empty or a state file; {seed!r} is none of them")
    return PbxState.load(json.loads(path.read_text(encoding="utf-8")))
