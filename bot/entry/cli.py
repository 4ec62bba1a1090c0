"""`pbxbot` command line.

pbxbot simulator [--host H] [--port P] [--seed demo|empty|FILE] [--state FILE] [--api-key K]
pbxbot numbers   [--pbx NAME | --sandbox]      accounts, registration, routes of one PBX
pbxbot call      --sandbox --host HOST --to LOGIN [--from NUMBER] [--json]   where the call ends up
pbxbot plan      (--pbx NAME | --sandbox) "<command>" [--apply] [--password-file F]
pbxbot plan      (--pbx NAME | --sandbox) --csv FILE --provider P [--apply]
pbxbot recover   [--pbx NAME]                  make plans a dead process left half-applied whole again
pbxbot doctor    (--pbx NAME | --sandbox)      check the routing; exit 1 on an error (cron, monitoring)
pbxbot trace     (--pbx NAME | --sandbox) LOGIN  where a call to LOGIN ends up, and why
pbxbot digest    (--pbx NAME | --sandbox) [--weekly]   print the routing digest
pbxbot map       (--pbx NAME | --sandbox) --out FILE.png|FILE.svg   draw the routing map
                 --json on numbers, doctor, trace, digest, plan: one JSON object (docs/json.md),
                 the exit status unchanged
pbxbot check                                   config, database, each PBX, the bot token; exit 1 on a failure
pbxbot migrate                                 bring the database to the current schema
pbxbot run                                     the Telegram bot (config: [telegram], [pbx.*], [policy])
pbxbot health                                  the running bot alive, its database reachable: exit 0, else 1
pbxbot shell                                   a terminal chat with the bot (no Telegram account needed)
pbxbot tour                                    a short look at the demo PBX (no config needed)

Exit status of `plan --apply`: 0 applied, 3 rolled back (the PBX is as it was), 4 failed (records
left over: the output names them), 1 not applied (stale, the PBX unreachable), 2 bad input.
`recover`: 0 when every interrupted plan is whole again (applied or rolled back) or none was found,
4 when records are left over, 1 when a PBX could not be read (the plan stays interrupted).

Global options (before or after the subcommand): --config FILE, --lang ru|en, -v, --log-format.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import html
import json
import logging
import secrets
import signal
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bot.config import ConfigError, exposed_secret_files, load_settings
from bot.plans import validate
from bot.plans.changes import LOCAL_ADMIN, ChangeError, PbxHandle, Recovery, display_names
from bot.plans.commands import (
    AddNumber,
    ChangePassword,
    Intent,
    UsageError,
    decode_csv,
    parse,
    parse_csv,
    parse_number,
)
from bot.plans.planner import PlanError
from bot.plans.service import Changes
from bot.plans.vault import VaultError
from bot.text.i18n import system_language, t
from bot.text.render import error_text, outcome_text, plan_text
from bot.text.views import call_text, doctor_report, numbers_lines, trace_text
from pbx.errors import PbxError
from pbx.mikopbx import MikoPbxClient
from storage.db import StorageError
from storage.tables import utcnow

from . import jsonout, logs
from .wiring import open_changes, open_pbx, open_store

if TYPE_CHECKING:
    from sandbox.mikopbx import MikoPbxSimulator

log = logging.getLogger("pbxbot")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("pbxbot")
    except PackageNotFoundError:  # run from a checkout that is not installed
        return "unknown"


def _global_options(parser: argparse.ArgumentParser, *, defaults: bool) -> None:
    """Options accepted before and after the subcommand (`pbxbot --lang en numbers` and
    `pbxbot numbers --lang en`); the subcommand's copy leaves unset values alone."""

    def default(value: object) -> object:
        return value if defaults else argparse.SUPPRESS

    parser.add_argument("--config", default=default(None), help="TOML config file (default: $PBXBOT_CONFIG)")
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=default(False),
        help="debug logging (never shows secrets)",
    )
    parser.add_argument(
        "--lang",
        choices=("ru", "en"),
        default=default(None),
        help="ru or en (default: the locale, $LC_ALL / $LC_MESSAGES / $LANG: Russian for ru_*, else English)",
    )
    parser.add_argument(
        "--log-format", choices=("text", "json"), default=default(None), help="default: the config's"
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pbxbot", description="Chat-ops for MikoPBX provider accounts and routes"
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    _global_options(parser, defaults=True)
    common = argparse.ArgumentParser(add_help=False)
    _global_options(common, defaults=False)
    sub = parser.add_subparsers(dest="command", required=True)
    add_parser = sub.add_parser

    def sub_parser(name: str, **kwargs: Any) -> argparse.ArgumentParser:
        return add_parser(name, parents=[common], **kwargs)

    # every subcommand takes the global options too (argparse has no hook for that)
    sub.add_parser = sub_parser  # type: ignore[method-assign]

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
    sim.add_argument(
        "--rate-window",
        type=float,
        default=60.0,
        help="seconds of nginx's 180-request window (benches scale it)",
    )

    numbers = sub.add_parser("numbers", help="accounts, registration states and routes of a PBX")
    _target(numbers)
    numbers.add_argument("number", nargs="*", help="only this login or phone (+7 495 123-45-67)")
    _json(numbers)

    call = sub.add_parser("call", help="simulate an inbound call (simulator only)")
    _target(call)
    call.add_argument("--host", dest="source", required=True, help="host the INVITE comes from")
    call.add_argument("--to", required=True, help="Request-URI user: the login or the DID")
    call.add_argument("--from", dest="caller", default="+74951234567")
    call.add_argument("--json", action="store_true", help="the simulator's answer as JSON")

    plan = sub.add_parser("plan", help="plan a change (and apply it at once with --apply)")
    _target(plan)
    plan.add_argument("text", nargs="?", metavar="COMMAND", help='e.g. "/addnumber zadarma 847900 → IVR"')
    plan.add_argument("--csv", type=Path, help="login,password,destination[,phone] rows: one plan")
    plan.add_argument("--provider", help="the provider of the --csv rows (zadarma, sip.example.ru, ...)")
    plan.add_argument("--apply", action="store_true", help="apply at once as the local admin (audited)")
    plan.add_argument(
        "--password-file",
        type=Path,
        help="the SIP password of the account /addnumber creates or /password sets",
    )
    _json(plan)

    recover = sub.add_parser(
        "recover", help="make plans a dead process left half-applied whole again (exit 0 when all are)"
    )
    recover.add_argument("--pbx", help="only this PBX profile (default: every one)")

    doctor = sub.add_parser("doctor", help="check the routing; exit 1 when an error is found")
    _target(doctor)
    _json(doctor)
    trace = sub.add_parser("trace", help="where a call to a login or phone ends up, and why")
    _target(trace)
    trace.add_argument("number", help="a login, or a phone number in an account's note")
    _json(trace)
    digest = sub.add_parser("digest", help="the routing digest")
    _target(digest)
    digest.add_argument("--print", action="store_true", help="print it (the default; posting is the bot's)")
    digest.add_argument("--weekly", action="store_true", help="cover 7 days instead of 1")
    _json(digest)

    routing_map = sub.add_parser(
        "map", help="draw the routing map (number -> account -> route -> destination)"
    )
    _target(routing_map)
    routing_map.add_argument("--out", type=Path, required=True, help="the picture: FILE.png or FILE.svg")

    sub.add_parser(
        "check", help="config, database, migrations, each PBX and the bot token; exit 1 on a failure"
    )
    sub.add_parser("migrate", help="bring the database to the current schema")
    sub.add_parser("run", help="run the Telegram bot (long polling, or a webhook server)")
    sub.add_parser("health", help="is the running bot alive and its database reachable (exit 0 / 1)")
    sub.add_parser("shell", help="a terminal chat with the bot: local Telegram server, demo PBX, SQLite")
    sub.add_parser("tour", help="a short look at the demo PBX in the simulator")
    return parser


def _json(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--json", action="store_true", help="one JSON object on stdout (fields: docs/json.md)"
    )


def _target(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--pbx", help="PBX profile name from the config")
    group.add_argument("--sandbox", action="store_true", help="an in-process simulator with the demo PBX")


@contextlib.asynccontextmanager
async def _client(args: argparse.Namespace) -> AsyncIterator[tuple[MikoPbxClient, MikoPbxSimulator | None]]:
    if args.sandbox:
        from sandbox.demo import demo_state
        from sandbox.mikopbx import MikoPbxSimulator

        key = secrets.token_hex(32)
        async with MikoPbxSimulator(demo_state(), api_keys=[key]) as sim:
            async with MikoPbxClient(sim.url, api_key=key, name="sandbox") as client:
                yield client, sim
        return
    settings = load_settings(args.config)
    name = settings.profile(args.pbx)[0]
    async with open_pbx(settings, name) as client:
        yield client, None


async def _run(args: argparse.Namespace) -> int:
    if args.command == "simulator":
        return await _simulator(args)
    if args.command == "tour":
        return await _tour(args.lang)
    if args.command == "shell":
        from sandbox.shell import run_shell

        return await run_shell(args.lang)
    if args.command == "run":
        return await _run_bot(args)
    if args.command == "check":
        return await _check(args)
    if args.command == "health":
        return await _health(args)
    if args.command == "migrate":
        open_store(load_settings(args.config))
        return 0
    if args.command == "plan":
        return await _plan(args)
    if args.command == "recover":
        return await _recover(args)
    if args.command == "map" and args.out.suffix.lower() not in (".png", ".svg"):
        print(t("cli.map_format", args.lang, path=args.out), file=sys.stderr)
        return 2
    async with _client(args) as (client, sim):
        if args.command == "map":
            return await _map(args, client)
        if args.command in ("doctor", "trace", "digest"):
            return await _routing(args, client)
        if args.command == "numbers":
            only = parse_number(" ".join(args.number), "numbers") if args.number else None
            if args.json:
                print(jsonout.dumps(await jsonout.numbers(client, only=only)))
                return 0
            print("\n".join(await numbers_lines(client, args.lang, only=only)))
            return 0
        if args.command == "call":
            if sim is None:
                print(t("cli.call_sandbox_only", args.lang), file=sys.stderr)
                return 2
            result = sim.simulate_call(args.source, args.to, args.caller)
            if args.json:
                print(json.dumps(result, ensure_ascii=False, indent=1))
            else:
                print(t("tour.call", args.lang, host=args.source, login=args.to))
                print(call_text(result, args.lang))
            return 0
    return 2


MAX_CSV_BYTES = 16 * 1024 * 1024
MAX_PASSWORD_FILE_BYTES = 4096


def _read_local_file(path: Path, lang: str, limit: int) -> bytes:
    """A file named on the command line, or a _Refusal saying in one line why not."""
    try:
        with path.open("rb") as file:
            data = file.read(limit + 1)
    except FileNotFoundError:
        raise _Refusal(t("cli.file_missing", lang, path=path)) from None
    except IsADirectoryError:
        raise _Refusal(t("cli.file_is_dir", lang, path=path)) from None
    except OSError as exc:
        error = exc.strerror or type(exc).__name__
        raise _Refusal(t("cli.file_unreadable", lang, path=path, error=error)) from None
    if len(data) > limit:
        raise _Refusal(t("cli.file_too_big", lang, path=path, limit=limit)) from None
    return data


def _password_file(path: Path, lang: str) -> str:
    """The password in a file: UTF-8, one trailing line end dropped, nothing else (bot/plans/validate.py)."""
    try:
        text = _read_local_file(path, lang, MAX_PASSWORD_FILE_BYTES).decode("utf-8")
    except UnicodeDecodeError:
        raise _Refusal(t("cli.file_not_text", lang, path=path)) from None
    return validate.sip_password(validate.password_file_text(text))


def _plan_intent(args: argparse.Namespace) -> tuple[Intent, dict[str, str]]:
    """The intent and the SIP passwords (from the CSV, the password file or a prompt)."""
    if args.csv is not None:
        if not args.provider:
            raise _Refusal(t("cli.csv_needs_provider", args.lang))
        text = decode_csv(_read_local_file(args.csv, args.lang, MAX_CSV_BYTES))
        return parse_csv(text, args.provider)
    intent = parse(args.text or "")
    if not isinstance(intent, AddNumber | ChangePassword) or not args.apply:
        return intent, {}
    login = intent.login if isinstance(intent, AddNumber) else intent.number  # /password: the account's
    if args.password_file is not None:
        return intent, {login: _password_file(args.password_file, args.lang)}
    if sys.stdin.isatty():
        prompt = t("cli.password_prompt", args.lang, login=login)
        return intent, {login: validate.sip_password(getpass.getpass(prompt))}
    raise _Refusal(t("cli.password_needed", args.lang, login=login))


class _Refusal(Exception):
    pass


async def _plan(args: argparse.Namespace) -> int:
    lang = args.lang
    try:
        intent, passwords = _plan_intent(args)
    except (UsageError, _Refusal) as exc:
        print(error_text(exc, lang), file=sys.stderr)
        return 2
    with contextlib.ExitStack() as stack:
        if args.sandbox:
            data_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="pbxbot-")))
            settings = load_settings(None, storage={"data_dir": data_dir})
        else:
            settings = load_settings(args.config)
        async with _client(args) as (client, _sim):
            reload_wait = 0.5 if args.sandbox else settings.profile(args.pbx)[1].reload_wait
            handle = PbxHandle.of(client, reload_wait=reload_wait, verify_interval=0.5)
            changes = open_changes(settings, {client.name: handle})
            _record_drift(changes)
            try:
                return await _plan_or_apply(changes, client, intent, passwords, args)
            except (PlanError, ChangeError) as exc:
                print(error_text(exc, lang), file=sys.stderr)
                return 2
    return 2


