"""Run configuration: one typed model per stage, validated at load (docs/architecture.md rule 3).

A config is YAML. Unknown keys and bad values raise `ConfigError` naming the key, the value and
the fix. `--set a.b=value` overrides are parsed as YAML scalars and applied before validation, so
they are checked exactly like file values. Each field is documented once, here; `prefsynth run
--help` and docs/reference/config.md (generated: python -m flows.cli.docs_gen) read these fields.

Fingerprints: each stage owns the fields that change its output (`fields(cfg)` in the stage's
module, docs/architecture.md rule 4): batch sizes, progress bars and paths of the run dir are left out.

Modules, one way down (each imports only those above it in this list):
  base.py        what every section shares (no unknown keys, checked assignments) and the fingerprint hash
  generation.py  generate: backends, engine and endpoint options, pools
  judging.py     judge: LLM judges, reward models, verifiers, prices and budget
  curation.py    pair strategy, CHES, dedup, decontamination, rationales, shards
  sources.py     self-critique, reward-augmented rewrites, simulated conversations
  synth.py       input.synth: prompt synthesis
  loop.py        eval and iterate
  run.py         RunConfig: the whole run, and each stage's fingerprint fields
  loading.py     YAML files, `--set` overrides, errors that name the key, the value and the fix
Import from `pipeline.config`; the names below are its surface.
"""

from pipeline.config.base import _Section, fingerprint
from pipeline.config.curation import (
                                      CHESConfig,
                                      CurateConfig,
                                      DecontaminateConfig,
                                      DedupConfig,
                                      MinHashConfig,
                                      PairConfig,
                                      PublishConfig,
                                      RationaleConfig,
)
from pipeline.config.generation import GenerateConfig, OpenAIConfig, PoolMember, VllmEngineConfig
from pipeline.config.judging import (
                                      SCORING_FIELDS,
                                      BudgetConfig,
                                      JudgeConfig,
                                      JudgeOpenAIConfig,
                                      LLMJudgeConfig,
                                      PriceConfig,
                                      RewardModelConfig,
)
from pipeline.config.loading import apply_overrides, describe_keys, load_config, load_model, load_yaml, parse_override
from pipeline.config.run import DistributedConfig, InputConfig, RunConfig
from pipeline.config.sources import PrincipleConfig, RewardAugmentedConfig, SelfCritiqueConfig, SourcesConfig
from pipeline.errors import ConfigError

__all__ = [
    "SCORING_FIELDS",
    "BudgetConfig",
    "CHESConfig",
    "ConfigError",
    "CurateConfig",
    "DecontaminateConfig",
    "DedupConfig",
    "DistributedConfig",
    "GenerateConfig",
    "InputConfig",
    "JudgeConfig",
    "JudgeOpenAIConfig",
    "LLMJudgeConfig",
    "MinHashConfig",
    "OpenAIConfig",
    "PairConfig",
    "PoolMember",
    "PriceConfig",
    "PrincipleConfig",
    "PublishConfig",
    "RationaleConfig",
    "RewardAugmentedConfig",
    "RewardModelConfig",
    "RunConfig",
    "SelfCritiqueConfig",
    "SourcesConfig",
    "VllmEngineConfig",
    "_Section",
    "apply_overrides",
    "describe_keys",
    "fingerprint",
    "load_config",
    "load_model",
    "load_yaml",
    "parse_override",
]
