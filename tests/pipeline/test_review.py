"""Review labels (pipeline/review/labels.py), re-publishing with them (pipeline/publish/shards.py) and the review
app's data
(pipeline/review/view.py), on run directories written without a model (tests/review_run.py)."""

import json
import shutil

import pyarrow.parquet as pq
import pytest

from pipeline.config import load_config
from pipeline.core import funnel
from pipeline.errors import InputError
from pipeline.publish.incremental import merge
from pipeline.publish.shards import republish
from pipeline.review import labels as review
from pipeline.review.view import ReviewView
from tests.review_run import JUDGES, ROOT, build, judge_scores

N = 12


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    return build(tmp_path_factory.mktemp("review") / "run", N)


@pytest.fixture
def run(base_run, tmp_path):
    return shutil.copytree(base_run, tmp_path / "run")


def pid_of(i: int, prefix: str = "p") -> str:
    p = f"{prefix}{i:06d}"
    return review.pair_id(p, f"{p}-c0", f"{p}-c1", "best_vs_worst")


def label(reviewer: str, i: int, verdict: str, second: int, note: str = "", prefix: str = "p") -> review.Label:
    p = f"{prefix}{i:06d}"
    return review.Label(reviewer, f"2026-12-01T10:00:{second:02d}.000000+00:00", pid_of(i, prefix), verdict, note,
                        p, f"{p}-c0", f"{p}-c1")


def shard_rows(run):
    m = json.loads((run / "manifest.json").read_text())
    return [r for s in m["shards"] for r in pq.read_table(run / s["path"]).to_pylist()], m


def test_labels_are_appended_never_rewritten_and_the_latest_wins(run):
    first = review.append(run, label("alice", 0, "accept", 1))
    before = first.read_bytes()
    review.append(run, label("alice", 0, "flip", 2, note="rejected is right <b>really</b>"))
    assert first.read_bytes().startswith(before)  # appended, the old line untouched
    with open(first, "ab") as fh:  # a write interrupted half way
        fh.write(b'{"reviewer": "alice", "verdi')
    review.append(run, label("alice", 1, "reject", 3))
    (run / "reviews" / "junk.jsonl").write_text('{"reviewer": "x", "verdict": "maybe"}\nnot json\n')
    log = review.read(run)
    assert [(lab.pair_id, lab.verdict) for lab in log.labels] == [(pid_of(0), "accept"), (pid_of(0), "flip"),
                                                                  (pid_of(1), "reject")]
    assert len(log.skipped) == 3 and review.latest(log.labels)[pid_of(0)].verdict == "flip"
    with pytest.raises(InputError, match="reviewer name"):
        review.check_reviewer("../etc")
    with pytest.raises(InputError, match="verdict"):
        review.new_label("alice", {"prompt_id": "a", "chosen_id": "b", "rejected_id": "c", "pair_strategy": "s"},
                         "meh")


def test_flip_swaps_both_sides_and_reject_drops(run):
    source = review.sources(run)[0].pairs
    review.append(run, label("alice", 0, "flip", 1))
    review.append(run, label("alice", 1, "reject", 2))
    review.append(run, label("alice", 2, "accept", 3))
    out = review.apply(source, review.latest(review.read(run).labels))
    assert (out.flipped, out.rejected, out.accepted, out.table.num_rows) == (1, 1, 1, N - 1)
    before, after = source.slice(0, 1).to_pylist()[0], out.table.slice(0, 1).to_pylist()[0]
    for a, b in (("chosen", "rejected"), ("chosen_id", "rejected_id"), ("chosen_score", "rejected_score"),
                 ("chosen_len", "rejected_len"), ("ref_chosen_logp", "ref_rejected_logp")):
        assert after[a] == before[b] and after[b] == before[a]
    assert after["margin"] == pytest.approx(-before["margin"])
    assert after["pair_strategy"] == "review_flip:best_vs_worst"
    assert after["ches"] is None and after["ln_ches"] is None and after["rationale"] is None
    assert "p000001" not in out.table.column("prompt_id").to_pylist()
    assert out.table.slice(1).to_pylist() == [r for r in source.slice(2).to_pylist()]


