"""HTML of the `prefsynth review` pages, rendered on the server from pipeline/review/view.py's data.

No template engine and no front-end build: each page is a function returning a string, and every
value that comes from a run goes through `esc` (html.escape, quotes included) or `markdown`.
Model output is untrusted: `markdown` renders it with markdown-it-py with raw HTML off (a `<script>`
or `<img onerror>` shows as text), images off (no request leaves for a URL a model wrote), and
markdown-it's link check, which drops `javascript:`, `vbscript:`, `file:` and `data:` links; code
fences are highlighted by pygments, which escapes what it formats. Judge rationales and notes are
shown as plain text. The app's Content-Security-Policy (flows/review/app.py) allows only this
package's own script and style, so even markup that slipped through could not run.
"""

from __future__ import annotations

from html import escape
from urllib.parse import urlencode

from markdown_it import MarkdownIt
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import get_lexer_by_name
from pygments.util import ClassNotFound

from pipeline.core.funnel import unit_label
from pipeline.review.labels import VERDICTS
from pipeline.review.view import SORTABLE, where_columns

FORMATTER = HtmlFormatter(nowrap=True)
PYGMENTS_CSS = HtmlFormatter().get_style_defs(".md pre")


def esc(value) -> str:
    return escape("" if value is None else str(value), quote=True)


def _highlight(code: str, lang: str, _attrs) -> str:
    try:
        return highlight(code, get_lexer_by_name(lang), FORMATTER) if lang else ""
    except ClassNotFound:
        return ""  # markdown-it escapes the code itself


_MD = MarkdownIt("commonmark", {"html": False, "linkify": False, "highlight": _highlight}).disable("image")


def _link_open(self, tokens, idx, options, env):
    tokens[idx].attrSet("rel", "nofollow noopener noreferrer")
    return self.renderToken(tokens, idx, options, env)


_MD.add_render_rule("link_open", _link_open)


def markdown(text: str | None) -> str:
    return _MD.render(text or "")


def fmt(value, digits: int = 4) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return esc(value)


def query(**params) -> str:
    return "?" + urlencode({k: v for k, v in params.items() if v not in (None, "", False)})


def layout(title: str, body: str, *, run_name: str, reviewer: str | None, active: str = "") -> str:
    tabs = "".join(f'<a href="{href}"{" class=active" if key == active else ""}>{label}</a>'
                   for key, href, label in (("summary", "/", "Summary"), ("pairs", "/pairs", "Pairs"),
                                            ("unpaired", "/unpaired", "Prompts without a pair")))
    who = (f'reviewing as <b id="reviewer">{esc(reviewer)}</b> (<a href="/reviewer">change</a>)' if reviewer
           else '<a href="/reviewer">name yourself to label pairs</a>')
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{esc(title)} · {esc(run_name)}</title><link rel="stylesheet" href="/static/review.css">
<script src="/static/review.js" defer></script></head>
<body><header><b>prefsynth review</b> <span class="run">{esc(run_name)}</span><nav>{tabs}</nav>
<span class="who">{who}</span></header><main>{body}</main></body></html>"""


def table(headers: list[str], rows: list[list[str]], cls: str = "") -> str:
    head = "".join(f"<th>{h}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def agreement_html(ag: dict) -> str:
    rows = [[f"<code>{esc(j)}</code>", str(v["labels"]), fmt(v["accuracy"]), fmt(v["kappa"])]
            for j, v in ag["judges"].items()]
    po = ag["published_order"]
    rows.append(["published order (the pipeline's label)", str(po["labels"]), fmt(po["accuracy"]), "n/a"])
    who = ", ".join(f"{esc(r)} ({n})" for r, n in ag["reviewers"].items()) or "none yet"
    alpha = (f"<p>Krippendorff alpha between reviewers (nominal verdicts): <b id='alpha'>{fmt(ag['reviewers_alpha'])}"
             f"</b> over {ag['pairs_with_several_reviewers']} pair(s) with several reviewers.</p>"
             if len(ag["reviewers"]) > 1 else "")
    return (f"<p>{ag['human_labels']} human label(s) on {ag['pairs_labelled']} pair(s); reviewers: {who}.</p>"
            + table(["judge", "labels", "accuracy", "Cohen's kappa"], rows, "agreement") + alpha)


def summary_page(view, plots: list[str]) -> str:
    m = view.manifest
    rows = m["rows"]
    funnel = [[f"{esc(f['stage'])}.{esc(f['filter'])}", esc(unit_label(f)), str(f["rows_in"]), str(f["rows_out"]),
               esc(f["reason"])] for f in m["funnel"]]
    counts = {v: sum(1 for lab in view.verdicts.values() if lab.verdict == v) for v in VERDICTS}
    pending = (f'<p class="notice" id="pending">{len(view.log.labels)} label(s) on disk are not in the published '
               f"shards yet: run <code>prefsynth card {esc(view.run)}</code> (or <code>prefsynth run</code> / "
               "<code>push</code>) to apply them.</p>" if view.pending() else "")
    skipped = (f'<p class="notice">{len(view.log.skipped)} line(s) under reviews/ are not labels and were '
               "skipped.</p>" if view.log.skipped else "")
    figs = "".join(f'<figure><img src="/plots/{esc(p)}" alt="{esc(p)}"><figcaption>{esc(p)}</figcaption></figure>'
                   for p in plots) or "<p>No plots: run <code>prefsynth card</code> to draw them.</p>"
    return f"""<h1>{esc(m['name'])}</h1>
