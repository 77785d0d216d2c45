"""Prefect flows over the pipeline's stages, and the `prefsynth` command line. Flows only wire.

  build_dataset.py  the stages of pipeline/stages/order.py in order, then publish (`prefsynth run`)
  distributed.py    task runners: every stage in process, or the prompt-sharded ones on Ray
  train.py          `train` and `build_and_train`: DPO on a run's shards
  evaluate.py       `eval`: a trained policy against a baseline
  iterate.py        `iterate`: rounds of build_dataset -> train -> eval
  serve.py          `serve`: build_dataset as a scheduled deployment that grows a dataset
  cli/              the command line: arguments, commands, the guarded Prefect API
  review/           `prefsynth review`: the local web app over pipeline/review/
"""
