"""A chunk's work reads the chunk's rows, not the whole upstream table (issue 37).

Filtering the whole input for every chunk (run_in_parts) or rebuilding the judge's prompt dicts from the whole
prompts table for every chunk makes a stage quadratic in the run: invisible at test sizes in seconds, so these
tests count rows instead. Every chunked stage gets its rows through run_in_parts; the judge also looks prompts up.
"""

from __future__ import annotations

import pyarrow as pa

from judges.absolute import Judgment
from pipeline.config import load_config
from pipeline.core import schemas
from pipeline.core.rowindex import RowIndex
from pipeline.core.store import StageStore, run_in_parts
from pipeline.stages import judge

N_PROMPTS, CHUNK = 120, 4


class CountingTable:
    """A table that counts the rows its readers touch: a whole column or a filter reads every row, a slice or a
    take its own. Any other use fails, so a reader cannot go around the count."""

    def __init__(self, table: pa.Table):
        self._t, self.rows_read = table, 0

    @property
    def num_rows(self) -> int:
        return self._t.num_rows

    def column(self, name):
        self.rows_read += self._t.num_rows
        return self._t.column(name)

    def filter(self, mask):
        self.rows_read += self._t.num_rows
        return self._t.filter(mask)

    def take(self, indices):
        self.rows_read += len(indices)
        return self._t.take(indices)

    def slice(self, offset=0, length=None):
        out = self._t.slice(offset, length)
        self.rows_read += out.num_rows
        return out

    def __getattr__(self, name):
        raise AssertionError(f"CountingTable: {name} is not counted; fix: add it to the test's CountingTable")


def candidates(n_prompts: int, per_prompt: int = 3, *, interleave: bool = False) -> pa.Table:
    order = ([(i, k) for k in range(per_prompt) for i in range(n_prompts)] if interleave
             else [(i, k) for i in range(n_prompts) for k in range(per_prompt)])
    return schemas.from_rows([{"prompt_id": f"p{i:04d}", "candidate_id": f"p{i:04d}-{k:02d}", "generator": "g",
                               "sampling": None, "text": f"answer {k} to {i}", "n_tokens": 3, "finish_reason": "stop"}
                              for i, k in order], "candidates")


def test_run_in_parts_reads_each_chunk_not_the_whole_input(tmp_path):
    table = CountingTable(candidates(N_PROMPTS))
    store = StageStore(tmp_path, "s", "candidates", "fp")
    run_in_parts(store, table, CHUNK, lambda: lambda subset: (subset, {}))
    # one pass to group rows by prompt, then each chunk its own rows: linear. Filtering the whole input per
    # chunk reads (1 + N_PROMPTS / CHUNK) x the rows (31x here).
    assert table.rows_read <= 2 * table.num_rows, table.rows_read


def test_chunks_get_their_rows_in_input_order_when_a_prompts_rows_are_apart(tmp_path):
    table = candidates(10, interleave=True)  # p0 p1 ... p9 p0 p1 ...: a chunk's rows are not contiguous
    store = StageStore(tmp_path, "s", "candidates", "fp")
    seen = []
    parts = run_in_parts(store, table, 3, lambda: lambda subset: (seen.append(subset), (subset, {}))[1])
    keys = [f"p{i:04d}" for i in range(10)]
    assert [sorted(set(s.column("prompt_id").to_pylist())) for s in seen] == [keys[0:3], keys[3:6], keys[6:9],
                                                                                keys[9:]]
    for subset in seen:  # exactly the rows a filter of the whole table gives, in the same order
        wanted = set(subset.column("prompt_id").to_pylist())
        assert subset.equals(table.filter(pa.array([p in wanted for p in table.column("prompt_id").to_pylist()])))
    assert sum(t.num_rows for t, _ in parts) == table.num_rows


def test_row_index_keys_are_in_first_appearance_order_and_unknown_keys_have_no_rows():
    index = RowIndex(candidates(5, interleave=True))
    assert index.keys == [f"p{i:04d}" for i in range(5)]
    assert index.take(["nope"]).num_rows == 0
    assert index.take(["p0003", "nope"]).column("candidate_id").to_pylist() == ["p0003-00", "p0003-01", "p0003-02"]


class StubJudge:
    """An absolute judge that needs no model: scores every candidate 1.0."""

    kind, id, aspect = "absolute", "stub@0|stub-v1", "overall"

    def score(self, items, references=None):
        return [Judgment(1.0, True, "{}") for _ in items]


def test_judge_stage_chunk_looks_up_only_its_own_prompts(tmp_path, monkeypatch):
    tables = tmp_path / "tables"
    tables.mkdir()
    prompts = schemas.from_rows([{"prompt_id": f"p{i:04d}", "messages": [{"role": "user", "content": f"q{i}"}]}
                                 for i in range(N_PROMPTS)], "prompts")
    schemas.write_table(prompts, tables / "prompts.parquet", "prompts")
    schemas.write_table(candidates(N_PROMPTS), tables / "generate.parquet", "candidates")
    cfg = load_config(None, ["judge.backend=openai", "judge.model=served-judge", "judge.openai.base_url=http://x/v1",
                             f"publish.chunk_prompts={CHUNK}"])
    monkeypatch.setattr(judge, "build_judges", lambda cfg, **kw: [StubJudge()])
    looked_up = []
    real = judge.judge_candidates

    def recording(prompts, subset, *args, **kwargs):
        looked_up.append((prompts.num_rows, len(set(subset.column("prompt_id").to_pylist()))))
        return real(prompts, subset, *args, **kwargs)

    monkeypatch.setattr(judge, "judge_candidates", recording)
    meta = judge.run(tmp_path, cfg, "candidates-fp", log=lambda *a: None)
    assert meta["rows"] == 3 * N_PROMPTS
    assert len(looked_up) == N_PROMPTS // CHUNK
    # each chunk's prompt lookup holds that chunk's prompts; the whole prompts table per chunk was the quadratic
    assert all(n_prompts == n_chunk for n_prompts, n_chunk in looked_up), looked_up[:3]
