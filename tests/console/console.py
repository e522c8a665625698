"""The operator's console in headless Chromium, as a person would use it (run by tests/console.rs).

Playwright for Python drives Debian's Chromium (/usr/bin/chromium, never a downloaded browser).
The Rust test has made the mess already (four dead letters on the queue CONSOLE_QUEUE: three
messages that failed every delivery and one that is no message; the dead job CONSOLE_JOB); this
script checks what anonymous visitors and non-admins see, signs in as the admin, works every
panel, saves a screenshot of each in CONSOLE_ARTIFACTS, and prints a JSON report on its last line.
Every expectation waits at most 15 s; the whole run is bounded by the Rust test.
"""

import json
import os
import re
import sys

from playwright.sync_api import expect

from browser import open_page

ENV = os.environ
BASE = ENV["CONSOLE_BASE"]
QUEUE = ENV["CONSOLE_QUEUE"]
JOB = ENV["CONSOLE_JOB"]
ARTIFACTS = ENV["CONSOLE_ARTIFACTS"]
ADMIN_PANELS = ["#panel-queues", "#panel-dead", "#panel-jobs", "#panel-nodes"]
ADMIN_DATA = ["#queues-table", "#dead-table", "#jobs-table", "#nodes-table", "#job-fields"]

report = {"panels": {}, "console_errors": []}


def on_console(message):
    """Keeps the page's errors, but not Chromium's note of each refusal the test asks for."""
    if message.type == "error" and not re.match(r"Failed to load resource: .* (401|403)", message.text):
        report["console_errors"].append(message.text)


def shoot(page, name, selector):
    """Saves a screenshot of a panel and keeps its text for the report."""
    panel = page.locator(selector)
    panel.screenshot(path=os.path.join(ARTIFACTS, name + ".png"))
    report["panels"][name] = panel.inner_text()


def no_admin_data(page):
    """Nothing of the console is shown, and nothing of its data is in the page."""
    expect(page.locator("#tabs")).to_be_hidden()
    for panel in ADMIN_PANELS:
        expect(page.locator(panel)).to_be_hidden()
    for data in ADMIN_DATA:
        assert page.locator(data).inner_text().strip() == "", data
    assert page.evaluate("sessionStorage.length") == 0


def sign_in(page, email, password):
    """Types an email and a password into the sign-in form and submits it with Enter."""
    if page.locator("#login").is_hidden():
        page.get_by_role("button", name="Admin sign-in").click()
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(password)
    page.get_by_label("Password").press("Enter")


def letter(page, text):
    """The dead-letter row whose text contains `text`."""
    return page.locator("#dead-table tbody tr[data-id]", has_text=text)


def confirm(page, action):
    dialog = page.locator("#confirm")
    expect(dialog).to_be_visible()
    dialog.get_by_role("button", name=action).click()
    expect(dialog).to_be_hidden()


