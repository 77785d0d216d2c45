"""pipeline/verifiable/generator.py: deterministic rows, the bundled file, and
every spec checked against an answer worked out
here from the prompt's text alone, by code that shares nothing with the generator (SI base units, date ordinals,
decimals); python rows run their reference solution against their tests."""

import datetime as dt
import json
import random
import re
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest

from judges.verifier import check
from pipeline.config import InputConfig
from pipeline.errors import ConfigError
from pipeline.stages.prompts import load_prompts
from pipeline.verifiable.generator import FAMILIES, make, reference_solution

ROOT = Path(__file__).resolve().parents[2]
BUNDLED = ROOT / "data" / "prompts" / "verifiable.jsonl"
D = Decimal
DATE = r"(\d{4}-\d\d-\d\d)"
# unit -> (quantity, size in the SI unit of that quantity); temperatures go through kelvin
SI = {"kilometers": ("m", D(1000)), "miles": ("m", D("1609.344")), "meters": ("m", D(1)), "feet": ("m", D("0.3048")),
      "centimeters": ("m", D("0.01")), "inches": ("m", D("0.0254")), "kilograms": ("kg", D(1)),
      "pounds": ("kg", D("0.45359237")), "ounces": ("kg", D("0.028349523125")), "grams": ("kg", D("0.001")),
      "liters": ("l", D(1)), "US gallons": ("l", D("3.785411784"))}
ZERO_C = D("273.15")
TO_KELVIN = {"degrees Celsius": lambda x: x + ZERO_C, "degrees Fahrenheit": lambda x: (x - 32) * 5 / 9 + ZERO_C}
FROM_KELVIN = {"degrees Celsius": lambda k: k - ZERO_C, "degrees Fahrenheit": lambda k: (k - ZERO_C) * 9 / 5 + 32}
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]


def _ordinal(iso: str) -> int:
    return dt.date.fromisoformat(iso).toordinal()


def _shift(iso: str, days: int) -> str:
    return dt.date.fromordinal(_ordinal(iso) + days).isoformat()


def _weekday(ordinal: int) -> str:
    return DAYS[(ordinal - 1) % 7]  # ordinal 1 (0001-01-01) was a Monday


def _convert(x: str, src: str, dst: str) -> Decimal:
    if src in TO_KELVIN:
        return FROM_KELVIN[dst](TO_KELVIN[src](D(x)))
    assert SI[src][0] == SI[dst][0], (src, dst)
    return D(x) * SI[src][1] / SI[dst][1]


# (pattern, answer from its groups): every prompt matches exactly one
SOLVERS = [
    (r"buys (\d+) packs of \w+\. Each pack holds (\d+) \w+\. \w+ then gives away (\d+)",
     lambda a, b, c: D(a) * D(b) - D(c)),
    (r"buys (\d+) \w+ at \$([\d.]+) each and pays with a \$(\d+) bill", lambda q, p, bill: D(bill) - D(q) * D(p)),
    (r"at (\d+) km/h for ([\d.]+) hours and then at (\d+) km/h for ([\d.]+) hours",
     lambda v, t, w, u: D(v) * D(t) + D(w) * D(u)),
    (r"has \$(\d+)\. \w+ spends (\d+)% of it on \w+ and then \$(\d+) on lunch",
     lambda m, pct, s: D(m) - D(m) * D(pct) / 100 - D(s)),
    (r"average of (\d+) numbers is (\d+)\. After one more number is added, the average of all (\d+) numbers is (\d+)",
     lambda k, avg, k1, avg2: D(k1) * D(avg2) - D(k) * D(avg)),
    (r"Adult tickets cost \$([\d.]+) and child tickets cost \$([\d.]+)\. A group buys (\d+) adult tickets and (\d+)",
     lambda a, c, na, nc: D(na) * D(a) + D(nc) * D(c)),
    (r"costs \$(\d+)\. It is discounted by (\d+)%, and then a (\d+)% sales tax",
     lambda p, d, t: D(p) * (100 - D(d)) / 100 * (100 + D(t)) / 100),
    (r"fills (\d+) bottles per minute\. How many bottles does it fill in (\d+) hours? and (\d+) minutes",
     lambda r, h, m: D(r) * (D(h) * 60 + D(m))),
    (r"^Convert (-?[\d.]+) (.+?) to (.+?)\. Round", _convert),
    (rf"What day of the week is (\d+) days after {DATE}\?", lambda n, d: _weekday(_ordinal(d) + int(n))),
    (rf"What is the date (\d+) days after {DATE}\?", lambda n, d: _shift(d, int(n))),
    (rf"What was the date (\d+) days before {DATE}\?", lambda n, d: _shift(d, -int(n))),
    (rf"What day of the week was {DATE}\?", lambda d: _weekday(_ordinal(d))),
    (rf"How many days after {DATE} is {DATE}\?", lambda a, b: D(_ordinal(b) - _ordinal(a))),
    (r"Reverse the letters of the word '(\w+)'", lambda w: "".join(w[i] for i in range(len(w) - 1, -1, -1))),
    (r"How many times does the letter '(\w)' appear in the word '(\w+)'", lambda c, w: D(sum(ch == c for ch in w))),
    (r"Sort the letters of the word '(\w+)' in alphabetical order", lambda w: "".join(sorted(w, key=ord))),
    (r"Rewrite the word '(\w+)' so that its 1st, 3rd, 5th, \.\.\. letters are uppercase",
     lambda w: "".join(a + b for a, b in zip(w[::2].upper(), w[1::2].lower() + " ")).strip()),
    (r"Remove every vowel \(a, e, i, o, u\) from the word '(\w+)'", lambda w: re.sub("(?i)[aeiou]", "", w)),
    (r"first letter of each word in '([a-z ]+)'", lambda phrase: "".join(w[:1] for w in phrase.split(" "))),
]


