"""Multi-turn conversations end to end (issue 20): a 3-turn conversation branched at every assistant turn
(`generate.turns: all`) through the real CLI on the tiny config, its pairs by turn with their histories,
and TRL's DPOTrainer taking a step on the published shard."""

import pyarrow.parquet as pq
import pytest

from tests.conftest import TINY, run_cli, write_jsonl

pytestmark = pytest.mark.slow

CHAT = [
    {"role": "user", "content": "Name a fruit that is red."},
    {"role": "assistant", "content": "An apple."},
    {"role": "user", "content": "And one that is yellow?"},
    {"role": "assistant", "content": "A banana."},
    {"role": "user", "content": "Which of the two has more potassium?"},
    {"role": "assistant", "content": "The banana."},
]


@pytest.fixture(scope="module")
def conv_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("conversation")
    f = write_jsonl(d / "chat.jsonl", [{"messages": CHAT, "prompt_id": "chat"}])
    out = d / "run"
    proc = run_cli("run", "--config", str(TINY), "--out", str(out), "--set", f"input.path={f}",
                   "--set", "generate.turns=all", "--set", "pair.strategy=all_above_margin",
                   "--set", "curate.ches.enabled=false", "--set", "rationale.enabled=false")
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out


def test_turns_all_yields_pairs_at_each_assistant_turn_with_its_history(conv_run):
    rows = pq.read_table(conv_run / "pairs").to_pylist()
    assert {r["turn"] for r in rows} == {0, 1, 2}
    for r in rows:
        t = r["turn"]
        assert r["prompt_id"] == f"chat-t{t}" and r["prompt"] == CHAT[: 2 * t + 1]  # every earlier turn, then q_t
        assert r["chosen"][0]["role"] == r["rejected"][0]["role"] == "assistant"
        assert r["chosen"][0]["content"] not in {m["content"] for m in CHAT}  # generated, not the input's reply
    card = (conv_run / "README.md").read_text()
    assert "Pairs by the assistant turn they judge" in card
    for t in (0, 1, 2):  # the card's row of each turn: its pairs and the prompt's length in messages
        n = sum(r["turn"] == t for r in rows)
        assert f"| {t} | {n} | {2 * t + 1}-{2 * t + 1} |" in card


def test_trl_dpo_trainer_steps_on_the_multi_turn_pairs(conv_run, tmp_path):
    import datasets
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer
    from trl.data_utils import is_conversational

    from pipeline.backends.model_ref import resolve

    ds = datasets.load_dataset("parquet", data_files=str(conv_run / "pairs" / "*.parquet"), split="train",
                               cache_dir=str(tmp_path / "hf-cache"))
    assert is_conversational(ds[0]) and max(len(p) for p in ds["prompt"]) == 5  # turn 2's history
    path = resolve("bundled:smollm2-135m-instruct").path
    tok = AutoTokenizer.from_pretrained(path)
    args = DPOConfig(output_dir=str(tmp_path / "dpo"), max_steps=1, per_device_train_batch_size=2, max_length=192,
                     use_cpu=True, report_to=[], save_strategy="no", logging_steps=1, dataset_num_proc=None)
    trainer = DPOTrainer(model=AutoModelForCausalLM.from_pretrained(path), args=args, train_dataset=ds,
                         processing_class=tok)
    trainer.train()
    assert trainer.state.global_step == 1
    loss = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert loss and loss[0] == loss[0]  # a finite number, not NaN


@pytest.mark.timeout(900)  # minutes of work; more when a second xdist worker shares the cores
def test_simulated_three_turn_conversations_on_the_tiny_config(tmp_path):
    """sources.conversation: the bundled model plays policy and user simulator for 3 user turns; every pair's
    prompt alternates roles and ends with a user turn; the seeded simulation is the same when run again."""
    from pipeline.config import load_config
    from pipeline.stages import conversation as simulate
    from pipeline.stages.turns import alternates

    out = tmp_path / "run"
    sets = ("input.limit=2", "sources.conversation.enabled=true", "sources.conversation.user_turns=3",
            "generate.turns=all", "curate.ches.enabled=false", "rationale.enabled=false")
    proc = run_cli("run", "--config", str(TINY), "--out", str(out), *(a for s in sets for a in ("--set", s)))
    assert proc.returncode == 0, proc.stderr[-4000:]
    conversations = pq.read_table(out / "tables" / "conversation.parquet").to_pylist()
    assert len(conversations) == 2 and all(alternates(c["messages"]) for c in conversations)
    assert max(sum(m["role"] == "user" for m in c["messages"]) for c in conversations) == 3
    rows = pq.read_table(out / "pairs").to_pylist()
    assert rows and all(alternates(r["prompt"]) for r in rows)
    assert max(r["turn"] for r in rows) >= 1  # pairs on a simulated follow-up, with the history before it
    assert "Simulated conversations (`sources.conversation`, template `user-simulator-v1`): 2" in (
        out / "README.md").read_text()
    # seeded: the stage alone, in a fresh folder, grows the same conversations
    simulate.STAGE.run(tmp_path / "again", load_config(TINY, list(sets)), None, log=lambda *_: None)
    assert pq.read_table(tmp_path / "again" / "tables" / "conversation.parquet").to_pylist() == conversations
