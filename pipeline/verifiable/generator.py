"""Verifiable prompts: a seeded generator of prompts whose answers a program checks (judges/verifier.py).

Five families, interleaved round-robin: `arithmetic` (word problems with integer or decimal answers),
`unit_conversion` (exact definitions such as 1 mile = 1.609344 km; relative tolerance), `date` (the weekday or
the date N days after or before a date, days between dates), `string` (reverse, count, sort, alternate case,
remove vowels, initials) and `python` (a small function checked by unit tests). Answers go in \\boxed{...},
code in a ```python block. Each row carries its check under `verify` (the spec judges/verifier.py reads):
numeric {answer, abs_tol, rel_tol}, exact {answer, optional case_sensitive} or tests {entry_point, tests}.
Row i of family f comes from its own RNG seeded by (seed, f, i), so a row does not depend on n, and decimal
arithmetic uses fractions, so an answer is never off by float rounding. The idea follows the verifiable-reward
prompts of Tulu 3 (RLVR); the templates are ours.

    python -m pipeline.verifiable.generator --n 300 --seed 0 --out data/prompts/verifiable.jsonl
"""

from __future__ import annotations

import argparse
import ast
import datetime as dt
import itertools
import json
import os
import random
import re
from collections import deque
from fractions import Fraction
from pathlib import Path
from typing import Callable, NamedTuple

from pipeline.errors import ConfigError

FAMILIES = ("arithmetic", "unit_conversion", "date", "string", "python")
SOURCE = "prefsynth-verifiable"
BOX = "Put your final answer in \\boxed{}."
NAMES = ("Ava", "Ben", "Chloe", "Diego", "Emma", "Farah", "Hiro", "Ines", "Jonas", "Kemi", "Liam", "Mei", "Noah",
         "Olga", "Priya", "Sam")
ITEMS = ("apples", "pencils", "stickers", "marbles", "cookies", "batteries", "candles", "postcards", "notebooks")
WORDS = tuple("""banana strawberry keyboard elephant mountain notebook pineapple umbrella calendar butterfly chocolate
dinosaur astronaut lighthouse waterfall telescope sandwich volcano penguin library triangle blueberry hedgehog
cinnamon snowflake adventure parachute orchestra microscope pyramid kangaroo tomato avocado hamburger crocodile
saxophone labyrinth mississippi bookkeeper committee balloon coffee address success assessment rhythm""".split())
WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


def _num(x: Fraction | int) -> str:
    """A terminating fraction as a plain decimal: 3/2 -> '1.5', 4 -> '4'."""
    scaled = abs(Fraction(x)) * 10**6
    assert scaled.denominator == 1, f"{x} has more than 6 decimals"
    text = f"{int(scaled) // 10**6}.{int(scaled) % 10**6:06d}".rstrip("0").rstrip(".")
    return ("-" if x < 0 else "") + text


def _numeric(family: str, answer: Fraction | int, abs_tol: float = 0.0, rel_tol: float = 0.0) -> dict:
    return {"family": family, "kind": "numeric", "answer": float(answer), "abs_tol": abs_tol, "rel_tol": rel_tol}


def _exact(family: str, answer: str, case_sensitive: bool = False) -> dict:
    spec = {"family": family, "kind": "exact", "answer": answer}
    return {**spec, "case_sensitive": True} if case_sensitive else spec


