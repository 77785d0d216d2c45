"""`prefsynth review RUN_DIR`: a local web app to page through a run's pairs and label them.

A thin Starlette app on a real uvicorn server, over pipeline/review/view.py (data: paging, sorting,
filtering, drop reasons) and pipeline/review/labels.py (labels). Pages are rendered on the server
(flows/review/pages.py); the only script is the package's own keyboard-shortcut file.

Security, because the pages show model output and write into the run:
- Binds 127.0.0.1 by default. There, requests must name that host (Host header), so a web page
  cannot reach the server through a DNS name that resolves to 127.0.0.1 (DNS rebinding). Another
  --host needs an access token, made at start and printed once in the URL; the first visit trades
  it for an HttpOnly SameSite=Strict cookie and redirects to the same page without it, and the
  server keeps no access log, so the token reaches no log and no page.
- Every POST carries the per-start form token and, when the browser sends one, a same-origin
  Origin header (no cross-site form can label pairs).
- Filters (`?where=`) are parsed, never run as SQL, and bounded (pipeline/review/where.py), and run in worker
  threads, so one request's filter cannot crash the server or hold up the others.
- Content-Security-Policy: scripts, styles and images from this server only, no inline script,
  no framing; nosniff; no referrer to other sites. Model output is escaped before that (review_pages).
Errors a user causes (bad RUN_DIR, a port in use, a bad --where) are `InputError`s raised before
the server starts: the CLI prints one line naming the fix and exits 2.
"""

from __future__ import annotations

import errno
import hmac
import ipaddress
import secrets
import socket
from pathlib import Path
from urllib.parse import parse_qs, urlencode

import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from flows.review import pages
from pipeline.errors import InputError
from pipeline.review.labels import check_reviewer
from pipeline.review.view import ReviewView

STATIC = Path(__file__).with_name("static")
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; form-action 'self'; "
       "base-uri 'none'; frame-ancestors 'none'")
TOKEN_COOKIE, REVIEWER_COOKIE = "prefsynth_token", "prefsynth_reviewer"
MAX_FORM = 64 * 1024


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Guard(BaseHTTPMiddleware):
    """Host check (loopback), access token (other hosts), form token + Origin on POST, security headers."""

    async def dispatch(self, request: Request, call_next):
        state = request.app.state
        host = request.headers.get("host", "")
        if state.hosts is not None and host not in state.hosts:
            return self._secure(PlainTextResponse("unknown Host header; open the URL `prefsynth review` printed", 421))
        if state.token is not None:
            given = request.query_params.get("token")
            if given is not None and hmac.compare_digest(given.encode(), state.token.encode()):
                rest = urlencode([(k, v) for k, v in request.query_params.multi_items() if k != "token"])
                response = RedirectResponse(request.url.path + (f"?{rest}" if rest else ""), 303)
                response.set_cookie(TOKEN_COOKIE, state.token, httponly=True, samesite="strict")
                return self._secure(response)
            cookie = request.cookies.get(TOKEN_COOKIE, "")
            bearer = request.headers.get("authorization", "").removeprefix("Bearer ")
            if not any(hmac.compare_digest(c.encode(), state.token.encode()) for c in (cookie, bearer)):
                return self._secure(PlainTextResponse("this review server needs its access token: open the URL "
                                                      "`prefsynth review` printed when it started", 401))
        if request.method == "POST":
            origin = request.headers.get("origin")
            if origin is not None and origin != f"{request.url.scheme}://{host}":
                return self._secure(PlainTextResponse("cross-site form refused", 403))
            body = await request.body()
            if len(body) > MAX_FORM:
                return self._secure(PlainTextResponse("form too large", 413))
            form = {k: v[-1] for k, v in parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True).items()}
            if not hmac.compare_digest(form.get("csrf", "").encode(), state.csrf.encode()):
                return self._secure(PlainTextResponse("form token missing or stale: reload the page", 403))
            request.state.form = form
        return self._secure(await call_next(request))

    @staticmethod
    def _secure(response: Response) -> Response:
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "same-origin"  # no-referrer would make Chrome send Origin: null
        response.headers["Cache-Control"] = "no-store"
        return response


def _reviewer(request: Request) -> str | None:
    name = request.cookies.get(REVIEWER_COOKIE) or request.app.state.reviewer
    try:
        return check_reviewer(name) if name else None
    except InputError:
        return None


