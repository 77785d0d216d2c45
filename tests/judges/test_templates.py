"""Judge templates see the whole conversation and say which turn is judged (issue 20); a single-turn prompt
renders exactly as before."""

from judges.templates import ABSOLUTE_1TO5_V1, PAIRWISE_AB_V1, render_conversation

HISTORY = [
    {"role": "user", "content": "Name a red fruit."},
    {"role": "assistant", "content": "An apple."},
    {"role": "user", "content": "And a yellow one?"},
]


def test_multi_turn_rendering_keeps_every_turn_and_names_the_judged_turn():
    text = render_conversation(HISTORY)
    assert text.startswith("USER: Name a red fruit.\nASSISTANT: An apple.\nUSER: And a yellow one?\n\n")
    assert "assistant's turn 2 of this conversation" in text and "reply to the last USER message" in text
    for msgs in (ABSOLUTE_1TO5_V1.messages(HISTORY, "A banana."), PAIRWISE_AB_V1.messages(HISTORY, "x", "y")):
        assert "ASSISTANT: An apple." in msgs[1]["content"] and "turn 2" in msgs[1]["content"]


def test_single_turn_rendering_is_unchanged():
    assert render_conversation(HISTORY[:1]) == "USER: Name a red fruit."
    system = [{"role": "system", "content": "be brief"}, HISTORY[0]]
    assert render_conversation(system) == "SYSTEM: be brief\nUSER: Name a red fruit."