<p>config <code>{esc(m['config_fingerprint'])}</code>, prefsynth {esc(m['code_version'])}, created
{esc(m['created_at'])}. {rows['prompts']} prompts &rarr; {rows['candidates']} candidates &rarr; {rows['judgments']}
judgments &rarr; <b>{rows['pairs']} published pairs</b>; {view.pairs.num_rows} pairs to review.</p>
{pending}{skipped}
<h2>Labels</h2><p id="label-counts">accept {counts['accept']} · flip {counts['flip']} · reject {counts['reject']}</p>
{agreement_html(view.agreement())}
<h2>Drop funnel</h2>{table(["step", "unit", "in", "out", "reason"], funnel, "funnel")}
<h2>Plots</h2><div class="plots">{figs}</div>"""


def pairs_page(page, *, where: str, sort: str, desc: bool, error: str | None) -> str:
    ctx = {"where": where, "sort": sort, "desc": int(desc)}
    options = "".join(f'<option value="{c}"{" selected" if c == sort else ""}>{c}</option>' for c in SORTABLE)
    form = f"""<form method="get" action="/pairs" class="filter">
<label>where <input name="where" id="where" size="60" value="{esc(where)}"
  placeholder="margin &lt; 0.5 AND label IS NULL"></label>
<label>sort <select name="sort" id="sort">{options}</select></label>
<label><input type="checkbox" name="desc" value="1"{" checked" if desc else ""}> descending</label>
<button type="submit" id="apply">Filter</button></form>
<p class="hint">A condition (= &lt; &gt; AND OR NOT IN LIKE BETWEEN IS NULL, + - * /) over
{", ".join(where_columns())} (as <code>prefsynth inspect --where</code>).</p>"""
    if error:
        return form + f'<p class="error" id="error">{esc(error)}</p>'

    def sort_link(col: str) -> str:
        if col not in SORTABLE:
            return col
        flip = sort == col and not desc
        return f'<a href="/pairs{query(where=where, sort=col, desc=int(flip))}">{col}</a>'

    cols = ["pair_id", "prompt", "chosen_score", "rejected_score", "margin", "ln_ches", "chosen_len", "rejected_len",
            "pair_strategy", "label"]
    rows = [[f'<a class="pair" href="/pair/{esc(r["pair_id"])}{query(**ctx)}">{esc(r["pair_id"])}</a>',
             esc(r["prompt"]), fmt(r["chosen_score"]), fmt(r["rejected_score"]), fmt(r["margin"]), fmt(r["ln_ches"]),
             fmt(r["chosen_len"]), fmt(r["rejected_len"]), esc(r["pair_strategy"]),
             f'<span class="label {esc(r["label"] or "")}">{esc(r["label"] or "")}</span>'] for r in page.rows]
    nav = []
    for label, target in (("first", 1), ("prev", page.page - 1), ("next", page.page + 1), ("last", page.pages)):
        ok = 1 <= target <= page.pages and target != page.page
        nav.append(f'<a id="page-{label}" href="/pairs{query(**ctx, page=target)}">{label}</a>' if ok
                   else f"<span>{label}</span>")
    pager = (f'<p class="pager"><span id="position">page {page.page} of {page.pages}</span> '
             f'(<span id="total">{page.total}</span> pairs) {" ".join(nav)}</p>')
    return form + pager + table([sort_link(c) for c in cols], rows, "pairs") + pager


def _side(title: str, cls: str, text: str, score, length, logp) -> str:
    return (f'<section class="side {cls}"><h2>{title} <small>score {fmt(score)} · {fmt(length)} tokens · ref log-prob '
            f'{fmt(logp)}</small></h2><div class="md" id="{cls}-text">{markdown(text)}</div></section>')


def pair_page(item: dict, *, ctx: dict, nav: tuple, csrf: str, reviewer: str | None, saved: str | None) -> str:
    r, pid = item["row"], item["pair_id"]
    prev_id, next_id, pos, total = nav
    links = [f'<a rel="prev" href="/pair/{esc(prev_id)}{query(**ctx)}">&larr; previous</a>' if prev_id else "",
             f"<span>{pos} of {total}</span>" if pos else "<span>not in the current filter</span>",
             f'<a rel="next" href="/pair/{esc(next_id)}{query(**ctx)}">next &rarr;</a>' if next_id else "",
             f'<a href="/pairs{query(**ctx)}">back to the list</a>']
    prompt = "".join(f'<div class="msg"><span class="role">{esc(m["role"])}</span><div class="md">'
                     f"{markdown(m['content'])}</div></div>" for m in r["prompt"])
    figures = [[k, fmt(r[k], 6)] for k in ("margin", "chosen_score", "rejected_score", "judge_agreement", "ches",
                                           "ln_ches", "ref_chosen_logp", "ref_rejected_logp", "label_confidence",
                                           "chosen_len", "rejected_len")]
    judgments = [[f"<code>{esc(j['judge'])}</code>", esc(j["kind"]), esc(j["aspect"]), esc(j["side"]), fmt(j["score"]),
                  "yes" if j["ok"] else "<b>no</b>", fmt(j["position_consistent"]),
                  f'<div class="plain">{esc(j["rationale"])}</div>'] for j in item["judgments"]]
    history = [[esc(lab.time), esc(lab.reviewer), f'<span class="label {esc(lab.verdict)}">{esc(lab.verdict)}</span>',
                f'<div class="plain">{esc(lab.note)}</div>'] for lab in item["labels"]]
    hidden = "".join(f'<input type="hidden" name="{k}" value="{esc(v)}">' for k, v in ctx.items())
    buttons = "".join(f'<button type="submit" name="verdict" value="{v}" id="verdict-{v}">{v}</button>'
                      for v in VERDICTS)
    form = (f"""<form method="post" action="/pair/{esc(pid)}/label" class="label-form">
