from pipeline.publish import summary


def manifest(pairs, funnel):
    return {"name": "n", "config_fingerprint": "f", "shards": [{"path": "pairs/x", "rows": pairs, "sha256": "s"}],
            "rows": {"prompts": 2, "candidates": 4, "judgments": 4, "pairs": pairs}, "funnel": funnel,
            "timings_s": {"total": 1.0}}


FUNNEL = [{"stage": "generate", "filter": "context_limit", "rows_in": 2, "rows_out": 2, "reason": "too long"},
          {"stage": "pair", "filter": "ties", "rows_in": 2, "rows_out": 0, "reason": "ties are not paired"}]


def test_summary_warns_when_nothing_was_published():
    text = summary(manifest(0, FUNNEL), "out")
    assert "WARNING: no pairs were produced (the last rows were dropped at pair.ties" in text
    assert "WARNING" not in summary(manifest(3, FUNNEL[:1]), "out")
    assert "pair.ties" in text and "2 -> 0" in text
