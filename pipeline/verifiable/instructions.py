"""Instruction-following prompts: everyday tasks with IFEval-style constraints, checked by program
(judges/constraints.py).

Each prompt is a base task ("Describe a sunset.") followed by the instruction text of one or two constraints drawn
from MENU ("Answer with less than 15 words."), and carries the spec `{"kind": "constraints", "constraints": [...]}`
under `verify`, so the verifier judge checks every candidate by program: pass when all hold, scored by the fraction
that hold. MENU keeps the types the bundled 135M model passes sometimes (its measured pass rates are in the
comment below): a type it always or never passes gives no preference pair. Two constraints of one prompt come
from different groups, so they never contradict each other (two length limits, two start rules).

The split is by base task: a task's prompts are all in train or all in held-out, so a held-out prompt never shares
its task with a train prompt (what a gain on held-out prompts must not be explained by). Everything is seeded by
`seed` alone; `category` names the constraint types.

    python -m pipeline.verifiable.instructions --seed 0 --out-dir data/prompts   # the bundled files
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from judges.constraints import describe, validate

# Everyday requests; short, so the constraint text dominates neither the prompt nor the answer.
BASE_TASKS = [
    "Describe a sunset.", "Give advice on saving money.", "Explain why sleep is important.", "Tell me about cats.",
    "Suggest a healthy breakfast.", "Describe your ideal vacation.", "Explain how to make tea.",
    "Give tips for studying.", "Describe the ocean.", "Explain what a computer does.", "Recommend a hobby.",
    "Describe a rainy day.", "Explain why exercise is good for you.", "Tell me about dogs.",
    "Give advice on making friends.", "Describe a busy city street.", "Explain how plants grow.",
    "Suggest a name for a pet goldfish.", "Describe your favorite season.", "Give tips for a job interview.",
    "Explain what the moon is.", "Describe a forest in autumn.", "Give advice for a first day at school.",
    "Explain how to boil an egg.", "Tell me about the sun.", "Suggest a fun weekend activity.",
    "Describe a birthday party.", "Explain why we should drink water.", "Give tips for better sleep.",
    "Describe a mountain.", "Explain how a bicycle works.", "Recommend a book genre for a teenager.",
    "Describe a snowy morning.", "Give advice on staying calm.", "Explain what rain is.",
    "Tell me about elephants.", "Suggest a gift for a friend.", "Describe a farm.", "Explain how to plant a tree.",
    "Give tips for learning a new language.", "Describe a library.", "Explain why reading is useful.",
    "Tell me about the stars.", "Suggest a simple dinner recipe.", "Describe a beach in summer.",
    "Give advice on being on time.", "Explain what a rainbow is.", "Describe a garden.",
    "Explain how to wash your hands.", "Give tips for keeping a room tidy.", "Tell me about birds.",
    "Suggest a way to relax after work.", "Describe a train journey.", "Explain why trees are important.",
    "Give advice on writing a letter.", "Describe a kitchen.", "Explain what a river is.",
    "Tell me about honey bees.", "Suggest a game for children.", "Describe a thunderstorm.",
    "Give tips for cooking rice.", "Explain why friends matter.", "Describe a market.",
    "Explain how to ride a bike.", "Give advice on planning a trip.", "Tell me about the desert.",
    "Suggest a good habit to start.", "Describe a park in spring.", "Explain what clouds are.",
    "Give tips for drinking more water.", "Describe a coffee shop.", "Explain how to write a shopping list.",
    "Tell me about horses.", "Suggest a color for a bedroom.", "Describe a quiet night.",
    "Give advice on learning to cook.", "Explain why music is enjoyable.", "Describe a classroom.",
    "Explain how to make a sandwich.", "Give tips for walking more.", "Tell me about apples.",
    "Suggest a movie night snack.", "Describe a lake.", "Explain why we recycle.",
    "Give advice on keeping a diary.", "Describe a zoo.", "Explain what wind is.", "Tell me about penguins.",
    "Suggest a way to save energy at home.", "Describe a bakery.", "Give tips for a long car ride.",
    "Explain how to fold a shirt.", "Describe a picnic.", "Explain why breakfast matters.",
    "Tell me about the rainforest.", "Suggest a houseplant for beginners.", "Describe an old house.",
    "Give advice on talking to a new neighbor.", "Explain what snow is.", "Describe a hospital waiting room.",
]

KEYWORDS = ["happy", "blue", "simple", "friend", "light", "morning", "gentle", "bright", "calm", "home"]


def _c(cid: str, **kwargs) -> dict:
    return {"id": cid, "kwargs": kwargs}


# name -> (group, maker(rng) -> constraint spec). The group keeps two constraints of one prompt from contradicting
# each other (two length limits, two start/end rules). Pass rates of the base model (T=1, 80 new tokens, see the
# report's "probe" or the commit message) pick the mix: types the model passes sometimes, easy and medium.
MENU = {
    "words_lt_15": ("length", lambda r: _c("length_constraints:number_words", relation="less than", num_words=15)),
    "words_lt_30": ("length", lambda r: _c("length_constraints:number_words", relation="less than", num_words=30)),
    "sentences_lt_3": ("length", lambda r: _c("length_constraints:number_sentences", relation="less than",
                                              num_sentences=3)),
    "keyword": ("keyword", lambda r: _c("keywords:existence", keywords=[r.choice(KEYWORDS)])),
    "start_sure": ("start", lambda r: _c("startend:start_checker", start_phrase="Sure")),
    "no_comma": ("comma", lambda r: _c("punctuation:no_comma")),
    "title": ("title", lambda r: _c("detectable_format:title")),
    "highlight": ("highlight", lambda r: _c("detectable_format:number_highlighted_sections", num_highlights=1)),
    "postscript": ("end", lambda r: _c("detectable_content:postscript", postscript_marker="P.S.")),
    "forbidden_the": ("forbidden", lambda r: _c("keywords:forbidden_words", forbidden_words=["the"])),
    "placeholder": ("placeholder", lambda r: _c("detectable_content:number_placeholders", num_placeholders=1)),
}
# Base model pass rates, strict, one constraint per prompt, 12 base tasks x 4 samples, T=1, 80 new tokens:
# words<15 .38, words<30 .83, sentences<3 .73, keyword .27, start "Sure" .12, no comma .21, title .94,
# highlight(1) .60, postscript .27, forbidden "the" .27, placeholder(1) .50; never passed: quotation, all
# lowercase, all capitals; words>=40 .90. The default mix leaves out the near-always (title, words<30) and never ones.
DEFAULT_MIX = "words_lt_15,sentences_lt_3,keyword,start_sure,no_comma,postscript,highlight,placeholder"




def make(seed: int = 0, *, mix: list[str] | None = None, n_tasks: int = 100, per_task: int = 2,
         two_prob: float = 0.3, heldout_frac: float = 0.3) -> tuple[list[dict], list[dict]]:
    """(train rows, held-out rows): `n_tasks` base tasks, each crossed with `per_task` distinct constraint sets of
    one type, or two with probability `two_prob`; `heldout_frac` of the tasks go to held-out. `category` lists the
    MENU names in the order of the spec's constraints. (bench/improve.py's recorded runs used these defaults.)"""
    mix = mix or DEFAULT_MIX.split(",")
    unknown = [m for m in mix if m not in MENU]
    if unknown:
        raise ValueError(f"unknown constraint type {unknown[0]!r}; fix: use some of {', '.join(MENU)}")
    if not 2 <= n_tasks <= len(BASE_TASKS):
        raise ValueError(f"n_tasks={n_tasks}; fix: a number from 2 to {len(BASE_TASKS)}")
    rng = random.Random(f"prompts-{seed}")
    tasks = list(BASE_TASKS)
    rng.shuffle(tasks)
    tasks = tasks[:n_tasks]
    held = set(tasks[: min(n_tasks - 1, max(1, round(heldout_frac * n_tasks)))])
    train_rows, held_rows = [], []
    for ti, task in enumerate(tasks):
        seen: set[tuple[str, ...]] = set()
        for j in range(per_task):
            for _ in range(20):  # distinct constraint sets per task, as far as the mix allows
                names = [rng.choice(mix)]
                if rng.random() < two_prob:
                    others = [m for m in mix if MENU[m][0] != MENU[names[0]][0]]
                    if others:
                        names.append(rng.choice(others))
                if tuple(sorted(names)) not in seen:
                    break
            seen.add(tuple(sorted(names)))
            constraints = [MENU[n][1](rng) for n in names]
            validate(constraints)
            row = {"prompt_id": f"s{seed}-t{ti:03d}-{j}",
                   "messages": [{"role": "user", "content": f"{task} {describe(constraints)}"}],
                   "category": "+".join(names),
                   "verify": {"kind": "constraints", "constraints": constraints}}
            (held_rows if task in held else train_rows).append(row)
    return train_rows, held_rows


def task_of(row: dict) -> str:
    """The base task a row was made from (its prompt starts with it)."""
    text = row["messages"][0]["content"]
    return max((t for t in BASE_TASKS if text.startswith(t + " ")), key=len)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pipeline.verifiable.instructions",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-tasks", type=int, default=100)
    parser.add_argument("--per-task", type=int, default=2)
    parser.add_argument("--out-dir", type=Path, required=True,
                        help="writes instructions_train.jsonl and instructions_heldout.jsonl there")
    args = parser.parse_args(argv)
    train_rows, held_rows = make(args.seed, n_tasks=args.n_tasks, per_task=args.per_task)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train", train_rows), ("heldout", held_rows)):
        (args.out_dir / f"instructions_{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"{len(train_rows)} train and {len(held_rows)} held-out prompts in {args.out_dir}")


if __name__ == "__main__":
    main()