def _html(request: Request, title: str, body: str, active: str = "", status: int = 200) -> HTMLResponse:
    view: ReviewView = request.app.state.view
    return HTMLResponse(pages.layout(title, body, run_name=view.manifest["name"], reviewer=_reviewer(request),
                                     active=active), status)


def _ctx(params) -> dict:
    return {"where": params.get("where", ""), "sort": params.get("sort", "row"), "desc": params.get("desc", "") == "1"}


def _int(text: str | None, default: int = 1) -> int:
    try:
        return int(text) if text else default
    except ValueError:
        return default


async def summary(request: Request):
    view: ReviewView = request.app.state.view
    view.refresh()
    folder = view.run / "plots"
    plots = sorted(p.name for p in folder.glob("*.png") if plot_path(view.run, p.name)) if folder.is_dir() else []
    return _html(request, "Summary", pages.summary_page(view, plots), "summary")


async def pairs(request: Request):
    view: ReviewView = request.app.state.view
    ctx = _ctx(request.query_params)
    try:
        page = await run_in_threadpool(view.page, **ctx, page=_int(request.query_params.get("page")))
    except InputError as exc:
        return _html(request, "Pairs", pages.pairs_page(None, **ctx, error=str(exc)), "pairs", 400)
    return _html(request, "Pairs", pages.pairs_page(page, **ctx, error=None), "pairs")


async def pair(request: Request):
    view: ReviewView = request.app.state.view
    view.refresh()
    pid = request.path_params["pid"]
    item = view.pair(pid)
    if item is None:
        return _html(request, "Not found", f"<p class='error'>No pair {pages.esc(pid)} in this run.</p>", status=404)
    ctx = _ctx(request.query_params)
    try:
        nav = await run_in_threadpool(view.neighbours, pid, ctx["where"], ctx["sort"], ctx["desc"])
    except InputError:
        ctx, nav = _ctx({}), await run_in_threadpool(view.neighbours, pid, None, "row", False)
    body = pages.pair_page(item, ctx={**ctx, "desc": int(ctx["desc"])}, nav=nav, csrf=request.app.state.csrf,
                           reviewer=_reviewer(request), saved=request.query_params.get("saved"))
    return _html(request, f"Pair {pid}", body, "pairs")


async def label(request: Request):
    view: ReviewView = request.app.state.view
    pid, form = request.path_params["pid"], request.state.form
    reviewer = _reviewer(request)
    if view.pair(pid) is None:
        return PlainTextResponse(f"no pair {pid}", 404)
    if reviewer is None:
        return RedirectResponse(f"/reviewer?{urlencode({'next': f'/pair/{pid}'})}", 303)
    try:
        view.add_label(reviewer, pid, form.get("verdict", ""), form.get("note", ""))
    except InputError as exc:
        return _html(request, "Label refused", f"<p class='error'>{pages.esc(exc)}</p>", status=400)
    ctx = _ctx(form)
    try:
        _, next_id, _, _ = await run_in_threadpool(view.neighbours, pid, ctx["where"], ctx["sort"], ctx["desc"])
    except InputError:  # a form's filter is the page's: refused, the next pair is the next row
        _, next_id, _, _ = await run_in_threadpool(view.neighbours, pid, None, "row", False)
    params = {"where": ctx["where"], "sort": ctx["sort"], "desc": int(ctx["desc"]),
              "saved": f"{form['verdict']} {pid}"}
    return RedirectResponse(f"/pair/{next_id or pid}{pages.query(**params)}", 303)


async def unpaired(request: Request):
    view: ReviewView = request.app.state.view
    items, total, page = view.unpaired(_int(request.query_params.get("page")), 20)
    return _html(request, "Prompts without a pair", pages.unpaired_page(items, total, page, 20), "unpaired")


def plot_path(run: Path, name: str) -> Path | None:
    """RUN/plots/NAME when it is a plain PNG file really inside the run's plots folder; a symbolic link (to any file
    of the reviewer's machine) or a name that leaves the folder is not served."""
    folder = run / "plots"
    path = folder / name
    if "/" in name or "\\" in name or name.startswith(".") or not name.endswith(".png"):
        return None
    if folder.is_symlink() or path.is_symlink() or not path.is_file():
        return None
    return path if path.resolve().parent == folder.resolve() and folder.resolve().parent == run.resolve() else None


async def plot(request: Request):
    view: ReviewView = request.app.state.view
    path = plot_path(view.run, request.path_params["name"])
    if path is None:
        return PlainTextResponse("no such plot", 404)
    return FileResponse(path, media_type="image/png")