def test_republish_applies_labels_to_shards_funnel_and_card_once(run):
    rows, _ = shard_rows(run)
    review.append(run, label("alice", 3, "flip", 1))
    review.append(run, label("alice", 4, "reject", 2))
    review.append(run, label("alice", 99, "reject", 3))  # a pair this run does not have
    m = republish(run)
    after, _ = shard_rows(run)
    assert len(after) == N - 1 and m["rows"]["pairs"] == N - 1
    flipped = next(r for r in after if r["prompt_id"] == "p000003")
    assert flipped["chosen"] == rows[3]["rejected"] and flipped["rejected_id"] == "p000003-c0"
    assert not any(r["prompt_id"] == "p000004" for r in after)
    steps = {f"{f['stage']}.{f['filter']}": f for f in m["funnel"]}
    assert (steps["review.rejected"]["rows_in"], steps["review.rejected"]["rows_out"]) == (N, N - 1)
    assert steps["review.flipped"]["changed"] == 1 and funnel.problems(m["funnel"], N - 1) == []
    assert m["review"]["applied"] == {"accept": 0, "flip": 1, "reject": 1} and m["review"]["stale_labels"] == 1
    card = (run / "README.md").read_text()
    assert "## Human review" in card and "1 flipped" in card and "1 rejected" in card
    assert "| review | rejected |" in card
    sha = [s["sha256"] for s in m["shards"]]
    assert republish(run, only_if_changed=True) == m  # nothing new: untouched
    again = republish(run)  # applied to the unreviewed pairs again, not to the reviewed shards: same result
    assert [s["sha256"] for s in again["shards"]] == sha and again["rows"]["pairs"] == N - 1


def _alpha_nominal_two_coders(units):
    """Krippendorff's alpha from the coincidence matrix, written out for two coders (an independent check)."""
    cats = sorted({v for u in units for v in u})
    o = {(c, k): 0.0 for c in cats for k in cats}
    for a, b in units:  # each pairable unit with m=2 adds (a,b) and (b,a) with weight 1/(m-1) = 1
        o[(a, b)] += 1
        o[(b, a)] += 1
    n_c = {c: sum(o[(c, k)] for k in cats) for c in cats}
    n = sum(n_c.values())
    observed = sum(o[(c, k)] for c in cats for k in cats if c != k)
    expected = sum(n_c[c] * n_c[k] for c in cats for k in cats if c != k) / (n - 1)
    return 1 - observed / expected


def _kappa_2x2(judge, human):
    cats = ["chosen", "rejected", "tie"]
    n = len(judge)
    conf = {(a, b): sum(1 for j, h in zip(judge, human) if (j, h) == (a, b)) for a in cats for b in cats}
    p_o = sum(conf[(c, c)] for c in cats) / n
    p_e = sum((sum(conf[(c, b)] for b in cats) / n) * (sum(conf[(a, c)] for a in cats) / n) for c in cats)
    return (p_o - p_e) / (1 - p_e)


def test_two_reviewers_give_the_agreement_figures_computed_here(run):
    alice = ["flip", "accept", "accept", "flip", "accept", "reject", "flip", "accept", "accept", "accept"]
    bob = ["flip", "accept", "flip", "flip", "accept", "reject", "accept", "accept", "reject", None]
    second = 0
    for i, v in enumerate(alice):
        second += 1
        review.append(run, label("alice", i, v, second))
    review.append(run, label("bob", 2, "accept", 30))  # bob changes his mind on pair 2: his latest counts
    for i, v in enumerate(bob):
        if v is not None:
            review.append(run, label("bob", i, v, 31 + i))
    m = republish(run)
    ag = m["review"]["agreement"]
    human = [(i, v) for labels in (alice, bob) for i, v in enumerate(labels) if v in ("accept", "flip")]
    truth = ["chosen" if v == "accept" else "rejected" for _, v in human]
    for judge, k in zip(JUDGES, (0, 1)):
        prefs = []
        for i, _ in human:
            c, r = judge_scores(i)[k]
            prefs.append("chosen" if c > r else "rejected")
        got = ag["judges"][judge]
        assert got["labels"] == len(human) == 16
        assert got["accuracy"] == round(sum(p == t for p, t in zip(prefs, truth)) / len(truth), 4)
        assert got["kappa"] == round(_kappa_2x2(prefs, truth), 4)
    units = [(a, b) for a, b in zip(alice, bob) if b is not None]
    assert ag["reviewers_alpha"] == round(_alpha_nominal_two_coders(units), 4)
    assert ag["reviewers"] == {"alice": 10, "bob": 9} and ag["pairs_with_several_reviewers"] == 9
    # applied: the latest label of any reviewer (bob labelled after alice): flips 0, 2, 3; rejects 5, 8
    assert m["review"]["applied"] == {"accept": 5, "flip": 3, "reject": 2}
    rows, _ = shard_rows(run)
    assert {r["prompt_id"] for r in rows if r["pair_strategy"].startswith("review_flip:")} == \
        {"p000000", "p000002", "p000003"}
    card = (run / "README.md").read_text()
    assert f"Krippendorff alpha between reviewers (nominal, over verdicts): {ag['reviewers_alpha']}" in card


