"""`prefsynth review` end to end: the real CLI starts the real uvicorn server, a real headless Chromium
(Debian's /usr/bin/chromium through playwright, `make setup-browser`) pages, filters and labels, and
`prefsynth card` / `prefsynth run` re-publish. Runs come from tests/review_run.py (no model), plus one
test on the real tiny run."""

from __future__ import annotations

import http.client
import json
import queue
import re
import shutil
import socket
import subprocess
import sys
import threading
from contextlib import contextmanager
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline.core import funnel
from pipeline.review import labels as review
from tests.conftest import ROOT, TINY, cli_env, run_cli
from tests.review_run import build

pytestmark = pytest.mark.browser
CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.fail("no /usr/bin/chromium: run `make setup-browser` (apt-get install chromium; the dev extra has "
                    "playwright)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:  # playwright gives every launch a fresh temporary --user-data-dir
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
        yield b
        b.close()


@contextmanager
def review_server(run: Path, *args: str):
    """`prefsynth review RUN --port 0 ...` in a subprocess; yields (the URL it printed, its stdout lines, process)."""
    proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "review", str(run), "--port", "0", *args], cwd=ROOT,
                            env=cli_env(shared_api=False), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue = queue.Queue()
    printed: list[str] = []
    threading.Thread(target=lambda: [(printed.append(x), lines.put(x)) for x in proc.stdout], daemon=True).start()
    try:
        url = None
        while url is None:
            found = re.search(r" at (http://\S+)", lines.get(timeout=120))
            url = found and found.group(1)
        yield url, printed, proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def base(url: str) -> str:
    return re.match(r"http://[^/]+", url).group(0)


def pair_id(i: int) -> str:
    p = f"p{i:06d}"
    return review.pair_id(p, f"{p}-c0", f"{p}-c1", "best_vs_worst")


def shards(run: Path) -> tuple[list[dict], dict]:
    m = json.loads((run / "manifest.json").read_text())
    return [r for s in m["shards"] for r in pq.read_table(run / s["path"]).to_pylist()], m


def test_filter_page_open_flip_reject_and_republish(browser, tmp_path):
    run = build(tmp_path / "run", 120)
    source, _ = shards(run)
    match = sorted(((r["margin"], i) for i, r in enumerate(source) if r["margin"] > 1.5), key=lambda t: (-t[0], t[1]))
    expected = [pair_id(i) for _, i in match]
    assert len(expected) > 50  # two pages
    with review_server(run) as (url, _, _):
        page = browser.new_page()
        page.goto(url)
        assert "pair.ties" in page.inner_text("table.funnel")
        assert page.eval_on_selector(".plots img", "img => img.naturalWidth") > 100  # the card's plot is served
        page.click("header >> text=Pairs")
        page.fill("#where", "margin > 1.5")
        page.select_option("#sort", "margin")
        page.check("input[name=desc]")
        page.click("#apply")
        assert page.inner_text("#total") == str(len(expected))
        assert page.locator("a.pair").all_inner_texts() == expected[:50]
        page.click("#page-next")
        assert page.inner_text("#position") == "page 2 of 2"
        assert page.locator("a.pair").all_inner_texts() == expected[50:]
        page.click("a.pair >> nth=0")
        assert page.inner_text("#pair-id") == expected[50]
        i = [pair_id(k) for k in range(len(source))].index(expected[50])
        assert "Topic" in page.inner_text("#chosen-text")
        assert page.inner_text("#rejected-text").startswith(f"answer {i}")
        assert page.locator("table.judgments tbody tr").count() == 4  # two judges x chosen, rejected
        page.click("main >> text=Name yourself")  # the reviewer is named at start
        page.fill("#name", "alice")
        page.click("#start")
        assert page.inner_text("#reviewer") == "alice" and page.inner_text("#pair-id") == expected[50]
        page.fill("#note", "the short one is right")
        page.click("#verdict-flip")
        assert page.inner_text("#saved") == f"Saved: flip {expected[50]}."
        assert page.inner_text("#pair-id") == expected[51]  # on to the next pair of the filtered order
        page.wait_for_function("document.documentElement.dataset.js === 'on'")  # our script has loaded
        with page.expect_navigation():
            page.keyboard.press("x")  # its keyboard shortcut of reject
        assert page.inner_text("#saved") == f"Saved: reject {expected[51]}."
        page.goto(url)
        assert page.inner_text("#label-counts") == "accept 0 · flip 1 · reject 1" and page.is_visible("#pending")

        proc = run_cli("card", str(run))
        assert proc.returncode == 0, proc.stderr
        after, m = shards(run)
        flipped, rejected = (source[[pair_id(k) for k in range(len(source))].index(p)] for p in expected[50:52])
        assert len(after) == 119 and m["rows"]["pairs"] == 119
        now = next(r for r in after if r["prompt_id"] == flipped["prompt_id"])
        assert (now["chosen"], now["rejected"]) == (flipped["rejected"], flipped["chosen"])
        assert now["pair_strategy"] == "review_flip:best_vs_worst" and now["margin"] < 0
        assert not any(r["prompt_id"] == rejected["prompt_id"] for r in after)
        steps = {f"{f['stage']}.{f['filter']}": f for f in m["funnel"]}
        assert (steps["review.rejected"]["rows_in"], steps["review.rejected"]["rows_out"]) == (120, 119)
        assert steps["review.flipped"]["changed"] == 1 and funnel.problems(m["funnel"], 119) == []
        card = (run / "README.md").read_text()
        assert "## Human review" in card and "1 flipped" in card and "1 rejected (dropped)" in card
        labels = [json.loads(x) for x in (run / "reviews" / "alice.jsonl").read_text().splitlines()]
        assert [(x["verdict"], x["note"]) for x in labels] == [("flip", "the short one is right"), ("reject", "")]
        page.goto(url)
        assert not page.is_visible("#pending") and "review.rejected" in page.inner_text("table.funnel")