def _record_drift(changes: Changes) -> None:
    """Drift a command-line read finds in the bot's mirror is kept in the audit trail
    (the digest and /drift list it), as the bot keeps what its own reads find."""
    from bot.routing.watch import record_drift

    for handle in changes.pbxs.values():
        handle.reader.on_drift = lambda before, after: record_drift(changes.db, before, after, utcnow())


async def _plan_or_apply(
    changes: Changes,
    client: MikoPbxClient,
    intent: Intent,
    passwords: dict[str, str],
    args: argparse.Namespace,
) -> int:
    lang = args.lang
    if not args.apply:
        plan, snapshot = await changes.plan(client.name, intent)
        names = display_names(plan, snapshot)  # from what the plan read: no extra PBX calls
        if args.json:
            print(jsonout.dumps(jsonout.plan(plan, lang, names=names)))
            return 0
        print(plan_text(plan, lang, destinations=names["destinations"], providers=names["providers"]))
        if not plan.empty:
            print("\n" + t("cli.plan_only", lang))
        return 0
    for recovery in await changes.recover(pbx=client.name):  # a plan a dead `pbxbot` left half-applied
        print(_recovery_line(recovery, lang), file=sys.stderr if args.json else sys.stdout)
    command = args.text or f"CSV {args.csv.name}"
    proposal = await changes.propose(LOCAL_ADMIN, client.name, intent, secrets=passwords, command=command)
    if proposal.row is None:
        print(
            jsonout.dumps(jsonout.plan(proposal.plan, lang)) if args.json else plan_text(proposal.plan, lang)
        )
        return 0
    names = proposal.row.summary["names"]
    outcome = await changes.apply(LOCAL_ADMIN, proposal.row.id, at_once=True)
    row = outcome.row
    if args.json:
        data = jsonout.plan(proposal.plan, lang, names=names, plan_id=row.id, status=row.status)
        details = outcome_text(outcome.result, row.outcome, lang)
        data["outcome"] = details.splitlines() if details else []
        if outcome.replacement is not None and outcome.replacement.row is not None:
            data["replaced_by"] = outcome.replacement.row.id
        print(jsonout.dumps(data))
        return EXIT_BY_STATUS.get(row.status, EXIT_NOT_APPLIED)
    print(
        plan_text(
            proposal.plan,
            lang,
            plan_id=row.id,
            destinations=names["destinations"],
            providers=names["providers"],
            status=row.status,
        )
    )
    details = outcome_text(outcome.result, row.outcome, lang)
    if details:
        print(details)
    if outcome.replacement is not None and outcome.replacement.row is not None:
        print(t("outcome.replaced", lang, id=outcome.replacement.row.id))
    return EXIT_BY_STATUS.get(row.status, EXIT_NOT_APPLIED)


