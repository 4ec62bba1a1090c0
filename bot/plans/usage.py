"""What a command looks like, and the error that shows it: `UsageError`, raised
by the grammar (commands) and the input rules (validate) alike."""

from __future__ import annotations

USAGE = {
    "addnumber": "/addnumber <provider> <login> [<phone>] → <destination>",
    "route": "/route <login|phone> → <destination>",
    "removenumber": "/removenumber <login|phone>",
    "numbers": "/numbers",
    "undo": "/undo <plan>",
}
EXAMPLES = {
    "addnumber": "/addnumber zadarma 847900 +7 495 229-30-42 → IVR",
    "route": "/route 847900 → Sales",
    "removenumber": "/removenumber 847900",
    "numbers": "/numbers",
    "undo": "/undo 7f3a2c",
}


class UsageError(ValueError):
    """The text is not a valid command. `code` names the problem for the message
    catalogues; `params` fill it in; `command` picks the usage line shown."""

    def __init__(self, code: str, command: str | None = None, **params: str):
        self.code = code
        self.command = command
        self.params = params
        usage = f" Usage: {USAGE[command]}" if command in USAGE else ""
        detail = ", ".join(f"{k}={v!r}" for k, v in params.items())
        super().__init__(f"{code}{' (' + detail + ')' if detail else ''}.{usage}")

    @property
    def usage(self) -> str | None:
        return USAGE.get(self.command or "")

    @property
    def example(self) -> str | None:
        return EXAMPLES.get(self.command or "")
