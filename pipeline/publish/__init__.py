"""What a run hands over: shards, manifest and card, the Hub, and datasets that grow.

  shards.py       the publish step after the last stage: parquet shards, manifest.json, the card
  card.py         the dataset card (README.md) from the manifest and tables alone
  plots.py        the card's figures (matplotlib, Agg)
  hub.py          `prefsynth push`: one commit to the Hugging Face Hub
  incremental.py  `--incremental` and `serve`: one output dataset that grows with its prompt source
"""
