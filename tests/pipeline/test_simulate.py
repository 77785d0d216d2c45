"""The user simulator's pure parts (pipeline/stages/conversation.py); the stage end to end is in
tests/flows/test_conversations.py."""

import pytest

from pipeline.config import RunConfig, load_config
from pipeline.stages.conversation import SIMULATOR_SYSTEM, clean, fields, transcript
from pipeline.stages.turns import alternates


@pytest.mark.parametrize("raw,want", [
    ("Here's your next message:\n\n\"Can you give an example?\"", "Can you give an example?"),
    ("\"Can you explain what a hash map is", "Can you explain what a hash map is"),
    ("USER: why is that?", "why is that?"),
    ("Sure, here it is: How long does it take?", "How long does it take?"),
    ("What is 2:3 as a fraction?", "What is 2:3 as a fraction?"),
    ("   ", ""),
])
def test_clean_drops_lead_ins_labels_and_quotes(raw, want):
    assert clean(raw) == want


def test_transcript_alternation_and_the_documented_system_prompt():
    msgs = [{"role": "system", "content": "s"}, {"role": "user", "content": "q"},
            {"role": "assistant", "content": "a"}, {"role": "user", "content": "f"}]
    assert transcript(msgs) == "USER: q\nASSISTANT: a\nUSER: f"
    assert alternates(msgs) and not alternates(msgs[:3]) and not alternates([msgs[0], msgs[2], msgs[1]])
    assert "{persona}" in SIMULATOR_SYSTEM and "{goal}" in SIMULATOR_SYSTEM


def test_the_stage_counts_only_when_on():
    assert fields(RunConfig()) == {}  # off: no stage field, so configs from before it keep their fingerprint
    on = load_config(None, ["sources.conversation.enabled=true", "sources.conversation.persona=a chemist"])
    assert fields(on)["conversation"]["persona"] == "a chemist"
    assert fields(on) == fields(load_config(None, ["sources.conversation.enabled=true",
                                                   "sources.conversation.persona=a chemist",
                                                   "sources.conversation.batch_size=2"]))  # operational