<input type="hidden" name="csrf" value="{esc(csrf)}">{hidden}
<textarea name="note" id="note" rows="2" cols="80" maxlength="2000" placeholder="note (optional)"></textarea>
<div>{buttons} <span class="hint">keys: a accept, f flip, x reject, j/k next/previous</span></div></form>"""
            if reviewer else f'<p><a href="/reviewer{query(next=f"/pair/{pid}{query(**ctx)}")}">Name yourself</a> to '
            "label this pair.</p>")
    done = f'<p class="notice" id="saved">Saved: {esc(saved)}.</p>' if saved else ""
    verdict = item["verdict"]
    return f"""<nav class="pairnav">{" ".join(x for x in links if x)}</nav>{done}
<h1>Pair <code id="pair-id">{esc(pid)}</code> <span class="label {esc(verdict or '')}" id="verdict">{esc(verdict or
'unlabelled')}</span></h1>
<p>prompt <code>{esc(r['prompt_id'])}</code> · strategy <code>{esc(r['pair_strategy'])}</code> · chosen
<code>{esc(r['chosen_id'])}</code> · rejected <code>{esc(r['rejected_id'])}</code></p>
<section class="prompt"><h2>Prompt</h2>{prompt}</section>
<div class="sides">{_side("Chosen", "chosen", r["chosen"][0]["content"], r["chosen_score"], r["chosen_len"],
                          r["ref_chosen_logp"])}{_side("Rejected", "rejected", r["rejected"][0]["content"],
                          r["rejected_score"], r["rejected_len"], r["ref_rejected_logp"])}</div>