def test_model_output_never_runs_in_the_page(browser, tmp_path):
    run = build(tmp_path / "run", 3, hostile=True, card=False)
    with review_server(run, "--reviewer", "alice") as (url, _, _):
        page = browser.new_page()
        blocked, dialogs = [], []
        page.on("console", lambda msg: blocked.append(msg.text) if "Content Security Policy" in msg.text else None)
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        for path in ("pairs", f"pair/{pair_id(0)}", "unpaired", ""):
            page.goto(base(url) + "/" + path)
            assert page.evaluate("window.__pwned") is None, path
        page.goto(base(url) + f"/pair/{pair_id(0)}")
        page.wait_for_function("document.documentElement.dataset.js === 'on'")  # our own script did run
        assert "pwned" not in page.title()
        shown = page.inner_text("#chosen-text")
        assert "<script>window.__pwned = 1" in shown and "<img src=x onerror=" in shown
        assert "[click me](javascript:window.__pwned=3)" in shown and "<script>window.__pwned = 4</script>" in shown
        assert "<script>" in page.inner_text("#rationale") and "<img src=x" in page.inner_text("table.judgments")
        assert page.locator("main script, main img, main iframe").count() == 0
        assert page.locator("a[href*='javascript' i], [onerror], [onclick]").count() == 0
        page.click("#chosen-text >> text=click me")  # only text: nothing happens
        assert page.evaluate("window.__pwned") is None and not dialogs
        assert not blocked  # nothing even tried to run: escaping, not only the CSP, kept it out


def test_two_reviewers_agreement_on_the_summary_page(browser, tmp_path):
    run = build(tmp_path / "run", 6, card=False)
    verdicts = {"alice": ["accept", "flip", "accept", "flip"], "bob": ["accept", "flip", "flip", "reject"]}
    for who, vs in verdicts.items():
        for i, v in enumerate(vs):
            p = f"p{i:06d}"
            second = 10 * i + (1 if who == "alice" else 2)  # bob labels each pair after alice
            review.append(run, review.Label(who, f"2026-12-01T10:00:{second:02d}.000000+00:00", pair_id(i), v, "", p,
                                            f"{p}-c0", f"{p}-c1"))
    # nominal alpha, two coders, units (a,a) (f,f) (a,f) (f,r): coincidences n_a=3, n_f=4, n_r=1 (n=8);
    # disagreements 2 units x 2 = 4, so alpha = 1 - (n-1) * 4 / (n^2 - sum n_c^2) = 1 - 7 * 4 / (64 - 26)
    alpha = round(1 - 7 * 4 / 38, 4)
    with review_server(run) as (url, _, _):
        page = browser.new_page()
        page.goto(url)
        assert page.inner_text("#alpha") == f"{alpha:.4g}"
        assert page.inner_text("#label-counts") == "accept 1 · flip 2 · reject 1"  # bob labelled last


