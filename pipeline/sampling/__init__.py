"""Ways to sample a prompt's candidates (the generate stage's modes; self-critique and eval share candidate.py).

  candidate.py   what every candidate source shares: the seed of candidate k, the system prompt, the row
  pools.py       model pools: each prompt's n candidates from n distinct pool members (UltraFeedback)
  verbalized.py  verbalized sampling: k responses with verbalized probabilities in one reply
"""