def _arithmetic(rng: random.Random) -> tuple[str, dict]:
    name, item, r = rng.choice(NAMES), rng.choice(ITEMS), rng.randint
    kind = rng.randrange(8)
    if kind == 0:
        a, b = r(2, 12), r(3, 24)
        c = r(1, a * b - 1)
        text = (f"{name} buys {a} packs of {item}. Each pack holds {b} {item}. {name} then gives away {c} {item}. "
                f"How many {item} does {name} have left?")
        return text, _numeric("arithmetic", a * b - c)
    if kind == 1:
        q, cents = r(2, 9), r(50, 1999)
        bill = next(b for b in (20, 50, 100, 200) if b * 100 > q * cents)
        text = (f"{name} buys {q} {item} at ${cents // 100}.{cents % 100:02d} each and pays with a ${bill} bill. "
                f"How much change, in dollars, does {name} get back?")
        return text, _numeric("arithmetic", Fraction(bill * 100 - q * cents, 100), abs_tol=0.005)
    if kind == 2:
        v, w, t, u = r(40, 120), r(40, 120), Fraction(r(1, 8), 2), Fraction(r(1, 8), 2)
        text = (f"A train travels at {v} km/h for {_num(t)} hours and then at {w} km/h for {_num(u)} hours. How many "
                "kilometers does it travel in total?")
        return text, _numeric("arithmetic", v * t + w * u)
    if kind == 3:
        m, pct = 20 * r(2, 20), rng.choice((10, 15, 20, 25, 30, 40, 50, 60, 75))
        s = r(1, max(1, int(Fraction(m * (100 - pct), 100)) - 1))
        text = (f"{name} has ${m}. {name} spends {pct}% of it on {item} and then ${s} on lunch. How many dollars "
                f"does {name} have left?")
        return text, _numeric("arithmetic", Fraction(m * (100 - pct), 100) - s, abs_tol=0.005)
    if kind == 4:
        k, avg, avg2 = r(3, 9), r(10, 90), r(5, 95)
        text = (f"The average of {k} numbers is {avg}. After one more number is added, the average of all {k + 1} "
                f"numbers is {avg2}. What number was added?")
        return text, _numeric("arithmetic", avg2 * (k + 1) - avg * k)
    if kind == 5:
        a, c = r(8, 30) * 100 + rng.choice((0, 25, 50, 75)), r(3, 15) * 100 + rng.choice((0, 25, 50, 75))
        na, nc = r(1, 6), r(1, 8)
        text = (f"Adult tickets cost ${a // 100}.{a % 100:02d} and child tickets cost ${c // 100}.{c % 100:02d}. A "
                f"group buys {na} adult tickets and {nc} child tickets. What is the total cost in dollars?")
        return text, _numeric("arithmetic", Fraction(na * a + nc * c, 100), abs_tol=0.005)
    if kind == 6:
        p, d, t = r(20, 400), rng.choice((10, 15, 20, 25, 30, 40)), rng.choice((5, 6, 7, 8, 10))
        text = (f"A gift box of {item} costs ${p}. It is discounted by {d}%, and then a {t}% sales tax is added to "
                "the discounted price. What is the final price in dollars, rounded to the nearest cent?")
        return text, _numeric("arithmetic", Fraction(p * (100 - d) * (100 + t), 10**4), abs_tol=0.01)
    rate, h, mins = r(3, 40), r(1, 5), r(1, 59)
    text = (f"A machine fills {rate} bottles per minute. How many bottles does it fill in {h} hour{'s' * (h > 1)} "
            f"and {mins} minutes?")
    return text, _numeric("arithmetic", rate * (60 * h + mins))


# exact definitions: international mile, avoirdupois pound and ounce, international foot and inch, US gallon
_MILE, _LB, _FT = Fraction("1.609344"), Fraction("0.45359237"), Fraction("0.3048")
_GAL, _IN, _OZ = Fraction("3.785411784"), Fraction("2.54"), Fraction("28.349523125")
CONVERSIONS: dict[tuple[str, str], Callable[[Fraction], Fraction]] = {
    ("kilometers", "miles"): lambda x: x / _MILE, ("miles", "kilometers"): lambda x: x * _MILE,
    ("kilograms", "pounds"): lambda x: x / _LB, ("pounds", "kilograms"): lambda x: x * _LB,
    ("meters", "feet"): lambda x: x / _FT, ("feet", "meters"): lambda x: x * _FT,
    ("liters", "US gallons"): lambda x: x / _GAL, ("US gallons", "liters"): lambda x: x * _GAL,
    ("centimeters", "inches"): lambda x: x / _IN, ("inches", "centimeters"): lambda x: x * _IN,
    ("ounces", "grams"): lambda x: x * _OZ, ("grams", "ounces"): lambda x: x / _OZ,
    ("degrees Celsius", "degrees Fahrenheit"): lambda x: x * Fraction(9, 5) + 32,
    ("degrees Fahrenheit", "degrees Celsius"): lambda x: (x - 32) * Fraction(5, 9),
}


def _unit_conversion(rng: random.Random) -> tuple[str, dict]:
    src, dst = rng.choice(sorted(CONVERSIONS))
    low, high = {"degrees Celsius": (-400, 1000), "degrees Fahrenheit": (-400, 2200)}.get(src, (2, 2000))
    x = Fraction(rng.randint(low, high), 10)
    text = f"Convert {_num(x)} {src} to {dst}. Round your answer to two decimal places."
    return text, _numeric("unit_conversion", CONVERSIONS[src, dst](x), abs_tol=0.01, rel_tol=0.01)