def main():
    os.makedirs(ARTIFACTS, exist_ok=True)
    with open_page(report, on_console) as page:

        # Anonymous: the public stats, nothing else; the admin API refuses the page.
        page.goto(BASE + "/dashboard")
        expect(page.locator("#status")).to_contain_text("live")
        expect(page.locator("#node")).to_contain_text("web")
        no_admin_data(page)
        report["anonymous_admin_api"] = page.evaluate("fetch('/api/v1/admin/queues').then(r => r.status)")
        page.screenshot(path=os.path.join(ARTIFACTS, "public.png"))

        # A user who is not an admin: refused, signed out again, nothing shown.
        sign_in(page, ENV["CONSOLE_USER_EMAIL"], ENV["CONSOLE_USER_PASSWORD"])
        expect(page.locator("#login-message")).to_contain_text("not an admin")
        no_admin_data(page)

        # The admin.
        sign_in(page, ENV["CONSOLE_ADMIN_EMAIL"], ENV["CONSOLE_ADMIN_PASSWORD"])
        expect(page.locator("#tabs")).to_be_visible()
        expect(page.get_by_role("tab", name="Queues")).to_have_attribute("aria-selected", "true")
        expect(page.locator("#login-secret")).to_have_value("")
        # A reload keeps the session (this tab's session storage), never in the URL.
        page.reload()
        expect(page.locator("#panel-queues")).to_be_visible()
        assert "token" not in page.url

        # Queues, live: the queue with its four dead letters.
        row = page.locator("#queues-table tbody tr", has=page.locator("th", has_text=re.compile("^" + re.escape(QUEUE) + "$")))
        cells = row.locator("td")
        expect(cells.nth(3)).to_have_text("4")
        expect(page.locator("#queues-table")).to_contain_text("in flight")
        shoot(page, "queues", "#panel-queues")

        # Dead letters: listed with their reasons.
        row.get_by_role("button", name="Dead letters of " + QUEUE).click()
        expect(page.get_by_role("tab", name="Dead letters")).to_have_attribute("aria-selected", "true")
        expect(page.locator("#dead-total")).to_have_text("4 dead letter(s) in " + QUEUE)
        rows = page.locator("#dead-table tbody tr[data-id]")
        expect(rows).to_have_count(4)
        expect(letter(page, '"n":1')).to_contain_text("failed 3 times")
        expect(letter(page, "not a message")).to_contain_text("not a Gorgon envelope")
        letter(page, '"n":1').get_by_role("button", name="Details").click()
        expect(page.locator("#dead-table pre")).to_contain_text('"attempts": 3')
        shoot(page, "dead-letters", "#panel-dead")

        # Replay one; delete one (confirmed).
        letter(page, '"n":1').get_by_role("button", name="Replay").click()
        expect(page.locator("#dead-message")).to_contain_text("Replayed chore")
        expect(rows).to_have_count(3)
        letter(page, '"n":2').get_by_role("button", name="Delete").click()
        confirm(page, "Delete")
        expect(page.locator("#dead-message")).to_contain_text("Deleted one dead letter")
        expect(rows).to_have_count(2)

        # Replay all (confirmed): the message goes, the garbage stays.
        page.get_by_role("button", name="Replay all").click()
        confirm(page, "Replay all")
        expect(page.locator("#dead-message")).to_contain_text(
            "Replayed 1 message(s) onto " + QUEUE + "; 1 dead letter(s) hold no message")
        expect(rows).to_have_count(1)

        # Purge: only once the queue's name is typed; Escape cancels.
        page.get_by_role("button", name="Purge all…").click()
        expect(page.locator("#confirm-ok")).to_be_disabled()
        page.keyboard.press("Escape")
        expect(page.locator("#confirm")).to_be_hidden()
        expect(rows).to_have_count(1)
        page.get_by_role("button", name="Purge all…").click()
        page.locator("#confirm-input").fill(QUEUE[:-1])
        expect(page.locator("#confirm-ok")).to_be_disabled()
        page.locator("#confirm-input").fill(QUEUE)
        expect(page.locator("#confirm-ok")).to_be_enabled()
        page.locator("#confirm-input").press("Tab")
        page.keyboard.press("Tab")
        expect(page.locator("#confirm-ok")).to_be_focused()
        page.keyboard.press("Enter")
        expect(page.locator("#dead-message")).to_contain_text("Purged 1 dead letter(s) of " + QUEUE)
        expect(page.locator("#dead-table")).to_contain_text("No dead letters in " + QUEUE)

        # The queue drained.
        page.get_by_role("tab", name="Queues").click()
        for column in range(4):
            expect(cells.nth(column)).to_have_text("0")
        shoot(page, "queues-drained", "#panel-queues")

        # Jobs: the dead one, its payload and last error; retried, it ends done.
        page.get_by_role("tab", name="Jobs").click()
        page.get_by_label("State").select_option("dead")
        job_row = page.locator("#jobs-table tbody tr", has_text=JOB)
        expect(job_row).to_contain_text("flaky on purpose")
        job_row.get_by_role("button", name="Open job " + JOB).click()
        expect(page.locator("#job-state-value")).to_have_text("dead")
        expect(page.locator("#job-payload")).to_contain_text('"step": "console"')
        expect(page.locator("#job-error")).to_contain_text("flaky on purpose")
        page.get_by_role("button", name="Retry").click()
        expect(page.locator("#jobs-message")).to_contain_text("queued again")
        expect(page.locator("#job-state-value")).to_have_text("done", timeout=20_000)
        expect(page.locator("#job-result")).to_contain_text('"ok": true')
        expect(page.get_by_role("button", name="Retry")).to_be_disabled()
        shoot(page, "jobs", "#panel-jobs")

        # Nodes, reached with the keyboard (arrow keys move between the tabs).
        page.get_by_role("tab", name="Jobs").focus()
        page.keyboard.press("ArrowRight")
        expect(page.get_by_role("tab", name="Nodes")).to_be_focused()
        expect(page.locator("#nodes-table")).to_contain_text("(here)")
        expect(page.locator("#nodes-table")).to_contain_text("store")
        shoot(page, "nodes", "#panel-nodes")

        # Signing out forgets the session and everything shown.
        page.get_by_role("button", name="Sign out").click()
        no_admin_data(page)
        expect(page.locator("#overview")).to_be_visible()

        # An admin token pasted instead of a password works too; signing out forgets it without
        # ending it (it is someone's session elsewhere).
        token = page.evaluate(
            """([email, password]) => fetch('/api/v1/auth/login', {method: 'POST',
                 headers: {'Content-Type': 'application/json'}, body: JSON.stringify({email, password})})
               .then(r => r.json()).then(b => b.token)""",
            [ENV["CONSOLE_ADMIN_EMAIL"], ENV["CONSOLE_ADMIN_PASSWORD"]])
        expect(page.locator("#login")).to_be_hidden()
        page.get_by_role("button", name="Admin sign-in").click()
        page.get_by_label("or an admin token").fill(token)
        page.get_by_role("button", name="Use token").click()
        expect(page.locator("#panel-queues")).to_be_visible()
        expect(page.locator("#login-token-value")).to_have_value("")
        page.get_by_role("button", name="Sign out").click()
        no_admin_data(page)
        still = page.evaluate(
            "t => fetch('/api/v1/admin/queues', {headers: {Authorization: 'Bearer ' + t}}).then(r => r.status)", token)
        assert still == 200, still
    print(json.dumps(report))


if __name__ == "__main__":
    try:
        main()
    except Exception as error:  # the report still says what the page showed so far
        print(json.dumps(report), file=sys.stderr)
        raise
