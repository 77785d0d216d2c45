from pipeline.publish.shards import summary


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


def test_prompt_drops_come_from_the_table_the_manifest_names(tmp_path):
    from pipeline.core import schemas
    from pipeline.core.rundir import prompt_drops
    from pipeline.publish.incremental import _sum_prompt_drops

    rows = [{"prompt_id": f"p{i}", "filter": "near_duplicate", "match": "p0", "score": 0.95} for i in range(1, 31)]
    schemas.write_table(
        schemas.from_rows(rows, "prompt_drops"),
        tmp_path / "inc" / "tables" / "prompt_filter.drops.parquet",
        "prompt_drops",
    )
    m = {"prompt_drops": {"counts": {"near_duplicate": 30}, "tables": ["tables/prompt_filter.drops.parquet"]}}
    counts, first, tables = prompt_drops(tmp_path / "inc", m, limit=20)
    assert counts == {"near_duplicate": 30} and first == rows[:20] and tables == ["tables/prompt_filter.drops.parquet"]
    # manifests from before the table listed every drop
    old = {"prompt_drops": [{"prompt_id": "p2", "filter": "decontaminate", "match": "gsm:1"}]}
    assert prompt_drops(tmp_path, old) == ({"decontaminate": 1}, old["prompt_drops"], [])
    merged = _sum_prompt_drops(tmp_path, [{"dir": "inc"}, {"dir": "old"}], [m, old])
    assert merged == {
        "counts": {"near_duplicate": 30, "decontaminate": 1},
        "tables": ["inc/tables/prompt_filter.drops.parquet"],
    }
    assert prompt_drops(tmp_path, {"prompt_drops": merged}, limit=3)[1] == rows[:3]


def test_publish_keeps_embedder_figures_for_their_key_and_recomputes_on_change(tmp_path):
    from pipeline.publish.shards import _cached

    (tmp_path / "tables").mkdir()
    calls = []

    def compute():
        calls.append(1)
        return {"sample": {"prompts": 3, "embedding_distance": 0.25}}

    first = _cached(tmp_path, "diversity", "k1", compute)
    assert _cached(tmp_path, "diversity", "k1", compute) == first and len(calls) == 1  # a rerun embeds nothing
    assert _cached(tmp_path, "diversity", "k2", compute) == first and len(calls) == 2  # new candidates: again
    (tmp_path / "tables" / "publish.diversity.json").write_text("{torn")
    assert _cached(tmp_path, "diversity", "k2", compute) == first and len(calls) == 3  # damaged: computed again