def _get(port: int, path: str, headers: dict | None = None, method: str = "GET", body: str | None = None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request(method, path, body=body, headers=headers or {})
    resp = conn.getresponse()
    return resp.status, dict(resp.getheaders()), resp.read().decode()


def test_cli_errors_token_and_request_guards(tmp_path):
    run = build(tmp_path / "run", 4, card=False)
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    cases = [(["review", str(tmp_path / "nope")], "not a folder"),
             (["review", str(run), "--port", str(taken.getsockname()[1])], "is in use"),
             (["review", str(run), "--where", "margin <<< ("], "not a valid filter"),
             (["review", str(run), "--where", "margin > (SELECT 1 FROM read_csv('/etc/hostname'))"], "reads other"),
             (["review", str(run), "--reviewer", "../../etc"], "reviewer name")]
    for argv, expect in cases:
        proc = run_cli(*argv, timeout=120)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, (argv, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and expect in lines[0] and "fix:" in lines[0], (argv, proc.stderr)
    taken.close()

    with review_server(run, "--host", "0.0.0.0") as (url, printed, proc):
        token = re.search(r"token=([\w-]+)", url).group(1)
        port = int(re.search(r":(\d+)/", url).group(1))
        assert _get(port, "/")[0] == 401 and _get(port, "/?token=wrong")[0] == 401
        status, headers, _ = _get(port, f"/pairs?token={token}&sort=margin")
        assert status == 303 and headers["location"] == "/pairs?sort=margin" and token not in headers["location"]
        cookie = headers["set-cookie"]
        assert "httponly" in cookie.lower() and "samesite=strict" in cookie.lower()
        status, headers, body = _get(port, "/pairs", {"Cookie": cookie.split(";")[0]})
        assert status == 200 and token not in body and "script-src 'self'" in headers["content-security-policy"]
        assert _get(port, "/", {"Authorization": f"Bearer {token}"})[0] == 200
    err = proc.stderr.read()
    assert "".join(printed).count(token) == 1 and token not in err  # printed once, never logged

    with review_server(run, "--reviewer", "alice") as (url, _, _):
        port = int(re.search(r":(\d+)/", url).group(1))
        assert _get(port, "/", {"Host": "rebound.example:80"})[0] == 421  # DNS rebinding
        page = _get(port, f"/pair/{pair_id(0)}")[2]
        csrf = re.search(r'name="csrf" value="([^"]+)"', page).group(1)
        form = {"Content-Type": "application/x-www-form-urlencoded"}
        assert _get(port, f"/pair/{pair_id(0)}/label", form, "POST", "verdict=flip")[0] == 403  # no form token
        assert _get(port, f"/pair/{pair_id(0)}/label", {**form, "Origin": "http://evil.example"}, "POST",
                    f"verdict=flip&csrf={csrf}")[0] == 403  # cross-site
        assert _get(port, f"/pair/{pair_id(0)}/label", form, "POST", f"verdict=flip&csrf={csrf}")[0] == 303
        for away in ("//evil.example/", "/%5Cevil.example/", "https://evil.example/"):  # no open redirect
            status, headers, _ = _get(port, "/reviewer", form, "POST", f"name=bob&next={away}&csrf={csrf}")
            assert status == 303 and headers["location"] == "/"
    assert len((run / "reviews" / "alice.jsonl").read_text().splitlines()) == 1


@pytest.mark.slow
def test_real_tiny_run_review_and_rerun(browser, tiny_run, tmp_path):
    """The real run: label in the browser, then `prefsynth run` (same command) publishes the reviewed shards."""
    run = shutil.copytree(tiny_run, tmp_path / "run")
    before, _ = shards(run)
    assert len(before) >= 2
    with review_server(run, "--reviewer", "alice") as (url, _, _):
        page = browser.new_page()
        page.goto(base(url) + "/pairs")
        ids = page.locator("a.pair").all_inner_texts()
        page.click("a.pair >> nth=0")
        page.click("#verdict-flip")
        assert page.inner_text("#pair-id") == ids[1]
        page.click("#verdict-reject")
        assert page.inner_text("#saved") == f"Saved: reject {ids[1]}."
    proc = run_cli("run", "--config", str(TINY), "--out", str(run))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "review.rejected" in proc.stdout and "review.flipped" in proc.stdout
    after, m = shards(run)
    first, second = before[0], before[1]
    assert len(after) == len(before) - 1 and m["rows"]["pairs"] == len(before) - 1
    now = next(r for r in after if (r["prompt_id"], r["chosen_id"]) == (first["prompt_id"], first["rejected_id"]))
    assert now["chosen"] == first["rejected"] and now["ches"] is None
    assert not any((r["prompt_id"], r["chosen_id"], r["rejected_id"]) ==
                   (second["prompt_id"], second["chosen_id"], second["rejected_id"]) for r in after)
    assert funnel.problems(m["funnel"], len(after)) == [] and m["review"]["applied"] == {"accept": 0, "flip": 1,
                                                                                         "reject": 1}
    card = (run / "README.md").read_text()
    assert "## Human review" in card and "| review | flipped |" in card
