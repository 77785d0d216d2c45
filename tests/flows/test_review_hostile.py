"""`prefsynth review` against hostile requests over plain HTTP (issue 39): the review app on a real uvicorn server,
in a thread of this process (the fast tier; tests/flows/test_review_app.py starts it through the CLI).

A symbolic link under RUN/plots/ is not served, a reviewer name that would leave RUN/reviews/ is refused, and a
`?where=` of thousands of terms is refused at once while the server keeps answering."""

from __future__ import annotations

import http.client
import re
import threading
import time
import urllib.parse
from contextlib import contextmanager

import uvicorn

from flows.review.app import bind, create_app, plot_path
from pipeline.review.view import ReviewView
from tests.flows.test_review_app import _get, pair_id
from tests.review_run import build

FORM = {"Content-Type": "application/x-www-form-urlencoded"}
PNG = b"PNG-bytes"  # _get decodes the body as text


@contextmanager
def review_server(run, *args):
    """The app as `prefsynth review RUN --port 0 [--reviewer NAME]` builds it, served from a thread; yields
    (url, None, None) as tests/flows/test_review_app.py's helper does."""
    reviewer = args[1] if args[:1] == ("--reviewer",) else None
    sock = bind("127.0.0.1", 0)
    port = sock.getsockname()[1]
    app = create_app(ReviewView(run), reviewer=reviewer, hosts={f"127.0.0.1:{port}"})
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}/", None, None
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def test_symlinks_reviewer_names_and_huge_filters(tmp_path):
    run = build(tmp_path / "run", 4, card=False)
    secret = tmp_path / "secret.png"
    secret.write_bytes(b"the reviewer's private file")
    (run / "plots").mkdir(exist_ok=True)
    (run / "plots" / "margins.png").write_bytes(PNG)
    (run / "plots" / "leak.png").symlink_to(secret)
    (run / "plots" / "up.png").symlink_to("../../secret.png")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    with review_server(run) as (url, _, _):
        port = int(re.search(r":(\d+)/", url).group(1))
        assert _get(port, "/plots/margins.png")[0] == 200
        for name in ("leak.png", "up.png", "..%2Fsecret.png", "%2E%2E%2F%2E%2E%2Fsecret.png"):
            status, _, body = _get(port, f"/plots/{name}")
            assert status == 404 and "private" not in body, name
        summary = _get(port, "/")[2]
        assert "margins.png" in summary and "leak.png" not in summary

        csrf = re.search(r'name="csrf" value="([^"]+)"', _get(port, "/reviewer")[2]).group(1)
        for name in ("../../elsewhere/x", "..", "../x", "a/b", ".hidden", "..\\x"):
            body = urllib.parse.urlencode({"name": name, "csrf": csrf})
            status, _, page = _get(port, "/reviewer", FORM, "POST", body)
            assert status == 400 and "reviewer name" in page and "fix:" in page, name
            # a cookie set by hand is not trusted either: the label asks for a reviewer instead of writing
            cookie = {"Cookie": "prefsynth_reviewer=" + urllib.parse.quote(name)}
            status, headers, _ = _get(port, f"/pair/{pair_id(0)}/label", {**FORM, **cookie}, "POST",
                                      f"verdict=flip&csrf={csrf}")
            assert status == 303 and headers["location"].startswith("/reviewer"), name
        assert list(outside.iterdir()) == [] and not (run / "reviews").exists()

        # a filter of thousands of terms: refused in one line, at once, and the server keeps answering
        for terms in (6000, 3000):  # uvicorn refuses a request line this long itself; the app is not reached
            where = urllib.parse.quote(" OR ".join(["margin = 1"] * terms))
            try:
                status, _, page = _get(port, f"/pairs?where={where}")
                assert status in (400, 414) and ("over the limit" in page or status == 414), terms
            except (ConnectionError, http.client.HTTPException):
                pass
        for where, limit in ((" OR ".join(["margin = 1"] * 700), "over the limit of 8000"),
                             (" OR ".join(["row=1"] * 700), "more than 512 columns and values"),
                             ("(" * 40 + "row=1" + ")" * 40, "more than 32 levels")):
            start = time.perf_counter()
            status, _, page = _get(port, f"/pairs?where={urllib.parse.quote(where)}")
            assert status == 400 and limit in page and time.perf_counter() - start < 5, where[:40]
        assert _get(port, "/pairs?where=margin+%3E+0")[0] == 200
        assert _get(port, "/pairs?where=" + urllib.parse.quote("margin > (SELECT 1 FROM read_csv('x'))"))[0] == 400


def test_a_slow_filter_holds_up_no_other_request(tmp_path, monkeypatch):
    """Filtering runs in a worker thread: while one request filters (slowed here to 3 s), other pages answer."""
    run = build(tmp_path / "run", 4, card=False)
    slow = ReviewView.page

    def page(self, **kw):
        if kw.get("where") == "margin > 0":
            time.sleep(3)
        return slow(self, **kw)

    monkeypatch.setattr(ReviewView, "page", page)
    with review_server(run) as (url, _, _):
        port = int(re.search(r":(\d+)/", url).group(1))
        answers = []
        busy = threading.Thread(target=lambda: answers.append(_get(port, "/pairs?where=margin+%3E+0")[0]))
        busy.start()
        time.sleep(0.3)
        start = time.perf_counter()
        assert _get(port, "/pairs?where=margin+%3C+0")[0] == 200 and _get(port, "/")[0] == 200
        assert time.perf_counter() - start < 2 and not answers
        busy.join(30)
        assert answers == [200]


def test_labels_never_go_through_a_link(tmp_path):
    run = build(tmp_path / "run", 2, card=False)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (run / "reviews").symlink_to(outside)
    with review_server(run, "--reviewer", "alice") as (url, _, _):
        port = int(re.search(r":(\d+)/", url).group(1))
        csrf = re.search(r'name="csrf" value="([^"]+)"', _get(port, f"/pair/{pair_id(0)}")[2]).group(1)
        status, _, page = _get(port, f"/pair/{pair_id(0)}/label", FORM, "POST", f"verdict=flip&csrf={csrf}")
        assert status == 400 and "symbolic link" in page and "fix:" in page
    assert list(outside.iterdir()) == []


def test_plot_path_needs_the_real_plots_folder(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    elsewhere = tmp_path / "plots-elsewhere"
    elsewhere.mkdir()
    (elsewhere / "a.png").write_bytes(PNG)
    (run / "plots").symlink_to(elsewhere)
    assert plot_path(run, "a.png") is None
