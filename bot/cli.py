"""`pbxbot` command line.

pbxbot simulator [--host H] [--port P] [--seed demo|empty|FILE] [--state FILE] [--api-key K]
pbxbot numbers   [--pbx NAME | --sandbox]      accounts, registration, routes of one PBX
pbxbot call      (--pbx NAME | --sandbox) --host HOST --to LOGIN [--from NUMBER]   (sandbox only)
pbxbot tour                                    a short look at the demo PBX (no config needed)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import secrets
import sys
from collections.abc import AsyncIterator
from pathlib import Path

from pbx.errors import PbxError
from pbx.mikopbx import MikoPbxClient
from pbx.models import Route

from .config import ConfigError, load_settings
from .i18n import system_language, t

log = logging.getLogger("pbxbot")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pbxbot", description="Chat-ops for MikoPBX provider accounts and routes"
    )
    parser.add_argument("--config", help="TOML config file (default: $PBXBOT_CONFIG)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging (never shows secrets)")
    parser.add_argument("--lang", choices=("ru", "en"), default=None, help="ru or en (default: from $LANG)")
    sub = parser.add_subparsers(dest="command", required=True)

    sim = sub.add_parser("simulator", help="run the MikoPBX REST v3 simulator")
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--port", type=int, default=8088)
    sim.add_argument("--seed", default="demo", help="demo, empty, or a state file")
    sim.add_argument("--state", type=Path, help="keep the state in this JSON file")
    sim.add_argument("--api-key", action="append", default=[], help="accept this Bearer API key (repeatable)")
    sim.add_argument("--admin-password", default="admin", help="password of login 'admin' for auth:login")
    sim.add_argument(
        "--registration-delay", type=float, default=0.5, help="seconds until a new account registers"
    )
    sim.add_argument(
        "--reject", action="append", default=[], metavar="LOGIN@HOST", help="credentials the provider refuses"
    )
    sim.add_argument("--no-rate-limit", action="store_true", help="as PBXRateLimitEnabled=0")

    numbers = sub.add_parser("numbers", help="accounts, registration states and routes of a PBX")
    _target(numbers)

    call = sub.add_parser("call", help="simulate an inbound call (simulator only)")
    _target(call)
    call.add_argument("--host", dest="source", required=True, help="host the INVITE comes from")
    call.add_argument("--to", required=True, help="Request-URI user: the login or the DID")
    call.add_argument("--from", dest="caller", default="+74951234567")

    sub.add_parser("tour", help="a short look at the demo PBX in the simulator")
    return parser


def _target(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--pbx", help="PBX profile name from the config")
    group.add_argument("--sandbox", action="store_true", help="an in-process simulator with the demo PBX")


@contextlib.asynccontextmanager
async def _client(args: argparse.Namespace) -> AsyncIterator[tuple[MikoPbxClient, object | None]]:
    if args.sandbox:
        from sandbox.demo import demo_state
        from sandbox.mikopbx import MikoPbxSimulator

        key = secrets.token_hex(32)
        async with MikoPbxSimulator(demo_state(), api_keys=[key]) as sim:
            async with MikoPbxClient(sim.url, api_key=key, name="sandbox") as client:
                yield client, sim
        return
    settings = load_settings(args.config)
    name, profile = settings.profile(args.pbx)
    async with MikoPbxClient.from_profile(name, profile) as client:
        yield client, None


async def _numbers(client: MikoPbxClient, lang: str) -> list[str]:
    providers, routes, default, states, destinations = await asyncio.gather(
        client.list_providers(),
        client.list_routes(),
        client.default_route(),
        client.registration_statuses(),
        client.destinations(),
    )
    names = {d.value: d.name for d in destinations}
    any_number = t("numbers.any_number", lang)

    def route_line(r: Route) -> str:
        destination = names.get(r.extension, r.extension)
        return t("numbers.route", lang, id=r.id, did=r.number or any_number, destination=destination)

    lines = [t("numbers.header", lang, pbx=client.name, accounts=len(providers), routes=len(routes))]
    for p in sorted(providers, key=lambda p: (p.host, p.username)):
        status = states.get(p.id)
        state = "disabled" if p.disabled else (status.state.value if status else "unknown")
        account = {"login": p.username or "-", "host": p.host, "port": p.port, "id": p.id}
        lines.append(
            t("numbers.account", lang, state=t(f"state.{state}", lang), description=p.description, **account)
        )
        lines += [route_line(r) for r in routes if r.providerid == p.id]
    any_routes = [r for r in routes if r.any_provider]
    if any_routes:
        lines.append(t("numbers.any_header", lang))
        lines += [route_line(r) for r in any_routes]
    lines.append(t("numbers.default", lang, destination=names.get(default.extension, default.extension)))
    return lines


async def _run(args: argparse.Namespace) -> int:
    if args.command == "simulator":
        return await _simulator(args)
    if args.command == "tour":
        return await _tour(args.lang)
    async with _client(args) as (client, sim):
        if args.command == "numbers":
            print("\n".join(await _numbers(client, args.lang)))
            return 0
        if args.command == "call":
            if sim is None:
                print(t("cli.call_sandbox_only", args.lang), file=sys.stderr)
                return 2
            result = sim.simulate_call(args.source, args.to, args.caller)
            print(json.dumps(result, ensure_ascii=False, indent=1))
            return 0
    return 2


async def _tour(lang: str) -> int:
    from sandbox.demo import demo_state
    from sandbox.mikopbx import MikoPbxSimulator

    key = secrets.token_hex(32)
    async with MikoPbxSimulator(demo_state(), api_keys=[key]) as sim:
        print(t("tour.started", lang, url=sim.url) + "\n")
        async with MikoPbxClient(sim.url, api_key=key, name="demo") as client:
            await client.check_auth()
            print("\n".join(await _numbers(client, lang)))
            print("\n" + t("tour.call", lang, host="sip.zadarma.com", login="847706"))
            result = sim.simulate_call("sip.zadarma.com", "847706", "+74951234567")
            print(t("tour.result", lang, **result))
    print("\n" + t("tour.next", lang))
    return 0


async def _simulator(args: argparse.Namespace) -> int:
    from sandbox.demo import load_seed
    from sandbox.mikopbx import MikoPbxSimulator

    if args.state is not None and args.state.is_file():
        state = load_seed(str(args.state))
    else:
        state = load_seed(args.seed)
    state.registrar.delay = args.registration_delay
    for item in args.reject:
        login, _, host = item.partition("@")
        state.registrar.rejected.add((host.lower(), login))
    if args.no_rate_limit:
        state.settings["PBXRateLimitEnabled"] = "0"
    keys = args.api_key or [secrets.token_hex(32)]
    sim = MikoPbxSimulator(state, api_keys=keys, admin_password=args.admin_password, state_file=args.state)
    url = await sim.start(args.host, args.port)
    print(t("simulator.started", args.lang, url=url, keys=len(keys)), flush=True)
    if not args.api_key:
        print(t("simulator.key", args.lang, key=keys[0]), flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await sim.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    args.lang = args.lang or system_language()
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return asyncio.run(_run(args))
    except ConfigError as exc:
        for line in exc.problems:
            print(t("cli.config_problem", args.lang, problem=line), file=sys.stderr)
        return 2
    except PbxError as exc:
        print(t("cli.pbx_problem", args.lang, problem=exc), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