def _date(rng: random.Random) -> tuple[str, dict]:
    day, n = dt.date(1990, 1, 1) + dt.timedelta(days=rng.randrange(365 * 45)), rng.randint(2, 1000)
    kind = rng.randrange(5)
    if kind == 0:
        text = f"What day of the week is {n} days after {day}? Answer with the weekday's name."
        return text, _exact("date", WEEKDAYS[(day + dt.timedelta(days=n)).weekday()])
    if kind == 1:
        text = f"What is the date {n} days after {day}? Answer in YYYY-MM-DD format."
        return text, _exact("date", str(day + dt.timedelta(days=n)))
    if kind == 2:
        text = f"What was the date {n} days before {day}? Answer in YYYY-MM-DD format."
        return text, _exact("date", str(day - dt.timedelta(days=n)))
    if kind == 3:
        text = f"What day of the week was {day}? Answer with the weekday's name."
        return text, _exact("date", WEEKDAYS[day.weekday()])
    return f"How many days after {day} is {day + dt.timedelta(days=n)}?", _numeric("date", n)


def _string(rng: random.Random) -> tuple[str, dict]:
    word, kind = rng.choice(WORDS), rng.randrange(6)
    if kind == 0:
        return f"Reverse the letters of the word '{word}'.", _exact("string", word[::-1])
    if kind == 1:
        letter = rng.choice(sorted(set(word)))
        text = f"How many times does the letter '{letter}' appear in the word '{word}'?"
        return text, _numeric("string", word.count(letter))
    if kind == 2:
        text = f"Sort the letters of the word '{word}' in alphabetical order and write them as one word."
        return text, _exact("string", "".join(sorted(word)))
    if kind == 3:
        text = (f"Rewrite the word '{word}' so that its 1st, 3rd, 5th, ... letters are uppercase and the other "
                "letters lowercase.")
        return text, _exact("string", "".join(c.upper() if i % 2 == 0 else c for i, c in enumerate(word)), True)
    if kind == 4:
        text = f"Remove every vowel (a, e, i, o, u) from the word '{word}' and write the letters that are left."
        return text, _exact("string", re.sub("[aeiou]", "", word))
    phrase = " ".join(rng.sample(WORDS, rng.randint(3, 5)))
    text = f"Write the first letter of each word in '{phrase}', in order, as one lowercase string."
    return text, _exact("string", "".join(w[0] for w in phrase.split()))


# Reference solutions, written apart from each task's `solve` (which makes the tests' expected values): running
# them against the tests checks two implementations against each other.
REFERENCES = '''
def count_vowels(s):
    return sum(1 for ch in s.lower() if ch in "aeiou")

def is_palindrome(s):
    kept = [c.lower() for c in s if c.isalnum()]
    return kept == kept[::-1]

def second_largest(nums):
    values = sorted(set(nums))
    return values[-2] if len(values) > 1 else None

def running_sum(nums):
    return [sum(nums[: i + 1]) for i in range(len(nums))]

def digit_sum(n):
    return sum(int(d) for d in str(abs(n)))

def fizzbuzz(n):
    out = []
    for i in range(1, n + 1):
        word = ("Fizz" if i % 3 == 0 else "") + ("Buzz" if i % 5 == 0 else "")
        out.append(word or str(i))
    return out

def rotate_left(xs, k):
    if not xs:
        return []
    k %= len(xs)
    return xs[k:] + xs[:k]

def dedupe(xs):
    return [x for i, x in enumerate(xs) if x not in xs[:i]]

def is_prime(n):
    return n > 1 and all(n % d for d in range(2, int(n**0.5) + 1))

def merge_sorted(a, b):
    a, b, out = list(a), list(b), []
    while a and b:
        out.append((a if a[0] <= b[0] else b).pop(0))
    return out + a + b

def caesar(s, k):
    return "".join(chr((ord(c) - 97 + k) % 26 + 97) if "a" <= c <= "z" else c for c in s)

def run_length(s):
    out, i = [], 0
    while i < len(s):
        j = i
        while j < len(s) and s[j] == s[i]:
            j += 1
        out.append(s[i] + str(j - i))
        i = j
    return "".join(out)

def max_subarray(nums):
    best = current = nums[0]
    for x in nums[1:]:
        current = max(x, current + x)
        best = max(best, current)
    return best
'''
_SOURCES = {fn.name: ast.get_source_segment(REFERENCES, fn) for fn in ast.parse(REFERENCES).body}


