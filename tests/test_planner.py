"""Plans for /addnumber on the demo PBX, read over HTTP from the simulator."""

from __future__ import annotations

import pytest

from bot.plans.commands import parse
from bot.plans.planner import PlanError, new_ref, plan_add_number
from bot.plans.snapshot import read_snapshot
from bot.routing.rules import has_recipe, merge_recipe
from pbx.models import Provider, Route
from sandbox.demo import DEMO_IVR_EXTENSION, DEMO_PROVIDER_ID, DEMO_QUEUE_EXTENSION

RECIPE = "[endpoint]\ncontext=public-direct-dial"


async def plan_for(client, sim, text: str):
    intent = parse(text)
    sim.stats.clear()
    snapshot = await read_snapshot(client, host=intent.provider.host)
    assert sim.writes() == 0
    return plan_add_number(intent, snapshot), sim.reads()


def kinds(plan) -> list[str]:
    return [s.kind.value for s in plan.steps]


async def test_the_manual_case_applies_the_recipe_to_both_logins(sim, client):
    plan, reads = await plan_for(client, sim, "/addnumber zadarma 847900 → IVR")
    assert reads == 3 + 1  # lists + the one account on sip.zadarma.com
    assert kinds(plan) == ["create_provider", "update_provider", "update_route", "create_route"]
    new, sibling, migrated, route = plan.steps
    assert new.after["username"] == "847900" and new.after["host"] == "sip.zadarma.com"
    assert new.after["manualattributes"] == RECIPE and "secret" not in new.after
    assert sibling.target == DEMO_PROVIDER_ID and sibling.after["manualattributes"] == RECIPE
    assert sibling.before["manualattributes"] == ""
    # the provider-bound catch-all of 847706 becomes "any provider", DID = its login
    assert migrated.target == "2" and migrated.before["providerid"] == DEMO_PROVIDER_ID
    assert (migrated.after["providerid"], migrated.after["number"]) == (None, "847706")
    assert migrated.after["extension"] == DEMO_QUEUE_EXTENSION
    assert (route.after["providerid"], route.after["number"], route.after["extension"]) == (
        None,
        "847900",
        DEMO_IVR_EXTENSION,
    )
    assert plan.notes == ["recipe_applied"]


async def test_a_lone_login_gets_an_account_and_a_bound_route(sim, client):
    plan, reads = await plan_for(client, sim, "/addnumber novofon 0053248 → Sales")
    assert reads == 3
    assert kinds(plan) == ["create_provider", "create_route"]
    assert plan.steps[0].after["manualattributes"] == ""
    assert plan.steps[1].after["providerid"] == new_ref("0053248")
    assert plan.steps[1].after["number"] == ""


async def test_a_third_login_leaves_finished_accounts_alone(sim, client):
    second = await client.create_provider(
        Provider(
            description="Zadarma 847900", username="847900", host="sip.zadarma.com", manualattributes=RECIPE
        ),
        secret="pw",
    )
    first = await client.get_provider(DEMO_PROVIDER_ID)
    first.manualattributes = RECIPE
    await client.update_provider(first)
    await client.patch_route(2, {"number": "847706"}, providerid=None)
    await client.create_route(Route(rulename="847900", number="847900", extension=DEMO_IVR_EXTENSION))

    plan, reads = await plan_for(client, sim, "/addnumber zadarma 847901 → 201")
    assert reads == 3 + 2
    assert kinds(plan) == ["create_provider", "create_route"]
    assert plan.steps[1].after["number"] == "847901" and plan.steps[1].after["extension"] == "201"
    assert second.id  # untouched


async def test_existing_manual_attributes_are_merged_not_replaced(sim, client):
    first = await client.get_provider(DEMO_PROVIDER_ID)
    first.manualattributes = "[endpoint]\ncontext=old-context\nset_var=A=1\n\n[aor]\nqualify_frequency=30"
    await client.update_provider(first)
    plan, _ = await plan_for(client, sim, "/addnumber zadarma 847900 → IVR")
    assert plan.steps[1].after["manualattributes"] == (
        "[endpoint]\ncontext=public-direct-dial\nset_var=A=1\n\n[aor]\nqualify_frequency=30"
    )


