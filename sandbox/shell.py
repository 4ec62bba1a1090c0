"""`pbxbot shell`: a terminal chat with the bot, no Telegram account needed.

The real bot (aiogram polling loop) talks to sandbox/telegram/; the PBX is
the simulator's demo PBX; storage is SQLite in a temporary directory. You
type as one of three admins, in the group or in your private chat:

    /addnumber zadarma 847900 → IVR     a command (or any text) as the current speaker
    :as boris                           speak as anna (admin), boris (approver) or olga (operator)
    :chat private | group               where you speak
    :press 1                            press button 1 under the newest card here
    :csv numbers.csv zadarma            send a CSV (login,password,destination[,phone]) privately
    :call 847900                        an inbound call from sip.zadarma.com to that login
    :edit route 847706 → 2000           change the PBX by hand, as in the MikoPBX web interface
    :disable 847706, :enable 847706     (:edit alone shows every form)
    :refresh                            the bot reads the PBX now and reports drift
    :help, :quit
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import shlex
import sys
import tempfile
from pathlib import Path
from typing import Any, TextIO

from bot.config import load_settings
from bot.entry.app import running
from bot.plans.changes import Next
from bot.plans.mirror import MirrorRefresher
from bot.plans.service import Changes
from bot.plans.snapshot import Snapshot
from bot.routing.watch import DriftWatch
from bot.text.i18n import t
from bot.text.views import call_text
from pbx.mikopbx import MikoPbxClient

from .demo import demo_state
from .mikopbx import MikoPbxSimulator
from .telegram import TelegramSandbox

GROUP_ID = -1001234567890
PEOPLE = {
    "anna": (101, "Anna", "admin"),
    "boris": (102, "Boris", "approver"),
    "olga": (103, "Olga", "operator"),
}
PATIENCE = 120.0  # seconds the shell waits for the bot to finish what a line started


class Shell:
    def __init__(self, tg: TelegramSandbox, sim: MikoPbxSimulator, lang: str, out: TextIO, busy=None):
        self.busy = busy or _never_busy  # async: True while the bot still owes something for a plan
        self.handled: set[int] = set()  # updates the bot has handled to the end (`note_handled`)
        self.woken = asyncio.Event()  # set by every bot event and every handled update
        tg.listeners.append(lambda _event: self.woken.set())
        self.tg = tg
        self.sim = sim
        self.lang = lang
        self.out = out
        self.speaker = "anna"
        self.chat = "group"
        self.shown = 0
        self.drift: DriftWatch | None = None  # the bot's: what the mirror finds changed goes to it
        self.refresher: MirrorRefresher | None = None  # the bot's mirror refresher: `:refresh` runs a round

    @property
    def user_id(self) -> int:
        return PEOPLE[self.speaker][0]

    @property
    def chat_id(self) -> int:
        return GROUP_ID if self.chat == "group" else self.user_id

    def _chat_name(self, chat_id: int) -> str:
        if chat_id == GROUP_ID:
            return t("shell.group", self.lang)
        name = next((n for n, (uid, *_) in PEOPLE.items() if uid == chat_id), str(chat_id))
        return t("shell.private", self.lang, name=name)

    def print(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)

    def show_new(self) -> None:
        for event in self.tg.events[self.shown :]:
            self.shown += 1
            where = self._chat_name(event.get("chat_id") or 0)
            kind = event["kind"]
            if kind == "answer":
                if event.get("text"):
                    self.print(f"  ({t('shell.popup', self.lang)}) {event['text']}")
                continue
            if kind == "delete":
                self.print(f"[{where}] {t('shell.deleted', self.lang, id=event['message_id'])}")
                continue
            label = (
                t("shell.bot", self.lang)
                if kind == "send"
                else t("shell.edited", self.lang, id=event["message_id"])
            )
            if kind == "document":
                label = t("shell.document", self.lang, name=event.get("filename"))
            self.print(f"[{where}] {label}:")
            for line in (event.get("text") or "").split("\n"):
                self.print(f"    {line}")
            buttons = [b for row in (event.get("markup") or {}).get("inline_keyboard", []) for b in row]
            if buttons:
                self.print("    " + "  ".join(f"[{i}] {b['text']}" for i, b in enumerate(buttons, 1)))

    def note_handled(self, update_id: int) -> None:
        """The dispatcher has handled an update (its handlers and error handler returned)."""
        self.handled.add(update_id)
        self.woken.set()

    async def settle(self) -> None:
        """Wait for the end of what the line started, by event: the bot has handled the
        update the line made, and every plan has reached a state that waits for people
        (or its end) with its card showing that state; then print what the bot did."""
        update_id = self.tg.last_update_id
        loop = asyncio.get_running_loop()
        deadline = loop.time() + PATIENCE
        while True:
            self.woken.clear()  # before asking: what happens while we ask wakes the wait below
            if update_id in self.handled and not await self.busy():
                break
            remaining = deadline - loop.time()
            if remaining <= 0:
                self.print(t("shell.still_busy", self.lang, seconds=int(PATIENCE)))
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.woken.wait(), remaining)
        self.show_new()

    def _newest_card(self) -> dict[str, Any] | None:
        cards = [m for m in self.tg.bot_messages(self.chat_id) if m.get("reply_markup")]
        return cards[-1] if cards else None

    async def handle(self, line: str) -> bool:
        """One line typed; False to stop."""
        line = line.strip()
        if not line:
            return True
        if not line.startswith(":"):
            self.tg.send(self.user_id, self.chat_id, line)
            await self.settle()
            return True
        words = shlex.split(line[1:])
        command, args = words[0].lower(), words[1:]
        if command in ("quit", "exit", "q"):
            return False
        if command == "help":
            self.print(t("shell.help", self.lang))
        elif command == "as" and args and args[0].lower() in PEOPLE:
            self.speaker = args[0].lower()
            self.tg.started.add(self.user_id)
        elif command == "chat" and args and args[0] in ("group", "private"):
            self.chat = args[0]
        elif command == "press" and args and args[0].isdigit():
            card = self._newest_card()
            buttons = self.tg.buttons(self.chat_id, card["message_id"]) if card else []
            index = int(args[0]) - 1
            if card is None or not 0 <= index < len(buttons) or "callback_data" not in buttons[index]:
                self.print(t("shell.no_button", self.lang))
            else:
                self.tg.press(self.user_id, self.chat_id, card["message_id"], buttons[index]["callback_data"])
                await self.settle()
        elif command == "csv" and len(args) >= 1:
            content = await asyncio.to_thread(Path(args[0]).read_bytes)
            caption = args[1] if len(args) > 1 else None
            self.tg.send_document(self.user_id, self.user_id, Path(args[0]).name, content, caption)
            await self.settle()
        elif command == "call" and args:
            result = self.sim.simulate_call("sip.zadarma.com", args[0], "+74951234567")
            self.print(call_text(result, self.lang))
        elif command in ("edit", "disable", "enable"):
            await self.edit_by_hand(command, args)
        elif command == "refresh":
            await self.refresh()
        else:
            self.print(t("shell.unknown", self.lang))
        return True

    async def edit_by_hand(self, command: str, args: list[str]) -> None:
        """Change the simulated PBX directly, as someone in its web interface would: the bot
        is not told; it finds out at the next refresh (`:refresh`)."""
        state = self.sim.state
        login = args[0] if args else ""
        if command != "edit":
            args = ["account", login, command]
        if len(args) < 3 or args[0] not in ("route", "account"):
            self.print(t("shell.edit_usage", self.lang))
            return
        kind, login, rest = args[0], args[1], [w for w in args[2:] if w not in ("→", "->", "=>")]
        account = next((p for p in state.providers.values() if p["username"] == login), None)
        if account is None:
            self.print(t("shell.no_such", self.lang, what=f"account {login}"))
            return
        if self.refresher is not None:  # the bot's mirror holds the PBX as it is before the edit
            await self.refresher.reader.read(every_host=True)
        if kind == "account" and rest[0] in ("disable", "enable"):
            state.set_provider_disabled(account["id"], rest[0] == "disable")
            what = f"{login} {rest[0]}d"
        elif kind == "account" and rest[0] == "extra":
            account["manualattributes"] = " ".join(rest[1:]).replace("/", "\n")
            what = f"{login} extra parameters: {account['manualattributes']!r}"
        elif kind == "route":
            route = next(
                (r for r in sorted(state.routes.values(), key=lambda r: r["id"]) if r["id"] != 1
                 and (r["provider"] == account["id"] or r["number"] == login)),
                None,
            )  # fmt: skip
            if route is None:
                self.print(t("shell.no_such", self.lang, what=f"route of {login}"))
                return
            if rest[0] == "provider" and len(rest) == 2:
                other = next((p for p in state.providers.values() if p["username"] == rest[1]), None)
                if rest[1] != "any" and other is None:
                    self.print(t("shell.no_such", self.lang, what=f"account {rest[1]}"))
                    return
                route["provider"] = other["id"] if other is not None else None
                what = f"route #{route['id']} provider → {rest[1]}"
            else:
                wanted = " ".join(rest)
                numbers = state.extension_numbers()
                found = wanted if wanted in numbers else None
                found = found or next(
                    (n for n, (_, name) in numbers.items() if name.lower() == wanted.lower()), None
                )
                if found is None:
                    self.print(t("shell.no_such", self.lang, what=f"destination {wanted}"))
                    return
                route["extension"] = found
                what = f"route #{route['id']} → {found}"
        else:
            self.print(t("shell.edit_usage", self.lang))
            return
        self.print(t("shell.pbx_edited", self.lang, what=what))

    async def refresh(self) -> None:
        """A round of the bot's mirror refresher now (the bot runs one a minute): what it
        finds changed goes to the drift watch, as it would in the bot."""
        if self.drift is None or self.refresher is None:
            return
        reader, drift, found = self.refresher.reader, self.drift, []
        told = reader.on_drift

        async def counted(before: Snapshot, after: Snapshot) -> None:
            found.extend(await drift.observe(before, after))

        reader.on_drift = counted
        try:
            await self.refresher.run_once()
        finally:
            reader.on_drift = told
        await drift.flush()  # the shell shows a held alert at once; the bot waits its interval
        self.print(t("shell.refreshed", self.lang, n=len(found)))
        self.show_new()

    def prompt(self) -> str:
        return f"[{PEOPLE[self.speaker][1]} · {self._chat_name(self.chat_id)}] > "


async def _never_busy() -> bool:
    return False


async def cards_behind(tg: TelegramSandbox, changes: Changes, lang: str) -> bool:
    """The bot still owes something for a plan: an apply is about to run or
    running, or a plan's card does not show the plan's status yet."""
    for row in changes.store.plans.find(limit=20):
        if await changes.next_step(row) in (Next.APPLY, Next.RUNNING):
            return True  # running, or all it needs is in and the apply is about to start
        if row.chat_id is None or row.message_id is None:
            continue
        card = tg.messages.get(row.chat_id, {}).get(row.message_id)
        line = t("plan.status", lang, status=t(f"status.{row.status}", lang))
        if card is None or line not in (card.get("text") or ""):
            return True
    return False


async def run_shell(lang: str, *, stdin: TextIO = sys.stdin, out: TextIO = sys.stdout) -> int:
    token = f"{secrets.randbelow(10**9)}:{secrets.token_urlsafe(24)}"
    key = secrets.token_hex(32)
    state = demo_state()
    state.registrar.delay = 0.5
    with tempfile.TemporaryDirectory(prefix="pbxbot-shell-") as tmp:
        async with MikoPbxSimulator(state, api_keys=[key]) as sim, TelegramSandbox(token) as tg:
            for name, (uid, first, _role) in PEOPLE.items():
                tg.add_user(uid, first, username=name, language_code=lang)
            ids = [uid for uid, *_ in PEOPLE.values()]
            tg.add_group(GROUP_ID, "PBX admins", ids, admins=ids)
            tg.started.add(PEOPLE["anna"][0])
            roles = {
                role: [uid for uid, _f, r in PEOPLE.values() if r == role] for role in ("admin", "approver")
            }
            settings = load_settings(
                None,
                pbx={"demo": {"url": sim.url, "api_key": key, "reload_wait": 1}},
                telegram={"token": token, "api_base": tg.url, "groups": {GROUP_ID: "demo"}},
                storage={"data_dir": tmp},
                policy={
                    "admins": roles["admin"],
                    "approvers": roles["approver"],
                    "operators": [PEOPLE["olga"][0]],
                    "approvals": {"remove": 1},  # one approver besides the proposer: 2 could never be met
                },
                default_language=lang,
            )
            async with MikoPbxClient(sim.url, api_key=key, name="demo") as client:
                async with running(
                    settings, clients={"demo": client}, polling_timeout=1, verify_interval=0.5
                ) as app:
                    changes = app.services.changes
                    shell = Shell(tg, sim, lang, out, busy=lambda: cards_behind(tg, changes, lang))
                    shell.drift = app.drift
                    shell.refresher = app.refreshers[0] if app.refreshers else None
                    app.dispatcher.handled.append(shell.note_handled)
                    shell.shown = len(tg.events)
                    shell.print(t("shell.welcome", lang))
                    loop = asyncio.get_running_loop()
                    interactive = stdin.isatty()
                    while True:
                        if interactive:
                            print(shell.prompt(), end="", file=out, flush=True)
                        line = await loop.run_in_executor(None, stdin.readline)
                        if not line:
                            break
                        if not interactive:
                            shell.print(shell.prompt() + line.rstrip("\n"))
                        with contextlib.suppress(KeyError, OSError):
                            if not await shell.handle(line):
                                break
    return 0
