"""The report of a real tiny sweep (the shared finished_sweep: plan → scaffold → run → eval → report), loaded in
headless Chromium: no console errors, every figure decoded and drawn at a nonzero size, one screenshot kept."""

from __future__ import annotations

import json
import re
import shutil

import pytest

pytestmark = pytest.mark.slow
SCREENSHOT_COPY = "/tmp/tunelab-report-screenshot.png"

# Appended to a copy of the report: records each image's decoded and rendered size and any page error
# into the DOM, which --dump-dom then prints.
PROBE = """<script>
window.__errors = [];
window.addEventListener("error", e => window.__errors.push(String(e.message || e.type)), true);
window.addEventListener("load", () => {
  const imgs = [...document.images].map(i => ({path: i.dataset.path, complete: i.complete,
    natural: [i.naturalWidth, i.naturalHeight], rendered: [i.clientWidth, i.clientHeight]}));
  const pre = document.createElement("pre");
  pre.id = "probe";
  pre.textContent = JSON.stringify({imgs, errors: window.__errors, sections: document.querySelectorAll("h2").length});
  document.body.appendChild(pre);
});
</script>"""


def test_report_renders_in_chromium(tmp_path, finished_sweep, run_chromium):
    exp = finished_sweep.exp
    out = finished_sweep.output["report"]  # the shared sweep's `tunelab report` (tests/e2e/conftest.py)
    assert "report.html" in out and "partial" not in out

    report = exp / "report"
    md = (report / "report.md").read_text()
    html = (report / "report.html").read_text()
    assert "2 of 2 fine-tuned runs completed" in md and "partial" not in md
    _intervals_everywhere(finished_sweep, md)
    figures = sorted(p.name for p in (report / "figures").glob("*.png"))
    assert figures == ["loss_curves.png", "score_by_lora_rank__exact_match__accuracy.png", "score_per_epoch.png",
                       "throughput_memory.png"]

    # the HTML works alone: move it away from figures/ and the experiment before the browser opens it
    alone = tmp_path / "alone"
    alone.mkdir()
    page = alone / "report.html"
    shutil.copy(report / "report.html", page)
    probe = alone / "probe.html"
    probe.write_text(html.replace("</body>", PROBE + "</body>"))

    res = run_chromium("--enable-logging=stderr", "--v=0", "--virtual-time-budget=5000", "--dump-dom",
                       probe.as_uri())
    assert res.returncode == 0, res.stderr[-2000:]
    console = [line for line in res.stderr.splitlines() if ":CONSOLE" in line]
    assert not console, console
    m = re.search(r'<pre id="probe">(.*?)</pre>', res.stdout, re.S)
    assert m, res.stdout[-2000:]
    found = json.loads(m.group(1).replace("&quot;", '"').replace("&amp;", "&").replace("&lt;", "<")
                       .replace("&gt;", ">"))
    assert found["errors"] == [] and found["sections"] >= 10
    assert sorted(i["path"].removeprefix("figures/") for i in found["imgs"]) == figures
    for img in found["imgs"]:
        assert img["complete"] and min(img["natural"]) > 100 and min(img["rendered"]) > 100, img

    shot = tmp_path / "report-screenshot.png"
    res = run_chromium(f"--screenshot={shot}", "--window-size=1280,2400", "--hide-scrollbars", page.as_uri())
    assert res.returncode == 0 and shot.is_file() and shot.stat().st_size > 50_000, res.stderr[-2000:]
    shutil.copy(shot, SCREENSHOT_COPY)


def _intervals_everywhere(sweep, md: str) -> None:
    """Issue 14 on a real sweep: the evaluator kept every sample's score (they recompute inspect's own
    accuracy), each score carries its Wilson interval, and every score and difference the report states
    carries its 95 % interval."""
    from statsmodels.stats.proportion import proportion_confint

    from tunelab.evaluate.scores import read_task_scores
    from tunelab.stats.samples import arrays, metric_on

    evaluated = len(sweep.runs) * sweep.epochs + 1  # every epoch of each run + the control
    found = sorted(sweep.exp.glob("*/*/eval/*/*/scores.json"))
    assert len(found) == evaluated
    for path in found:
        s = read_task_scores(path)
        assert len(s.per_sample) == s.samples and metric_on(arrays(s.per_sample), "accuracy") == s.score
        right = sum(int(v.value) for v in s.per_sample)
        low, high = proportion_confint(right, s.samples, method="wilson")
        iv = s.intervals["accuracy"]
        assert (iv.method, iv.low, iv.high) == ("wilson", pytest.approx(low), pytest.approx(high))
    rows = [line for line in md.splitlines() if re.match(r"\| tiny_\w+ \| (fine-tuned|control) \| (epoch_\d|base) \|",
                                                         line)]
    assert len(rows) == evaluated
    for row in rows:
        assert re.search(r"\| \d+\.\d % \[\d+\.\d, \d+\.\d\] \|", row), row
        if "fine-tuned" in row:  # the paired difference from the control, with its interval
            assert re.search(r"\| [+-]\d+\.\d pp \[[+-]\d+\.\d, [+-]\d+\.\d\]( \(n\.s\.\))? \|", row), row
    assert re.search(r"\*\*Best runs? .*— \d+\.\d % \[\d+\.\d, \d+\.\d\]\*\*", md)
    bare = re.findall(r"[+-]\d+\.\d pp(?! \[)", md)  # a stated difference without its interval
    assert not bare, bare