class PyTask(NamedTuple):
    description: str  # what the function does, after "Write a Python function `name(args)` that"
    solve: Callable  # computes the tests' expected values
    args: Callable[[random.Random], tuple]  # one call's arguments


def _ints(rng, lo=-20, hi=20, n=(0, 8)):
    return [rng.randint(lo, hi) for _ in range(rng.randint(*n))]


def _text(rng):
    return " ".join(rng.choice((w, w.capitalize(), w.upper())) for w in rng.sample(WORDS, rng.randint(1, 3)))


def _palindrome(s):
    kept = re.sub("[^a-z0-9]", "", s.lower())
    return kept == kept[::-1]


def _rotate(xs, k):
    d = deque(xs)
    d.rotate(-k)
    return list(d)


def _caesar(s, k, abc="abcdefghijklmnopqrstuvwxyz"):
    return s.translate(str.maketrans(abc, abc[k % 26 :] + abc[: k % 26]))


_PALINDROMES = ("Racecar", "A man, a plan, a canal: Panama", "No lemon, no melon", "Was it a car or a cat I saw?",
                "step on no pets", "Madam, I'm Adam", "12321", "Never odd or even")
_FIZZ = {0: "FizzBuzz", 3: "Fizz", 5: "Buzz", 6: "Fizz", 9: "Fizz", 10: "Buzz", 12: "Fizz"}
PYTHON: dict[str, PyTask] = {
    "count_vowels(s)": PyTask(
        "returns how many vowels (a, e, i, o, u, in upper or lower case) the string s contains",
        lambda s: len(re.findall("[aeiouAEIOU]", s)), lambda rng: (_text(rng),)),
    "is_palindrome(s)": PyTask(
        "returns True if the string s reads the same forwards and backwards when case and every non-alphanumeric "
        "character are ignored, else False",
        _palindrome, lambda rng: (rng.choice(_PALINDROMES) if rng.random() < 0.5 else _text(rng),)),
    "second_largest(nums)": PyTask(
        "returns the second largest distinct value in the list of integers nums, or None if it has fewer than two "
        "distinct values",
        lambda nums: max((x for x in nums if x != max(nums)), default=None), lambda rng: (_ints(rng, -9, 9),)),
    "running_sum(nums)": PyTask(
        "returns the list of running totals of the list nums (its i-th element is the sum of nums[0] to nums[i])",
        lambda nums: list(itertools.accumulate(nums)), lambda rng: (_ints(rng),)),
    "digit_sum(n)": PyTask(
        "returns the sum of the decimal digits of the integer n (the sign is ignored)",
        lambda n: sum(map(int, str(n).lstrip("-"))), lambda rng: (rng.randint(-10**6, 10**9),)),
    "fizzbuzz(n)": PyTask(
        "returns a list of strings for the numbers 1 to n: 'FizzBuzz' for multiples of 15, 'Fizz' for other "
        "multiples of 3, 'Buzz' for other multiples of 5, and the number itself otherwise",
        lambda n: [_FIZZ.get(i % 15, str(i)) for i in range(1, n + 1)], lambda rng: (rng.randint(1, 30),)),
    "rotate_left(xs, k)": PyTask(
        "returns a new list with the elements of the list xs rotated k places to the left (k >= 0 may exceed "
        "len(xs); an empty list gives an empty list)",
        _rotate, lambda rng: (_ints(rng), rng.randint(0, 12))),
    "dedupe(xs)": PyTask(
        "returns the elements of the list xs without duplicates, keeping the first occurrence of each in its "
        "original order",
        lambda xs: list(dict.fromkeys(xs)), lambda rng: (_ints(rng, 0, 6, (0, 10)),)),
    "is_prime(n)": PyTask(
        "returns True if the integer n is a prime number, else False (numbers below 2 are not prime)",
        lambda n: n > 1 and all(n % d for d in range(2, n)), lambda rng: (rng.randint(-5, 400),)),
    "merge_sorted(a, b)": PyTask(
        "merges two lists of integers, each sorted in ascending order, into one sorted list (duplicates are kept)",
        lambda a, b: sorted(a + b), lambda rng: (sorted(_ints(rng)), sorted(_ints(rng)))),
    "caesar(s, k)": PyTask(
        "shifts every lowercase letter a-z in the string s forward by k places in the alphabet, wrapping from z to "
        "a, and leaves every other character unchanged (k >= 0)",
        _caesar, lambda rng: (_text(rng) + rng.choice(("", "!", ", ok?")), rng.randint(0, 60))),
    "run_length(s)": PyTask(
        "returns the run-length encoding of the string s: each maximal run of one character becomes that character "
        "followed by the run's length, so 'aaab' gives 'a3b1' and '' gives ''",
        lambda s: "".join(f"{c}{len(list(g))}" for c, g in itertools.groupby(s)),
        lambda rng: ("".join(rng.choice("ab") * rng.randint(1, 4) for _ in range(rng.randint(0, 5))),)),
    "max_subarray(nums)": PyTask(
        "returns the largest sum of a non-empty contiguous sublist of the non-empty list of integers nums",
        lambda nums: max(sum(nums[i:j]) for i in range(len(nums)) for j in range(i + 1, len(nums) + 1)),
        lambda rng: (_ints(rng, -10, 10, (1, 9)),)),
}