EXIT_NOT_APPLIED = 1
EXIT_BY_STATUS = {"applied": 0, "rolled_back": 3, "failed": 4}


def _recovery_line(recovery: Recovery, lang: str) -> str:
    row = recovery.row
    if recovery.postponed is not None:
        return t("cli.recover.postponed", lang, id=row.id, error=recovery.postponed)
    line = t(f"cli.recover.{row.status}", lang, id=row.id, command=row.command)
    details = outcome_text(recovery.result, row.outcome, lang)
    return f"{line}\n{details}" if details else line


async def _recover(args: argparse.Namespace) -> int:
    """Reconcile interrupted plans of every configured PBX (or one)."""
    settings = load_settings(args.config)
    names = [settings.profile(args.pbx)[0]] if args.pbx else sorted(settings.pbx)
    async with contextlib.AsyncExitStack() as stack:
        handles = {}
        for name in names:
            profile = settings.profile(name)[1]
            client = await stack.enter_async_context(open_pbx(settings, name))
            handles[name] = PbxHandle.of(client, reload_wait=profile.reload_wait, verify_interval=0.5)
        changes = open_changes(settings, handles)
        _record_drift(changes)
        recovered = await changes.recover(pbx=args.pbx)
    for recovery in recovered:
        print(_recovery_line(recovery, args.lang))
    if not recovered:
        print(t("cli.recover.none", args.lang))
    if any(r.postponed is not None for r in recovered):
        return EXIT_NOT_APPLIED
    return 0 if all(r.whole for r in recovered) else EXIT_BY_STATUS["failed"]


