"""`--json` of numbers, doctor, trace, digest and plan (the fields of docs/json.md,
the exit statuses kept, no secret in the output), and `pbxbot map --out`."""

from __future__ import annotations

import json
import re
from pathlib import Path

from bot.entry.cli import main
from sandbox.demo import DEMO_PROVIDER_ID
from tests.conftest import API_KEY
from tests.test_cli_plan import served_pbx as served_pbx
from tests.test_routemap import broken, png_size

DOCS = (Path(__file__).resolve().parents[1] / "docs" / "json.md").read_text(encoding="utf-8")
FINDING = {"code", "severity", "subject", "title", "why", "params", "fix"}


def run(capsys, *argv: str) -> tuple[int, dict]:
    code = main(["--lang", "en", *argv, "--json"])
    out = capsys.readouterr().out
    return code, json.loads(out)


def documented(*fields: str) -> None:
    """Every field a test relies on is named in docs/json.md."""
    for name in fields:
        assert f"`{name}`" in DOCS, name


def config_for(sim, tmp_path) -> str:
    config = tmp_path / "config.toml"
    config.write_text(
        f'[storage]\ndata_dir = "{tmp_path / "data"}"\n'
        f'[pbx.office]\nurl = "{sim.url}"\napi_key = "{API_KEY}"\nreload_wait = 0\n',
        encoding="utf-8",
    )
    return str(config)


def test_numbers_trace_digest_doctor_and_plan_on_the_demo_pbx(capsys):
    code, data = run(capsys, "numbers", "--sandbox")
    assert code == 0 and data["schema"] == 1 and data["pbx"] == "sandbox"
    (account,) = data["accounts"]
    account_fields = {"id", "login", "host", "port", "description", "note", "disabled"}
    account_fields |= {"registration_type", "state", "state_minutes", "routes"}
    assert set(account) == account_fields
    assert (account["id"], account["login"], account["state"]) == (DEMO_PROVIDER_ID, "847706", "registered")
    (route,) = account["routes"]
    assert set(route) == {"id", "name", "did", "provider", "priority", "destination", "destination_name"}
    assert route["destination_name"] == "Sales" and data["any_provider_routes"] == []
    assert set(data["default_route"]) == {"destination", "destination_name"}
    documented(*account_fields, *route, "any_provider_routes", "default_route")

    code, data = run(capsys, "trace", "--sandbox", "847706")
    trace_fields = {"schema", "pbx", "number", "outcome", "account", "endpoint", "collision", "context"}
    trace_fields |= {"route", "destination", "destination_name", "steps"}
    assert code == 0 and set(data) == trace_fields
    assert (data["outcome"], data["destination"], data["route"]["id"]) == ("dial", "2200", 2)
    assert data["endpoint"]["id"] == DEMO_PROVIDER_ID and data["steps"][0].startswith("1. 847706")
    documented(*trace_fields)
    code, data = run(capsys, "trace", "--sandbox", "999")
    assert code == 1 and data["outcome"] == "no_account" and data["account"] is None

    code, data = run(capsys, "digest", "--sandbox")
    digest_fields = {"schema", "pbx", "since", "until", "reachable", "error", "calls_total"}
    digest_fields |= {"numbers", "changes", "findings", "drift", "waiting"}
    assert code == 0 and set(data) == digest_fields
    (number,) = data["numbers"]
    assert number["login"] == "847706" and number["destination"] == "Sales" and number["ok"] is True
    documented(*digest_fields, *number)

    code, data = run(capsys, "doctor", "--sandbox")
    assert code == 0 and data["worst"] is None and data["counts"] == {"E": 0, "W": 0, "I": 0}
    assert data["findings"] == []

    code, data = run(capsys, "plan", "--sandbox", "/addnumber zadarma 847900 → IVR")
    plan_fields = {"schema", "pbx", "kind", "host", "empty", "notes", "needs_secret", "steps", "id", "status"}
    assert code == 0 and set(data) == plan_fields
    assert (data["kind"], data["status"], data["id"], data["needs_secret"]) == (
        "add",
        "draft",
        None,
        ["847900"],
    )
    kinds = [s["kind"] for s in data["steps"]]
    assert kinds[0] == "create_provider" and "create_route" in kinds
    step_fields = {"kind", "target", "login", "reason", "text", "before", "after"}
    assert all(set(s) == step_fields for s in data["steps"])
    documented(*plan_fields, *step_fields)


def test_doctor_json_keeps_exit_1_on_an_error_and_no_secret_leaks(served_pbx, tmp_path, capsys):
    broken(served_pbx.state)
    config = config_for(served_pbx, tmp_path)
    code, data = run(capsys, "--config", config, "doctor", "--pbx", "office")
    assert code == 1 and data["worst"] == "E" and data["counts"]["E"] == 2
    assert all(set(f) == FINDING for f in data["findings"])
    first = data["findings"][0]
    assert first["severity"] == "E" and first["fix"] == {"kind": "fix_host", "host": "sip.zadarma.com"}
    documented(*FINDING, "worst", "counts")

    outputs = [json.dumps(data)]
    for argv in (("numbers",), ("trace", "847708"), ("digest",)):
        code, data = run(capsys, "--config", config, argv[0], "--pbx", "office", *argv[1:])
        outputs.append(json.dumps(data, ensure_ascii=False))
    password = tmp_path / "pw"
    password.write_text("Very-Secret-1\n", encoding="utf-8")
    argv = ["--config", config, "plan", "--pbx", "office", "/addnumber zadarma 847990 → IVR"]
    code, data = run(capsys, *argv, "--apply", "--password-file", str(password))
    assert code == 0 and data["status"] == "applied" and re.fullmatch(r"\w{6}", data["id"])
    assert data["outcome"]
    outputs.append(json.dumps(data, ensure_ascii=False))
    secrets = ["Very-Secret-1", API_KEY, "demo-847706-secret", "XXXXXXXX"]
    secrets += [p["secret"] for p in served_pbx.state.providers.values()]
    for out in outputs:
        assert '"secret"' not in out
        for secret in secrets:
            assert secret not in out


def test_map_writes_png_or_svg(tmp_path, capsys):
    png, svg = tmp_path / "map.png", tmp_path / "map.svg"
    assert main(["--lang", "en", "map", "--sandbox", "--out", str(png)]) == 0
    assert "Routing map of sandbox written to" in capsys.readouterr().out
    assert png_size(png.read_bytes())[0] == 1280
    assert main(["--lang", "ru", "map", "--sandbox", "--out", str(svg)]) == 0
    assert b"<svg" in svg.read_bytes()[:400]
    assert main(["--lang", "en", "map", "--sandbox", "--out", str(tmp_path / "map.jpg")]) == 2
    assert ".png or .svg" in capsys.readouterr().err


def test_map_of_a_configured_pbx(served_pbx, tmp_path, capsys):
    broken(served_pbx.state)
    out = tmp_path / "office.png"
    assert (
        main(["--config", config_for(served_pbx, tmp_path), "map", "--pbx", "office", "--out", str(out)]) == 0
    )
    printed = capsys.readouterr().out
    assert "20 numbers" in printed and "[E]" in printed
    assert png_size(out.read_bytes())[1] <= 1280
