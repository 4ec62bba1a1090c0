"""What a command looks like: the usage line and an example per command, shown
under a `bot.errors.UsageError` (raised by the grammar and the input rules alike)."""

from __future__ import annotations

USAGE = {
    "addnumber": "/addnumber <provider> <login> [<phone>] → <destination>",
    "route": "/route <login|phone> → <destination>",
    "removenumber": "/removenumber <login|phone>",
    "password": "/password <login|phone>",
    "numbers": "/numbers [<login|phone>]",
    "trace": "/trace <login|phone>",
    "undo": "/undo <plan>",
}
EXAMPLES = {
    "addnumber": "/addnumber zadarma 847900 +7 495 229-30-42 → IVR",
    "route": "/route 847900 → Sales",
    "removenumber": "/removenumber 847900",
    "password": "/password 847900",
    "numbers": "/numbers +7 495 229-30-42",
    "trace": "/trace 847900",
    "undo": "/undo 7f3a2c",
}