async def _routing(args: argparse.Namespace, client: MikoPbxClient) -> int:
    from zoneinfo import ZoneInfo

    from bot.plans.snapshot import SnapshotReader
    from bot.routing import digest as digests
    from bot.routing.doctor import Severity, examine, worst
    from bot.routing.trace import Tracer
    from bot.routing.watch import record_drift
    from storage.aio import AsyncRepos

    lang = args.lang
    with tempfile.TemporaryDirectory(prefix="pbxbot-") as tmp:
        # the sandbox has no history and no mirror: an empty database of its own
        settings = (
            load_settings(None, storage={"data_dir": tmp}) if args.sandbox else load_settings(args.config)
        )
        store = open_store(settings)
        db = AsyncRepos(store)
        try:
            # the bot's mirror: as fast as in the bot; drift it finds is recorded (audit, digest,
            # /drift) for the bot to list, never left unsaid because the command line saw it first
            reader = SnapshotReader(
                client, mirror=db, on_drift=lambda before, after: record_drift(db, before, after, utcnow())
            )
            if args.command == "doctor":
                _, findings = await examine(client, reader, phone_dids=settings.phone_dids)
                if args.json:
                    print(jsonout.dumps(jsonout.doctor(client.name, findings, lang)))
                else:
                    print(doctor_report(client.name, findings, lang))
                return 1 if worst(findings) is Severity.ERROR else 0
            if args.command == "trace":
                snapshot = await reader.read(number=args.number)
                tracer = Tracer(snapshot, await client.default_route())
                result = tracer.trace(args.number)
                if args.json:
                    print(jsonout.dumps(jsonout.trace(client.name, args.number, result, tracer.names, lang)))
                else:
                    print(trace_text(client.name, args.number, result, lang))
                return 0 if result.outcome == "dial" else 1
            tz = ZoneInfo(settings.timezone)
            since, until, _ = digests.period_bounds("weekly" if args.weekly else "daily", utcnow(), tz)
            built = await digests.build(
                client,
                reader,
                store,
                client.name,
                since=since,
                until=until,
                tz=tz,
                phone_dids=settings.phone_dids,
            )
        finally:
            db.close()
            store.engine.dispose()
    if args.json:
        print(jsonout.dumps(jsonout.digest(built, lang)))
        return 0
    print(html.unescape(digests.render(built, lang, tz)))
    return 0