def solve(prompt: str):
    found = [(p, f) for p, f in SOLVERS if re.search(p, prompt)]
    assert len(found) == 1, f"{len(found)} solvers match {prompt!r}"
    pattern, f = found[0]
    return f(*re.search(pattern, prompt).groups())


def bundled_rows() -> list[dict]:
    return [json.loads(line) for line in BUNDLED.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_rows_are_deterministic_interleaved_and_prefix_stable():
    rows = make(40, seed=1)
    assert rows == make(40, seed=1)
    assert rows != make(40, seed=2)
    assert make(15, seed=1) == rows[:15]
    assert [r["category"] for r in rows[:10]] == list(FAMILIES) * 2
    assert [r["prompt_id"] for r in rows[:3]] == ["verif-arithmetic-00000", "verif-unit_conversion-00001",
                                                  "verif-date-00002"]
    assert {r["source"] for r in rows} == {"prefsynth-verifiable"}
    assert [r["category"] for r in make(4, families=("date", "python"))] == ["date", "python"] * 2
    with pytest.raises(ConfigError, match="families"):
        make(3, families=("poetry",))


def test_bundled_file_is_make_300_seed_0_and_loads_as_prompts():
    rows = bundled_rows()
    assert len(rows) >= 300
    assert rows == make(300, seed=0), (
        f"regenerate: python -m pipeline.verifiable.generator --n 300 --seed 0 --out {BUNDLED}")
    assert {r["category"] for r in rows} == set(FAMILIES)
    assert len({r["prompt"] for r in rows}) == len(rows)
    table, report = load_prompts(InputConfig(path="bundled:prompts/verifiable.jsonl", shuffle=False))
    assert table.num_rows == len(rows) and not report.invalid
    assert table.column("prompt_id").to_pylist() == [r["prompt_id"] for r in rows]


def test_every_answer_matches_an_independent_solution():
    rows = bundled_rows() + make(200, seed=7, families=FAMILIES[:4])  # every template, more than once
    for row in rows:
        spec = row["verify"]
        if spec["kind"] == "tests":
            continue
        want = solve(row["prompt"])
        if spec["kind"] == "numeric":
            assert spec["abs_tol"] >= 0 and spec["rel_tol"] >= 0
            assert abs(D(repr(spec["answer"])) - want) <= D("1e-9") * max(1, abs(want)), (row["prompt"], spec)
        else:
            assert spec["kind"] == "exact" and spec["answer"] == want, (row["prompt"], spec)
        # and the verifier accepts the reference answer the way a model would write it
        assert check(spec, f"So the answer is \\boxed{{{reference_solution(row)}}}.").passed is True, row


def test_every_python_reference_passes_its_tests_in_one_process():
    rows = [r for r in bundled_rows() + make(100, seed=3, families=("python",)) if r["verify"]["kind"] == "tests"]
    assert len({r["verify"]["entry_point"] for r in rows}) >= 10
    jobs = [(reference_solution(r), r["verify"]["tests"], r["prompt_id"]) for r in rows]
    script = (
        "import json, sys\nfailed = []\nfor code, tests, pid in json.load(sys.stdin):\n    ns = {}\n    try:\n"
        "        exec(code, ns)\n        exec(tests, ns)\n    except Exception as exc:\n"
        "        failed.append(f'{pid}: {type(exc).__name__} {exc}')\nprint(json.dumps(failed))\n"
    )
    out = subprocess.run([sys.executable, "-I", "-c", script], input=json.dumps(jobs), capture_output=True,
                         text=True, timeout=60, check=True)
    assert json.loads(out.stdout) == []
    for row in rows:  # the tests are not vacuous: each has five asserts with the example first
        tests = row["verify"]["tests"].splitlines()
        assert len(tests) == 5 and all(t.startswith(f"assert {row['verify']['entry_point']}(") for t in tests)
        assert tests[0].split(" == ")[0].removeprefix("assert ") in row["prompt"]


def test_a_sample_of_python_rows_passes_the_sandbox_and_a_wrong_function_fails():
    rows = [r for r in bundled_rows() if r["category"] == "python"]
    for row in random.Random(0).sample(rows, 20):
        spec = row["verify"]
        verdict = check(spec, "Here it is:\n```python\n" + reference_solution(row) + "\n```")
        assert verdict.passed is True, (row["prompt_id"], verdict)
        wrong = f"```python\ndef {spec['entry_point']}(*args):\n    return object()\n```"
        assert check(spec, wrong).passed is False


def test_cli_writes_the_same_rows(tmp_path):
    out = tmp_path / "v.jsonl"
    cmd = [sys.executable, "-m", "pipeline.verifiable.generator", "--n", "12", "--seed", "4", "--out", str(out)]
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, timeout=60)
    assert [json.loads(line) for line in out.read_text().splitlines()] == make(12, seed=4)
