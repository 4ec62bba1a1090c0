"""The cast of every scenario: the people who run an office PBX through the bot.

Anna administers; Boris approves (Gleb too, where two approvers are needed);
Olga is the operator who proposes the changes; Viktor only looks; Mallory is
nobody the policy knows. Their ids are their Telegram user ids; `actor` makes
one of them a caller of `Changes`, `policy` the roles a configuration gives
them, `meet` adds them to the Telegram sandbox.
"""

from __future__ import annotations

from dataclasses import dataclass

from bot.plans.changes import Actor

ANNA, BORIS, OLGA, VIKTOR, GLEB, STRANGER = 1, 2, 3, 4, 5, 99


@dataclass(frozen=True)
class Persona:
    id: int
    name: str
    role: str  # admin | approver | operator | viewer | nobody
    username: str | None = None
    language: str = "en"  # their Telegram's language


CAST = {
    p.id: p
    for p in (
        Persona(ANNA, "Anna", "admin", "anna", "ru"),
        Persona(BORIS, "Boris", "approver", "boris", "en"),
        Persona(OLGA, "Olga", "operator", "olga", "ru"),
        Persona(VIKTOR, "Viktor", "viewer"),
        Persona(GLEB, "Gleb", "approver", "gleb"),
        Persona(STRANGER, "Mallory", "nobody"),
    )
}

# Anna and Boris administer the Telegram group itself (they may delete its messages).
GROUP_ADMINS = [ANNA, BORIS]


def actor(person: int) -> Actor:
    """The person as `Changes` sees a caller: id and display name."""
    p = CAST[person]
    return Actor(p.id, p.username or p.name.lower())


def policy(*people: int) -> dict[str, list[int]]:
    """The [policy] roles of these people (`PolicySettings` fields), nobody left out."""
    roles: dict[str, list[int]] = {"admins": [], "approvers": [], "operators": [], "viewers": []}
    for person in people:
        role = CAST[person].role
        if role != "nobody":
            roles[role + "s"].append(person)
    return roles


def meet(tg, *people: int, profiles: bool = True) -> None:
    """The people start using Telegram: with their username and language when
    `profiles`, else by first name alone (the sandbox's default language, ru)."""
    for person in people:
        p = CAST[person]
        if profiles:
            tg.add_user(p.id, p.name, username=p.username, language_code=p.language)
        else:
            tg.add_user(p.id, p.name)