async def _map(args: argparse.Namespace, client: MikoPbxClient) -> int:
    """The routing map as a picture in --out (PNG or SVG by its suffix), the doctor's findings printed."""
    from bot.plans.snapshot import SnapshotReader
    from bot.routing.routemap import read_map
    from bot.text.routemap import draw

    phone_dids = {} if args.sandbox else load_settings(args.config).phone_dids
    rmap = await read_map(client, SnapshotReader(client), phone_dids=phone_dids)
    data = await asyncio.to_thread(draw, rmap, args.lang, fmt=args.out.suffix.lower().lstrip("."))
    try:
        args.out.write_bytes(data)
    except OSError as exc:
        error = exc.strerror or type(exc).__name__
        print(t("cli.file_unwritable", args.lang, path=args.out, error=error), file=sys.stderr)
        return 2
    print(t("cli.map_written", args.lang, pbx=client.name, path=args.out, numbers=len(rmap.paths)))
    print(doctor_report(client.name, rmap.findings, args.lang))
    return 0


async def _check(args: argparse.Namespace) -> int:
    from .check import run_checks

    try:
        settings = load_settings(args.config)
    except ConfigError as exc:  # a config that does not validate: one ✗ line per problem
        for line in exc.problems:
            print(f"✗ config: {line}")
        return 2
    logs.setup(settings, level=logging.DEBUG if args.verbose else logging.WARNING, fmt=args.log_format)
    items = await run_checks(settings)
    for item in items:
        mark = "!" if item.ok and item.warning else "✓" if item.ok else "✗"
        print(f"{mark} {item.name}: {item.text(args.lang)}")
    return 0 if all(item.ok for item in items) else 1


