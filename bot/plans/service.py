"""`Changes`: the one door to a change's life for the Telegram handlers, the CLI
and the scheduler. Behind it, each in its own module: the lifecycle (propose,
approve, apply, cancel, expire, undo), the secrets (SIP passwords bound, asked
for, held, found pasted), the lease and the recovery. The door only hands calls
through; the handlers call it and render what it returns."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from bot.config import PolicySettings
from storage.repos import Repos
from storage.tables import utcnow

from .changes import Actor, Ledger, PbxHandle
from .lease import LEASE, Lease
from .lifecycle import Lifecycle
from .recovery import Reconciler
from .secrets import Secrets
from .vault import Vault


class Changes:
    def __init__(
        self,
        store: Repos,
        policy: PolicySettings,
        vault: Vault,
        pbxs: Mapping[str, PbxHandle],
        *,
        clock: Any = utcnow,
        default_extension: str = "busy",
        recipe_when: str = "always",
        lease: timedelta = LEASE,
        phone_dids: Mapping[str, str] | None = None,
    ):
        self.ledger = ledger = Ledger(store, policy, vault, pbxs, clock=clock)
        self.leases = Lease(ledger, lease)
        self.secrets = Secrets(ledger)
        self.lifecycle = Lifecycle(
            ledger,
            self.secrets,
            self.leases,
            default_extension=default_extension,
            recipe_when=recipe_when,
            phone_dids=phone_dids,
        )
        self.recovery = Reconciler(ledger, self.lifecycle, self.leases)
        # what the ledger holds, as its callers have always reached it
        self.store, self.db, self.policy = ledger.store, ledger.db, ledger.policy
        self.vault, self.pbxs, self.clock = ledger.vault, ledger.pbxs, clock
        self.lease, self.owner = lease, self.leases.owner
        self.plan_of, self.tally_of = ledger.plan_of, ledger.tally_of
        # the lifecycle
        life = self.lifecycle
        self.plan, self.propose, self.undo = life.plan, life.propose, life.undo
        self.write_audit = life.write_audit
        self.read_ahead = life.read_ahead
        self.approve, self.reject, self.cancel = life.approve, life.reject, life.cancel
        self.apply, self.expire, self.release = life.apply, life.expire, life.release
        self.next_step = life.next_step
        self.row, self.open_plans, self.history = life.row, life.open_plans, life.history
        self.card_posted, self.card_facts = life.card_posted, life.card_facts
        # the secrets
        self.add_secret, self.missing_secrets = self.secrets.add, self.secrets.missing
        self.awaiting_secret, self.pasted_secret = self.secrets.awaiting, self.secrets.pasted
        # recovery
        self.recover = self.recovery.recover
        self.cards_to_refresh = self.recovery.cards_to_refresh
        self.card_refreshed = self.recovery.card_refreshed

    async def record(self, event: str, actor: Actor | None = None, **detail: Any) -> None:
        """An audit event of the chat layer (a refused user, a forged button, a password
        deleted...); `plan_id` and `pbx` in `detail` go to their columns. Never a secret."""
        await self.ledger.audit(event, actor, None, **detail)