def _python(rng: random.Random) -> tuple[str, dict]:
    signature = rng.choice(sorted(PYTHON))
    task, name, calls = PYTHON[signature], signature.split("(")[0], {}
    for _ in range(50):  # five distinct calls; the first is the prompt's example
        args = task.args(rng)
        calls.setdefault(f"{name}({', '.join(map(repr, args))})", task.solve(*args))
        if len(calls) == 5:
            break
    (example, result), *_ = calls.items()
    text = (f"Write a Python function `{signature}` that {task.description}. For example, `{example}` should "
            f"return `{result!r}`. Use only the standard library, and put the complete function in a ```python code "
            "block.")
    tests = "".join(f"assert {call} == {expected!r}\n" for call, expected in calls.items())
    return text, {"family": "python", "kind": "tests", "entry_point": name, "tests": tests}


MAKERS = {"arithmetic": _arithmetic, "unit_conversion": _unit_conversion, "date": _date, "string": _string,
          "python": _python}


def make(n: int, *, seed: int = 0, families: tuple[str, ...] = FAMILIES) -> list[dict]:
    """`n` verifiable prompts, families interleaved round-robin; the same (n, seed, families) gives the same rows,
    and make(k) is the first k rows of make(n) for k < n (a row depends on the seed, its family and index, and
    on the rows before it only to avoid repeating a prompt)."""
    unknown = [f for f in families if f not in MAKERS]
    if n < 0 or not families or unknown:
        raise ConfigError(f"verifiable: n={n}, families={families}; fix: n >= 0 and families from {FAMILIES}")
    rows, seen = [], set()
    for i in range(n):
        family = families[i % len(families)]
        for attempt in range(100):  # a repeated prompt is drawn again (kept after 100 tries: still a valid row)
            prompt, spec = MAKERS[family](random.Random(f"prefsynth-verifiable/{seed}/{family}/{i}/{attempt}"))
            prompt = prompt if spec["kind"] == "tests" else f"{prompt} {BOX}"
            if prompt not in seen:
                break
        seen.add(prompt)
        rows.append({"prompt_id": f"verif-{family}-{i:05d}", "prompt": prompt, "category": family,
                     "source": SOURCE, "verify": spec})
    return rows


def reference_solution(row: dict) -> str:
    """What passes the row's check: the function's source for python rows, else the answer (to put in \\boxed{})."""
    spec = row["verify"]
    if spec["kind"] == "tests":
        return _SOURCES[spec["entry_point"]]
    return f"{spec['answer']:.12g}" if spec["kind"] == "numeric" else spec["answer"]


def write_jsonl(rows: list[dict], path: Path) -> None:
    """One JSON object per line, written to a temporary name and renamed (a reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pipeline.verifiable.generator",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=300, help="number of prompts (default 300)")
    parser.add_argument("--seed", type=int, default=0, help="generator seed (default 0)")
    parser.add_argument("--families", default=",".join(FAMILIES), help="comma-separated (default: all five)")
    parser.add_argument("--out", type=Path, required=True, help="the .jsonl file to write")
    args = parser.parse_args(argv)
    rows = make(args.n, seed=args.seed, families=tuple(f.strip() for f in args.families.split(",") if f.strip()))
    write_jsonl(rows, args.out)
    print(f"wrote {len(rows)} verifiable prompts to {args.out}")


if __name__ == "__main__":
    main()