class BotStartError(Exception):
    """`pbxbot run` cannot start and retrying will not help: one line, exit 2."""

    def __init__(self, code: str, **params: object):
        super().__init__(code)
        self.code, self.params = code, params


RETRY_FIRST, RETRY_MAX = 1.0, 60.0  # seconds between starts while Telegram is unreachable


async def _run_bot(args: argparse.Namespace) -> int:
    from .app import running, telegram_fatal, telegram_problem

    settings = load_settings(args.config)
    logs.setup(settings, level=logging.DEBUG if args.verbose else logging.INFO, fmt=args.log_format)
    for key, path, mode in exposed_secret_files(settings):
        log.warning(
            "%s %s (mode %s) can be read by other users: chmod 600, or 640 with the bot's group",
            key,
            path,
            mode,
        )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(signum, stop.set)
    delay = RETRY_FIRST
    while not stop.is_set():
        try:
            async with running(settings) as app:
                log.warning("pbxbot running as @%s", app.services.bot_username)
                waiter = asyncio.create_task(stop.wait())
                polling = {app.task} if app.task is not None else set()  # webhook: the server runs alone
                await asyncio.wait({waiter, *polling}, return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
            return 0
        except Exception as exc:
            key, params = telegram_problem(exc)
            if telegram_fatal(exc):
                raise BotStartError(key.removeprefix("telegram."), **params) from None
            if key != "telegram.unreachable":
                raise
            log.warning("%s", t("telegram.retrying", "en", seconds=int(delay), **params))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)
        delay = min(delay * 2, RETRY_MAX)
    return 0


async def _health(args: argparse.Namespace) -> int:
    from .health import check_health

    settings = load_settings(args.config)
    findings = await asyncio.to_thread(check_health, settings)
    for f in findings:
        print(f"{'✓' if f.ok else '✗'} {f.name}: {t(f'health.{f.key}', args.lang, **f.params)}")
    return 0 if all(f.ok for f in findings) else 1


async def _tour(lang: str) -> int:
    from sandbox.demo import demo_state
    from sandbox.mikopbx import MikoPbxSimulator

    key = secrets.token_hex(32)
    async with MikoPbxSimulator(demo_state(), api_keys=[key]) as sim:
        print(t("tour.started", lang, url=sim.url) + "\n")
        async with MikoPbxClient(sim.url, api_key=key, name="demo") as client:
            await client.check_auth()
            print("\n".join(await numbers_lines(client, lang)))
            print("\n" + t("tour.call", lang, host="sip.zadarma.com", login="847706"))
            result = sim.simulate_call("sip.zadarma.com", "847706", "+74951234567")
            print(call_text(result, lang))
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
    sim = MikoPbxSimulator(
        state,
        api_keys=keys,
        admin_password=args.admin_password,
        state_file=args.state,
        rate_window=args.rate_window,
    )
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
    try:
        return _main(argv)
    except BrokenPipeError:  # `pbxbot numbers | head`: the reader left, nothing more to say
        _quiet_stdout()
        return 141  # as a shell reports a command killed by SIGPIPE


def _main(argv: list[str] | None) -> int:
    args = _parser().parse_args(argv)
    args.lang = args.lang or system_language(default="en")  # the terminal's locale: English unless ru_*
    logs.setup(None, level=logging.DEBUG if args.verbose else logging.WARNING, fmt=args.log_format)
    try:
        return asyncio.run(_run(args))
    except ConfigError as exc:
        for line in exc.problems:
            print(t("cli.config_problem", args.lang, problem=line), file=sys.stderr)
        return 2
    except (StorageError, VaultError) as exc:  # the data directory, the database file, the key
        print(t(f"cli.{exc.code}", args.lang, **exc.params), file=sys.stderr)
        return 2
    except PbxError as exc:
        print(t("cli.pbx_problem", args.lang, problem=exc), file=sys.stderr)
        return 1
    except BotStartError as exc:  # `run`: a token Telegram refuses, another poller on it
        print(t(f"telegram.{exc.code}", args.lang, **exc.params), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _quiet_stdout() -> None:
    """stdout's reader is gone: point stdout at /dev/null so the interpreter's final
    flush does not complain about the broken pipe."""
    import os

    with contextlib.suppress(OSError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


if __name__ == "__main__":
    sys.exit(main())