def test_incremental_merges_keep_labels_of_earlier_increments(tmp_path):
    out = tmp_path / "grown"
    cfg = load_config(ROOT / "data" / "configs" / "tiny.yaml")
    inc1 = build(out / "increments" / "00001", 5, card=False, prefix="a")
    merge(out, inc1, json.loads((inc1 / "manifest.json").read_text()), cfg)
    review.append(out, label("alice", 0, "flip", 1, prefix="a"))
    review.append(out, label("alice", 1, "reject", 2, prefix="a"))
    inc2 = build(out / "increments" / "00002", 4, card=False, prefix="b")
    m = merge(out, inc2, json.loads((inc2 / "manifest.json").read_text()), cfg)
    assert m["rows"]["pairs"] == 8 and funnel.problems(m["funnel"], 8) == []
    by_path = {s["path"]: s for s in m["shards"]}
    first = pq.read_table(out / "pairs" / "train-inc00001-00000-of-00001.parquet").to_pylist()
    assert len(first) == 4 and first[0]["pair_strategy"] == "review_flip:best_vs_worst"
    second = by_path["pairs/train-inc00002-00000-of-00001.parquet"]
    assert second["sha256"] == json.loads((inc2 / "manifest.json").read_text())["shards"][0]["sha256"]  # a copy
    assert m["review"]["applied"] == {"accept": 0, "flip": 1, "reject": 1}
    review.append(out, label("bob", 2, "flip", 3, prefix="b"))  # a label on the new increment, applied by `card`
    again = republish(out)
    assert again["rows"]["pairs"] == 8 and again["review"]["applied"]["flip"] == 2
    view = ReviewView(out)  # the app reads a grown dataset too: every increment's pairs, before review
    assert view.pairs.num_rows == 9 and view.page(where="label = 'flip'").total == 2


def test_review_view_pages_filters_and_explains_unpaired_prompts(run):
    view = ReviewView(run)
    page = view.page(where="margin > 1.5", sort="margin", desc=True, page=1, size=4)
    margins = sorted((r["margin"] for r in view.pairs.to_pylist() if r["margin"] > 1.5), reverse=True)
    assert page.total == len(margins) and [r["margin"] for r in page.rows] == margins[:4]
    assert view.page(where="margin > 1.5", sort="margin", desc=True, page=2, size=4).rows[0]["margin"] == margins[4]
    with pytest.raises(InputError, match="not a valid filter"):
        view.page(where="nope > 1")
    with pytest.raises(InputError, match="reads other tables"):
        view.page(where="margin > (SELECT count(*) FROM read_csv('/etc/hostname'))")
    with pytest.raises(InputError, match="sort column"):
        view.page(sort="margin; drop")
    items, total, _ = view.unpaired()
    reasons = {it["prompt_id"]: it["reason"] for it in items}
    assert total == 3 and reasons["u-too-few"].startswith("pair.too_few_scored")
    assert reasons["u-tie"].startswith("pair.ties") and reasons["u-none"].startswith("generate: no candidates")
    item = view.pair(pid_of(0))
    assert {j["side"] for j in item["judgments"]} == {"chosen", "rejected"} and len(item["judgments"]) == 4
    view.add_label("alice", pid_of(0), "reject", "off topic")
    assert view.page(where="label = 'reject'").total == 1 and view.pending()
    with pytest.raises(InputError, match="increment"):
        ReviewView(build(run / "increments" / "00001", 2, card=False))
