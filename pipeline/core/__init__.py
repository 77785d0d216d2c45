"""The machinery every stage runs on: declaration and runner, table contracts, run storage, accounting.

  runner.py      `Stage` (a stage's declaration: reads, writes, fingerprint, work) and the one runner for all
                 stages: reuse, read, chunked work, usage booking, commit (docs/architecture.md)
  store.py       where a stage's output lives under RUN/tables/ and how it survives a crash (parts, commit point)
  rowindex.py    a table's rows grouped by key once, so each chunk reads its own rows only
  schemas.py     the table contracts (prompts, candidates, judgments, pairs, ...) as pyarrow schemas; all parquet IO
  rundir.py      reading a run directory (kind, manifest, shards), verified before use; output-folder checks
  funnel.py      the drop funnel: each filter's rows in and out, chained and checked
  accounting.py  tokens and dollars per request, the stage ledger and `budget.usd`
  encoding.py    how a (prompt, response) pair becomes token ids, shared by CHES, reference log-probs and training
  progress.py    progress bars with live tokens/s

Imports: pipeline.config and pipeline.errors only (tests/test_layout.py).
"""