async def static(request: Request):
    name = request.path_params["name"]
    if name not in ("review.css", "review.js"):
        return PlainTextResponse("not found", 404)
    text = (STATIC / name).read_text()
    if name == "review.css":
        return Response(text + "\n" + pages.PYGMENTS_CSS, media_type="text/css")
    return Response(text, media_type="text/javascript")


async def reviewer_form(request: Request):
    state = request.app.state
    if request.method == "GET":
        body = pages.reviewer_page(_reviewer(request), state.csrf, next_url=request.query_params.get("next", "/"))
        return _html(request, "Reviewer", body)
    form = request.state.form
    next_url = form.get("next", "/")
    local = next_url.startswith("/") and not next_url.startswith(("//", "/\\"))  # browsers read /\ as //
    next_url = next_url if local else "/"
    try:
        name = check_reviewer(form.get("name", ""))
    except InputError as exc:
        return _html(request, "Reviewer", pages.reviewer_page(None, state.csrf, str(exc), next_url), status=400)
    response = RedirectResponse(next_url, 303)
    response.set_cookie(REVIEWER_COOKIE, name, samesite="strict", max_age=30 * 86400)
    return response


def create_app(view: ReviewView, *, reviewer: str | None = None, token: str | None = None,
               hosts: set[str] | None = None) -> Starlette:
    """The app over one run; `hosts`: the Host headers accepted (None: any, when a token guards it)."""
    app = Starlette(routes=[Route("/", summary), Route("/pairs", pairs), Route("/pair/{pid}", pair),
                            Route("/pair/{pid}/label", label, methods=["POST"]), Route("/unpaired", unpaired),
                            Route("/plots/{name}", plot), Route("/static/{name}", static),
                            Route("/reviewer", reviewer_form, methods=["GET", "POST"]),
                            Route("/favicon.ico", lambda request: Response(status_code=204))],
                    middleware=[Middleware(Guard)])
    app.state.view, app.state.reviewer, app.state.token, app.state.hosts = view, reviewer, token, hosts
    app.state.csrf = secrets.token_urlsafe(24)
    return app


def bind(host: str, port: int) -> socket.socket:
    """A listening socket, or an InputError naming the fix (port in use, no permission, unknown host)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror:
        raise InputError(f"--host {host!r} is not an address of this machine; fix: pass 127.0.0.1 (the default) "
                         "or an address of one of its interfaces") from None
    family, _, _, _, addr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # accepted connections inherit it: a response goes out as headers then body, and with Nagle the body
    # waited for the client's delayed ACK (40 ms on every page, measured by bench/review.py)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind(addr)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise InputError(f"port {port} on {host} is in use; fix: pass another --port (or --port 0 for any free "
                             "one), or stop the program using it") from None
        raise InputError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); fix: pass another --port or "
                         "--host") from None
    return sock


def serve(run_dir, *, host: str = "127.0.0.1", port: int = 8765, reviewer: str | None = None,
          where: str | None = None, log=print) -> None:
    """Check everything a user can get wrong, then serve until interrupted."""
    view = ReviewView(run_dir)
    if where:
        view.ordered(where)  # a bad filter fails here, before the server starts
    reviewer = check_reviewer(reviewer) if reviewer else None
    sock = bind(host, port)
    port = sock.getsockname()[1]
    loopback = is_loopback(host)
    token = None if loopback else secrets.token_urlsafe(24)
    shown = f"[{host}]" if ":" in host else host
    hosts = {f"{h}:{port}" for h in (shown, "localhost", "127.0.0.1", "[::1]")} if loopback else None
    app = create_app(view, reviewer=reviewer, token=token, hosts=hosts)
    if host in ("0.0.0.0", "::"):
        shown = socket.gethostname()
    params = {k: v for k, v in (("token", token), ("where", where)) if v}
    url = f"http://{shown}:{port}/{'pairs' if where else ''}" + (f"?{urlencode(params)}" if params else "")
    log(f"prefsynth review: {view.manifest['name']}, {view.pairs.num_rows} pairs, at {url}")
    if token:
        log("  this URL holds the access token; it is printed only now (anyone with it can label pairs)")
    log("  Ctrl-C stops the server; labels are saved as you go under "
        f"{view.run / 'reviews'}; `prefsynth card {view.run}` applies them")
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off"))
    server.run(sockets=[sock])
