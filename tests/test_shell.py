"""`./dev try` is `pbxbot shell`: driven here by a script on stdin, as a user would type it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = """/addnumber zadarma 847900 → IVR
:chat private
Secret-pw-1
:as boris
:chat group
:press 1
:call 847900
:quit
"""


def run_shell(lang: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "bot.entry.cli", "shell", "--lang", lang],
        input=SCRIPT,
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )


def test_the_shell_walks_the_manual_case_in_english():
    done = run_shell("en")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "Send me the SIP password of 847900" in out
    assert "Status: applied" in out and "847900: registered" in out
    assert "→ Main menu (2000)" in out  # the call to 847900 reaches the IVR
    assert (
        "Secret-pw-1" not in out.split(":chat private", 1)[1].split("Secret-pw-1", 1)[1]
    )  # echoed once, never by the bot
    assert "Traceback" not in done.stderr
    assert "WARNING" not in done.stderr  # no policy trap of its own demo: /removenumber can be approved


def test_the_shell_speaks_russian():
    done = run_shell("ru")
    assert done.returncode == 0, done.stderr
    assert "Состояние: применён" in done.stdout and "Пароль для 847900 получен" in done.stdout


DRIFT_SCRIPT = """:edit route 847706 → 2000
:refresh
:press 1
:as boris
:press 1
:call 847706
:quit
"""


def test_a_hand_edit_of_the_pbx_is_reported_and_put_back():
    done = subprocess.run(
        [sys.executable, "-m", "bot.entry.cli", "shell", "--lang", "en"],
        input=DRIFT_SCRIPT,
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "(refresh: 1 change made outside the bot)" in out
    assert "847706: Sales → Main menu" in out and "[1] ↩️ Put back" in out
    assert "put back · 1 step" in out and "Status: applied" in out
    assert "→ Sales (2200)" in out.rsplit(":call 847706", 1)[1]  # calls end where they did before
    assert "Traceback" not in done.stderr
