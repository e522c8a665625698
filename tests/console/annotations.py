"""The dashboard's annotations in headless Chromium (run by tests/console.rs).

The Rust test has put annotations through the admin API, as `gorgon chaos` does: a fault that
healed, one still going on, an instant, and one long before the charts' window. This script opens
/dashboard without signing in, checks that the legend under the heatmap lists the marks of the
window (and only those) with their times, that the heatmap and the throughput chart are tinted
where each mark is and not beside it, heals the open fault through the API and sees its mark end,
saves screenshots in MARKS_ARTIFACTS, and prints a JSON report on its last line. Every
expectation waits at most 15 s; the whole run is bounded by the Rust test.
"""

import json
import os
import sys

from playwright.sync_api import expect

from browser import open_page

ENV = os.environ
BASE = ENV["MARKS_BASE"]
TOKEN = ENV["MARKS_ADMIN_TOKEN"]
ARTIFACTS = ENV["MARKS_ARTIFACTS"]
# The charts' background (#171d24).
BACKGROUND = [23, 29, 36]

report = {"console_errors": []}

# Reads, in one go (no refresh can come between), each mark of the legend with where it says it
# is drawn, and the charts' pixels: inside each mark (the middle of a band, the line of an
# instant) and at a place away from every mark. The heatmap is sampled at y 62 px, below the
# labels' lanes and in the 2.5 s bucket, which these requests never reach; the throughput chart
# at y 3 px, above its top line.
SAMPLE = """() => {
  const ratio = window.devicePixelRatio || 1;
  const reader = (id, y) => {
    const ctx = document.getElementById(id).getContext("2d");
    return (x) => Array.from(ctx.getImageData(Math.round(x * ratio), Math.round(y * ratio), 1, 1).data.slice(0, 3));
  };
  const heat = reader("heatmap", 62), flow = reader("throughput", 3);
  const marks = Array.from(document.querySelectorAll("#marks li")).map((li) => {
    const x0 = Number(li.dataset.x0), x1 = Number(li.dataset.x1);
    const x = x1 > x0 + 4 ? (x0 + x1) / 2 : x0;
    return { id: li.dataset.id, text: li.querySelector(".mark-text").textContent, line: li.textContent,
             x0, x1, heat: heat(x), flow: flow(x) };
  });
  const width = document.getElementById("heatmap").clientWidth;
  let free = 60;
  while (free < width && marks.some((m) => free > m.x0 - 12 && free < m.x1 + 12)) free += 4;
  return { marks, width, free, heat: heat(free), flow: flow(free) };
}"""


def on_console(message):
    if message.type == "error":
        report["console_errors"].append(message.text)


def distance(a, b):
    return sum(abs(x - y) for x, y in zip(a, b))


def main():
    os.makedirs(ARTIFACTS, exist_ok=True)
    with open_page(report, on_console) as page:

        # Anonymous: the public charts with their marks.
        page.goto(BASE + "/dashboard")
        expect(page.locator("#status")).to_contain_text("live")
        legend = page.locator("#marks li")
        expect(legend).to_have_count(3)
        expect(page.locator("#marks")).to_be_visible()
        expect(page.locator("#marks")).not_to_contain_text("an old drill")
        seen = page.evaluate(SAMPLE)
        report["sample"] = seen
        texts = [m["text"] for m in seen["marks"]]
        report["marks"] = texts
        assert texts == ["drain web-2", "kill front-1", "pause store-1"], texts
        marks = {m["id"]: m for m in seen["marks"]}
        width = seen["width"]

        # Where they are drawn: the instant a line, the healed fault a band inside the window,
        # the open one a band up to now (the right edge).
        drain, kill, pause = marks["drain-web-2"], marks["kill-front-1"], marks["pause-store-1"]
        assert drain["x0"] == drain["x1"], drain
        assert 52 < kill["x0"] < kill["x1"] < width - 20, kill
        assert drain["x1"] < kill["x0"] and kill["x1"] < pause["x0"], seen
        assert pause["x1"] >= width - 1, pause
        assert "at " in drain["line"] and "going on" in pause["line"], seen
        assert "–" in kill["line"] and "going on" not in kill["line"], kill

        # Tinted where each mark is, plain beside them, on both charts.
        assert seen["free"] < width, seen
        assert distance(seen["heat"], BACKGROUND) <= 6, seen["heat"]
        assert distance(seen["flow"], BACKGROUND) <= 6, seen["flow"]
        for mark in seen["marks"]:
            assert distance(mark["heat"], seen["heat"]) > 20, mark
            assert distance(mark["flow"], seen["flow"]) > 20, mark

        section = page.locator("section", has=page.locator("#heatmap"))
        section.screenshot(path=os.path.join(ARTIFACTS, "heatmap-marks.png"))
        page.screenshot(path=os.path.join(ARTIFACTS, "dashboard-marks.png"))

        # The fault heals: put again with its end, as `gorgon chaos` does; the mark ends.
        status = page.evaluate(
            """(token) => fetch('/api/v1/admin/annotations/pause-store-1', {method: 'PUT',
                 headers: {'Content-Type': 'application/json', Authorization: 'Bearer ' + token},
                 body: JSON.stringify({text: 'pause store-1', start_ms: Date.now() - 15000, end_ms: Date.now() - 3000})})
               .then(r => r.status)""",
            TOKEN)
        assert status == 200, status
        healed = page.locator("#marks li[data-id='pause-store-1']")
        expect(healed).not_to_contain_text("going on")
        expect(healed).to_contain_text("–")
        report["healed"] = healed.inner_text()
        after = page.evaluate(SAMPLE)
        pause = next(m for m in after["marks"] if m["id"] == "pause-store-1")
        assert pause["x1"] < width - 5, pause
        section.screenshot(path=os.path.join(ARTIFACTS, "heatmap-healed.png"))
    print(json.dumps(report))


if __name__ == "__main__":
    try:
        main()
    except Exception:  # the report still says what the page showed so far
        print(json.dumps(report), file=sys.stderr)
        raise