<section><h2>Rationale</h2><div class="plain" id="rationale">{esc(r['rationale'] or '(none)')}</div></section>
<section><h2>Label</h2>{form}{table(["time", "reviewer", "verdict", "note"], history, "history") if history
                                 else "<p>No labels yet.</p>"}</section>
<div class="details"><section><h2>Judgments</h2>{table(["judge", "kind", "aspect", "candidate", "score", "ok",
                                                       "position consistent", "rationale"], judgments, "judgments")
                                                 if judgments else "<p>No judge table.</p>"}</section>
<section><h2>Figures</h2>{table(["column", "value"], figures, "figures")}</section></div>"""


def unpaired_page(items: list[dict], total: int, page: int, size: int) -> str:
    pages = max(1, -(-total // size))
    nav = " ".join(f'<a href="/unpaired{query(page=p)}">{label}</a>' for label, p in
                   (("prev", page - 1), ("next", page + 1)) if 1 <= p <= pages)
    out = [f'<h1>Prompts without a pair</h1><p id="unpaired-total">{total} prompt(s); page {page} of {pages} '
           f"{nav}</p>"]
    for it in items:
        prompt = "".join(f'<div class="msg"><span class="role">{esc(m["role"])}</span><div class="md">'
                         f"{markdown(m['content'])}</div></div>" for m in it["prompt"])
        cands = [[f"<code>{esc(c['candidate_id'])}</code>", fmt(c["score"]), fmt(c["n_tokens"]),
                  "<br>".join(f"{esc(j['judge'])}: {fmt(j['score'])}{'' if j['ok'] else ' (not ok)'}"
                              for j in c["judgments"]),
                  f'<details><summary>{esc((c["text"] or "(empty)")[:80])}</summary><div class="md">'
                  f"{markdown(c['text'])}</div></details>"] for c in it["candidates"]]
        out.append(f"""<section class="unpaired" id="u-{esc(it['prompt_id'])}"><h2><code>{esc(it['prompt_id'])}</code>
</h2><p class="reason"><b>dropped at</b> {esc(it['reason'])}</p>{prompt}
{table(["candidate", "score", "tokens", "judges", "text"], cands, "candidates") if cands else "<p>No candidates.</p>"}
</section>""")
    return "".join(out)


def reviewer_page(current: str | None, csrf: str, error: str | None = None, next_url: str = "/") -> str:
    err = f'<p class="error">{esc(error)}</p>' if error else ""
    return f"""<h1>Who is reviewing?</h1>{err}<p>Labels are saved under the run's reviews/ folder with this name.</p>
<form method="post" action="/reviewer"><input type="hidden" name="csrf" value="{esc(csrf)}">
<input type="hidden" name="next" value="{esc(next_url)}">
<input name="name" id="name" value="{esc(current or '')}" maxlength="64" required>
<button type="submit" id="start">Start reviewing</button></form>"""
