"""Curation: from judgments to scores, what makes a pair admissible, dedup and the reports on the data.

  aggregate.py       judgments -> one score per candidate (ensembles, pairwise outcomes), agreement figures
  pair_rules.py      near-identity of two answers; the invariants every published pairs table holds
  length_bias.py     do judges reward length; are chosen responses longer
  reward_augment.py  reward-augmented pairs (Zhang et al. 2024)
  label_quality.py   how often each judge prefers the answer a verifier found correct
  diversity.py       per-prompt diversity of candidates, by generation mode
  minhash.py         fuzzy text dedup: MinHash, LSH bands, connected components
  neardup.py         near-duplicate search over embeddings, memory linear in the prompts
"""
