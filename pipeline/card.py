"""The first dataset card: README.md with Hugging Face card YAML, built from the manifest alone.

The YAML is built with `huggingface_hub.DatasetCardData` and declares a `configs:` block whose
`data_files` point at the shard layout, so `load_dataset(RUN_DIR)` and the Hub viewer find the
`train` split. The body says what was built, by which models, what was dropped and why.
"""

from __future__ import annotations

import json

from huggingface_hub import DatasetCard, DatasetCardData


def size_category(n: int) -> str:
    for limit, label in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if n < limit:
            return label
    return "1M<n<10M"


def render(manifest: dict) -> str:
    pairs = manifest["rows"]["pairs"]
    data = DatasetCardData(
        license=manifest["config"]["resolved"]["publish"]["license"],
        language=["en"],
        task_categories=["text-generation"],
        size_categories=[size_category(pairs)],
        tags=["dpo", "preference", "synthetic", "prefsynth"],
        pretty_name=manifest["name"],
        configs=[{"config_name": "default", "data_files": [{"split": "train", "path": "pairs/train-*.parquet"}]}]
        + ([{"config_name": "ranked", "data_files": [{"split": "train", "path": "ranked/train-*.parquet"}]}]
           if manifest.get("ranked_shards") else []),
    )
    funnel = "\n".join(
        f"| {f['stage']} | {f['filter']} | {f['rows_in']} | {f['rows_out']} | {f['reason']} |" for f in manifest["funnel"]
    )
    models = manifest["models"]
    body = f"""
# {manifest['name']}

Synthetic preference pairs built by prefsynth {manifest['code_version']} (config fingerprint
`{manifest['config_fingerprint']}`): {manifest['rows']['prompts']} prompts, {manifest['rows']['candidates']}
candidates, {pairs} pairs in TRL's conversational format (`prompt`, `chosen`, `rejected`).

## Provenance
- generator: `{models['generator']}`
- judge: `{models['judge']}` (score = expectation over the probabilities of the score tokens 1-5)
- rationales: `{models.get('rationale') or 'disabled'}`
- pair strategy: `{manifest['config']['resolved']['pair']['strategy']}`, min_margin {manifest['config']['resolved']['pair']['min_margin']}

## Drop funnel
| stage | filter | rows in | rows out | reason |
|---|---|---|---|---|
{funnel}

## Load
```python
from datasets import load_dataset
pairs = load_dataset("parquet", data_files="pairs/*.parquet", split="train")
```

## Shards
```json
{json.dumps(manifest['shards'], indent=2)}
```
"""
    return DatasetCard(f"---\n{data.to_yaml()}\n---\n{body}").content
