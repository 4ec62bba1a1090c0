"""SIP passwords of a plan: sealed by the vault the moment they arrive, bound to
the plan's logins, asked for in private, held while their user picks the plan,
found when pasted where they must not be, erased when the plan ends."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta

from storage.tables import HeldSecretRow, PlanRow, utcnow

from .changes import APPLYING, OPEN, Actor, ChangeError, Ledger
from .policy import Action, may
from .validate import sip_password
from .vault import VaultError

HOLD_FOR = timedelta(hours=1)  # a password waiting for its user to pick the plan is erased after this
MAX_CHOICES = 8  # plans a held password offers to go to


class Secrets:
    def __init__(self, ledger: Ledger):
        self.ledger = ledger
        self.db = ledger.db

    # ------------------------------------------------------------------ a plan's passwords

    async def add(self, actor: Actor, plan_id: str, login: str | None, password: str) -> tuple[str, bool]:
        """The SIP password of a login the plan creates (asked for in a private chat).
        A named login gets it, replacing an earlier one (the second element says so);
        None: the plan's next login still missing, in the plan's order. Two passwords
        at once never collide: each insert is its own check. Returns the login it went to."""
        row = await self.ledger.get(plan_id)
        if actor.id != row.proposer_id and not may(self.ledger.policy, actor.id, Action.CANCEL_ANY):
            raise ChangeError("not_allowed", action="secret")
        if row.status not in OPEN:
            raise ChangeError("plan_closed", plan=plan_id, status=row.status)
        if login is not None and login not in row.needs_secret:
            raise ChangeError("no_such_login", plan=plan_id, login=login)
        password = sip_password(password, also=ChangeError)  # refused with the rule, never echoed
        token = self.ledger.vault.seal(password)
        if login is not None:
            replaced = bool(await self.db.secrets.put(plan_id, login, token, replace=True))
            await self.ledger.audit(
                "secret_replaced" if replaced else "secret_received", actor, row, login=login
            )
            return login, replaced
        for candidate in await self.missing(row):
            if await self.db.secrets.put(plan_id, candidate, token, replace=False) is not None:
                await self.ledger.audit("secret_received", actor, row, login=candidate)
                return candidate, False
        raise ChangeError("secrets_complete", plan=plan_id)

    async def seal(self, row: PlanRow, secrets: Mapping[str, str]) -> None:
        """The passwords given with the proposal, for the logins the plan creates."""
        wanted = set(row.needs_secret)
        await self.db.secrets.put_all(
            row.id, self.ledger.vault.seal_all({k: v for k, v in secrets.items() if k in wanted})
        )

    async def opened(self, row: PlanRow) -> dict[str, str]:
        """The plan's passwords in clear, for the apply (never kept)."""
        return self.ledger.vault.open_all(await self.db.secrets.of(row.id))

    async def missing(self, row: PlanRow) -> list[str]:
        have = await self.db.secrets.of(row.id)
        return [login for login in row.needs_secret if login not in have]

    async def awaiting(self, user_id: int) -> list[tuple[PlanRow, list[str]]]:
        """Open plans of this proposer still waiting for SIP passwords, oldest first."""
        rows = await self.db.plans.find(status=OPEN, proposer=user_id, limit=500)
        waiting = [(r, await self.missing(r)) for r in reversed(rows) if r.needs_secret]
        return [(r, missing) for r, missing in waiting if missing]

    async def pasted(self, pbx: str, text: str) -> tuple[PlanRow, str] | None:
        """The plan of this PBX, and the login, whose sealed SIP password `text` is or holds
        as a word: a password pasted where it must not be. Open and applying plans only."""
        words = {text.strip(), *text.split()} - {""}
        for row in await self.db.plans.find(pbx=pbx, status=[*OPEN, APPLYING], limit=500):
            for login, token in (await self.db.secrets.of(row.id)).items():
                try:
                    if self.ledger.vault.matches(token, words):
                        return row, login
                except VaultError:
                    continue
        return None

    async def drop_exposed(self, row: PlanRow, login: str) -> bool:
        """Erase a password seen in a group from its open plan; False when there was none to erase."""
        return row.status in OPEN and await self.db.secrets.erase(row.id, login)

    # ------------------------------------------------------------------ where a password goes

    async def asked(self, user_id: int, plan_id: str, login: str | None, message_id: int) -> None:
        """The bot asked `user_id` in message `message_id` for `login`'s password (None: the plan's)."""
        await self.db.prompts.ask(user_id, plan_id, login, message_id)

    async def link(self, user_id: int, plan_id: str) -> None:
        """The user opened the plan's deep link: their next password goes there."""
        await self.db.prompts.set_link(user_id, plan_id)

    async def forget_prompts(self, plan_id: str) -> None:
        """The plan takes no password any more: its questions and link point nowhere."""
        await self.db.prompts.drop(plan_id)

    async def candidates(self, user_id: int, replied_to: int | None) -> list[tuple[str, str | None]]:
        """(plan, login) pairs a password from this user may be for; login None: the plan's
        next missing one. A reply to a question names it; else the plan whose deep link
        the user opened last, if it waits; else every login waiting."""
        if replied_to is not None:
            prompt = await self.db.prompts.asked(user_id, replied_to)
            if prompt is not None:
                return [(prompt.plan_id, prompt.login)]
        waiting = await self.awaiting(user_id)
        linked = await self.db.prompts.link(user_id)
        if linked is not None and any(row.id == linked for row, _ in waiting):
            return [(linked, None)]
        return [(row.id, login) for row, missing in waiting for login in missing]

    # ------------------------------------------------------------------ held while the user picks

    async def hold(
        self, user_id: int, password: str, candidates: list[tuple[str, str | None]]
    ) -> tuple[int, list[list[str]]]:
        """Keep the password sealed until the user picks one of the (first few) candidates;
        returns the hold's id and its choices ([plan, login or ""])."""
        await self.db.held.purge(utcnow() - HOLD_FOR)
        choices = [[plan_id, login or ""] for plan_id, login in candidates[:MAX_CHOICES]]
        return await self.db.held.hold(user_id, self.ledger.vault.seal(password), choices), choices

    async def hold_asked_in(self, hold_id: int, message_id: int) -> None:
        """The message that asks which plan the held password goes to."""
        await self.db.held.set_message(hold_id, message_id)

    async def take_held(self, hold_id: int, user_id: int, choice: int | None) -> HeldSecretRow | None:
        """The user's pick (None: "not a password"): the held password, removed; None when it
        is gone (picked already, purged, too old), not theirs, or the choice is none of its."""
        held = await self.db.held.get(hold_id)
        if held is None:
            return None
        fresh = held.at >= utcnow() - HOLD_FOR
        if choice is not None and not 0 <= choice < len(held.choices):
            return None
        taken = await self.db.held.take(hold_id, user_id)
        return taken if fresh else None

    def open(self, held: HeldSecretRow) -> str:
        return self.ledger.vault.open(held.token)
