"""The core's errors, one tree (as httpx's `_exceptions.py`).

Every refusal the core raises for a person to read is a `BotError`: a `code`
naming what is wrong and `params` filling in the sentence. The sentence itself
lives in the message catalogues (bot/text/i18n/, Russian and English) under
`<catalogue>.<code>`, the catalogue chosen by the kind; the core never words it.

    BotError                     code, params            key
    ├── UsageError               + command               usage.<code>       the text is not a valid command
    │   └── InputError           + line (a CSV row)      usage.<code>       a value breaks an input rule
    ├── DigestUsage                                      digest.<code>      a /digest that does not parse
    ├── PlanError                                        plan_error.<code>  a conflict found before any write
    ├── ChangeError                                      change.<code>      a refused or impossible request
    ├── VaultError                                       cli.<code>         the secret key cannot be used
    └── ConfigError              + problems              cli.config_problem, one per problem

How one reaches a person: `bot.text.render.error_text(exc, lang, html=...)`
is the one function that words any of them (and a PBX's error, below); each
parameter is escaped by `tr`, so a value never becomes markup. In the chat,
handlers do not catch them: handlers/errors.py (aiogram's `dp.errors`) answers
the update once with that sentence, as a pop-up for a button. The command line
prints the same sentence.

Kept apart, on purpose:
- `pbx.errors.PbxError` and its kinds: a lower layer (pbx/ imports nothing of
  ours); worded by `render.pbx_error_text`, answered by the same error handler.
- `storage.db.StorageError`: below bot/ as well; same (code, params) shape,
  worded from `cli.<code>` by the command line.
- Internal ones that never leave their module: `DestinationError`
  (destinations -> the planner turns it into a PlanError), `ApplyError` and
  `StepFailed` (the executor -> a ChangeError or a plan outcome's `error`).

`expected(exc)` tells a refusal a person is told about (this tree, or the
PBX's) from a bug (anything else).
"""

from __future__ import annotations

from typing import Any, ClassVar

from pbx.errors import PbxError

from .plans.usage import EXAMPLES, USAGE


class BotError(Exception):
    """A refusal a person reads. `code` names it, `params` fill in its sentence
    (catalogue key `key`); `str()` is the log's wording, not the user's."""

    catalogue: ClassVar[str] = "error"

    def __init__(self, code: str, /, **params: Any):
        self.code = code
        self.params = params
        super().__init__(self.describe())

    @property
    def key(self) -> str:
        """The message catalogue key of this error's sentence."""
        return f"{self.catalogue}.{self.code}"

    def describe(self) -> str:
        return f"{self.code}: {self.params}"


class UsageError(BotError):
    """The text is not a valid command (the grammar, bot/plans/commands.py).
    `command` picks the usage line shown under the sentence."""

    catalogue = "usage"

    def __init__(self, code: str, command: str | None = None, /, **params: str):
        self.command = command
        super().__init__(code, **params)

    def describe(self) -> str:
        usage = f" Usage: {USAGE[self.command]}" if self.command in USAGE else ""
        detail = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{self.code}{' (' + detail + ')' if detail else ''}.{usage}"

    @property
    def usage(self) -> str | None:
        return USAGE.get(self.command or "")

    @property
    def example(self) -> str | None:
        return EXAMPLES.get(self.command or "")


class InputError(UsageError):
    """A value breaks one of the input rules (bot/plans/validate.py); `code` names
    the rule. `line` is set for a CSV row: the refusal names it."""

    line: str | None = None


class DigestUsage(BotError):
    """A /digest whose arguments do not parse (bot/routing/digest.py); "usage" when nothing fits."""

    catalogue = "digest"


class PlanError(BotError):
    """A conflict found before anything is written (the planner)."""

    catalogue = "plan_error"


class ChangeError(BotError):
    """A refused or impossible request (`Changes`: policy, a closed plan, a lock...)."""

    catalogue = "change"


class VaultError(BotError):
    """The secret key cannot be used (bot/plans/vault.py)."""

    catalogue = "cli"
    _TEXT: ClassVar[dict[str, str]] = {  # the log's wording; people read `cli.<code>`
        "vault_bad_key": "{where}: not a Fernet key (32 url-safe base64-encoded bytes)",
        "vault_unreadable": "cannot read or create the secret key file {path}: {error}",
        "vault_wrong_key": "a stored secret does not open with this key",
    }

    def describe(self) -> str:
        return self._TEXT[self.code].format(**self.params)


class ConfigError(BotError):
    """The configuration cannot be used (bot/config.py); `problems` holds one line
    per problem, each shown as `cli.config_problem`."""

    catalogue = "cli"

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("config_problem", problem="\n".join(problems))

    def describe(self) -> str:
        return "\n".join(self.problems)


def expected(exc: BaseException) -> bool:
    """A refusal a person is told about (this tree, or the PBX's), not a bug."""
    return isinstance(exc, BotError | PbxError)