@pytest.mark.parametrize(
    ("before", "after"),
    [
        ("", RECIPE),
        ("[aor]\nmax_contacts=1", "[aor]\nmax_contacts=1\n\n" + RECIPE),
        ("[endpoint]\nset_var=X=1", "[endpoint]\nset_var=X=1\ncontext=public-direct-dial"),
        ("[endpoint]\ncontext = a\n[identify]\nmatch=1.2.3.4", RECIPE + "\n[identify]\nmatch=1.2.3.4"),
        (RECIPE, RECIPE),
    ],
)  # fmt: skip
def test_merge_recipe(before, after):
    assert merge_recipe(before) == after
    assert has_recipe(after)


async def test_conflicts_are_errors_before_anything_is_written(sim, client):
    with pytest.raises(PlanError) as err:
        await plan_for(client, sim, "/addnumber zadarma 847706 → IVR")
    assert err.value.code == "login_exists" and err.value.params["provider_id"] == DEMO_PROVIDER_ID

    await client.create_route(Route(rulename="x", number="847900", extension="203"))
    with pytest.raises(PlanError) as err:
        await plan_for(client, sim, "/addnumber zadarma 847900 → IVR")
    assert err.value.code == "did_taken"

    with pytest.raises(PlanError) as err:
        await plan_for(client, sim, "/addnumber zadarma 847901 → Support")
    assert err.value.code == "no_destination"
    assert ("Main menu", DEMO_IVR_EXTENSION) in err.value.params["candidates"]
    assert sim.writes() == 0


async def test_a_login_without_any_route_keeps_reaching_the_default_route(sim, client):
    await client.delete_route(2)
    plan, _ = await plan_for(client, sim, "/addnumber zadarma 847900 → IVR")
    assert kinds(plan) == ["create_provider", "update_provider", "create_route", "create_route"]
    kept = plan.steps[2].after
    assert (kept["number"], kept["extension"], kept["providerid"]) == ("847706", "busy", None)
    assert "login_without_route" in plan.notes


async def test_fingerprint_changes_when_a_record_the_plan_read_changes(sim, client):
    before, _ = await plan_for(client, sim, "/addnumber zadarma 847900 → IVR")
    again, _ = await plan_for(client, sim, "/addnumber zadarma 847900 → IVR")
    assert before.fingerprint == again.fingerprint
    await client.patch_provider(DEMO_PROVIDER_ID, {"note": "touched"})
    changed, _ = await plan_for(client, sim, "/addnumber zadarma 847900 → IVR")
    assert changed.fingerprint != before.fingerprint


async def shared_context_host(client) -> Provider:
    """A second Zadarma login on the demo's host:port with a route of its own (to the
    IVR): MikoPBX's shared host:port context routes 847706 and 847800 right already."""
    second = await client.create_provider(
        Provider(description="Zadarma 847800", username="847800", host="sip.zadarma.com"), secret="pw"
    )
    await client.create_route(Route(rulename="847800", providerid=second.id, extension=DEMO_IVR_EXTENSION))
    return second


async def test_a_host_on_the_shared_context_is_named_and_still_gets_the_recipe(sim, client):
    await shared_context_host(client)
    plan, _ = await plan_for(client, sim, "/addnumber zadarma 847900 → 201")
    assert plan.notes[0] == "shared_context_recipe" and "recipe_applied" in plan.notes
    assert kinds(plan).count("update_provider") == 2  # both accounts still get the recipe


async def test_recipe_when_needed_adds_only_the_new_account_on_a_shared_context(sim, client):
    await shared_context_host(client)
    intent = parse("/addnumber zadarma 847900 → 201")
    snapshot = await read_snapshot(client, host=intent.provider.host)
    plan = plan_add_number(intent, snapshot, recipe_when="needed")
    assert plan.notes == ["shared_context_kept"]
    assert kinds(plan) == ["create_provider", "create_route"]
    new, route = plan.steps
    assert new.after["manualattributes"] == "" and new.after["host"] == "sip.zadarma.com"
    assert (route.after["providerid"], route.after["number"]) == (new_ref("847900"), "")


async def test_recipe_when_needed_still_applies_it_where_the_shared_context_does_not_route(sim, client):
    second = await shared_context_host(client)
    second.port = 5070  # another port: a context of its own, 847800 no longer shares 847706's
    await client.update_provider(second)
    intent = parse("/addnumber zadarma 847900 → 201")
    snapshot = await read_snapshot(client, host=intent.provider.host)
    plan = plan_add_number(intent, snapshot, recipe_when="needed")
    assert "shared_context_kept" not in plan.notes and "recipe_applied" in plan.notes
