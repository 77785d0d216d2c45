"""The `--where` filter language of `prefsynth inspect` and `prefsynth review`, parsed, never run as SQL.

Filters used to go to polars SQL after a pattern check, and a quote inside a SQL comment hid a subquery over
any file (`read_csv('secret.csv')`), while 6,000 `OR` terms crashed polars (issue 39). Here a filter is parsed by
a small recursive-descent grammar of our own and translated to a polars expression: the only names it can reach
are the table's own columns and four pure functions, so no filter can read a file. Grammar (SQL-like, keywords
case-insensitive):

    expr   := and (OR and)*           and := not (AND not)*          not := NOT not | pred
    pred   := sum [ (= | == | != | <> | < | <= | > | >=) sum | IS [NOT] NULL | [NOT] IN (literal, ...)
                  | [NOT] LIKE 'pattern' | [NOT] ILIKE 'pattern' | [NOT] BETWEEN sum AND sum ]
    sum    := prod ((+ | -) prod)*    prod := unary ((* | / | %) unary)*    unary := - unary | atom
    atom   := number | 'text' | TRUE | FALSE | NULL | column | "column" | fn(expr) | ( expr )
    fn     := abs | length | lower | upper

Operands are typed (number, text, boolean) from the table's schema, so `prompt > 1` is refused with the reason
before polars sees it. Null follows SQL: a comparison with null is null and the row is not kept. Bounds:
`MAX_CHARS` characters, `MAX_TERMS` operands (values inside IN lists are not counted) and `MAX_DEPTH` levels of
nesting, each refused with an error naming the limit.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import polars as pl

from pipeline.errors import InputError

MAX_CHARS = 8000
MAX_TERMS = 512
MAX_DEPTH = 32
EXAMPLE = '"margin < 0.5 AND chosen_len > rejected_len"'

_TOKEN = re.compile(
    r"\s*(?:(?P<num>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)|(?P<str>'(?:[^']|'')*')|(?P<qid>\"(?:[^\"]|\"\")*\")"
    r"|(?P<id>[A-Za-z_][A-Za-z0-9_]*)|(?P<op><=|>=|<>|!=|==|=|<|>|\+|-|\*|/|%|\(|\)|,))"
)
KEYWORDS = {"and", "or", "not", "is", "null", "in", "like", "ilike", "between", "true", "false"}
TABLE_WORDS = {"select", "from", "join", "with", "union"}
FUNCTIONS = {"abs": ("num", "num"), "length": ("str", "num"), "lower": ("str", "str"), "upper": ("str", "str")}
COMPARE = {"=": "eq", "==": "eq", "!=": "ne", "<>": "ne", "<": "lt", "<=": "le", ">": "gt", ">=": "ge"}
TYPE_NAMES = {"num": "a number", "str": "text", "bool": "a boolean", "null": "NULL"}


class FilterError(Exception):
    """A reason the filter is refused; `reads` marks one that tries to reach another table or a file."""

    def __init__(self, reason: str, *, reads: bool = False):
        super().__init__(reason)
        self.reads = reads


@dataclass
class Tok:
    kind: str  # num | str | id | qid | op | bad | end
    text: str
    pos: int


@dataclass
class Node:
    expr: pl.Expr
    type: str  # num | str | bool | null


def column_type(dtype) -> str | None:
    if dtype.is_numeric():
        return "num"
    if dtype == pl.String:
        return "str"
    if dtype == pl.Boolean:
        return "bool"
    return None


def tokenize(text: str) -> list[Tok]:
    """The tokens; a character no token starts with becomes an `bad` token, reported once the words are checked."""
    out, pos = [], 0
    while True:
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if pos >= len(text):
            return [*out, Tok("end", "", pos)]
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            out.append(Tok("bad", text[pos], pos))
            pos += 1
            continue
        kind = m.lastgroup
        value = m.group(kind)
        if kind == "qid":
            value = value[1:-1].replace('""', '"')
        elif kind == "str":
            value = value[1:-1].replace("''", "'")
        out.append(Tok(kind, value, m.start(kind)))
        pos = m.end()


def like_regex(pattern: str) -> str:
    """SQL LIKE (`%` any run, `_` one character, the rest literal) as an anchored regex."""
    return "^" + "".join(".*" if c == "%" else "." if c == "_" else re.escape(c) for c in pattern) + "$"


class Parser:
    def __init__(self, text: str, schema: dict):
        self.toks = tokenize(text)
        self.i = 0
        self.depth = 0
        self.terms = 0
        self.columns = {name: column_type(dtype) for name, dtype in schema.items()}

    # -- tokens ---------------------------------------------------------------------------------------------
    @property
    def tok(self) -> Tok:
        return self.toks[self.i]

    def word(self, *words: str) -> bool:
        """The current token is one of these keywords (or an operator spelled the same): consume it."""
        t = self.tok
        if (t.kind == "id" and t.text.lower() in words) or (t.kind == "op" and t.text in words):
            self.i += 1
            return True
        return False

    def expect(self, what: str) -> None:
        if not self.word(what):
            raise FilterError(f"expected {what.upper() if what.isalpha() else repr(what)} {self.where_am_i()}")

    def where_am_i(self) -> str:
        t = self.tok
        return "at the end" if t.kind == "end" else f"at {t.text!r} (character {t.pos + 1})"

    def nest(self):
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise FilterError(f"more than {MAX_DEPTH} levels of nesting (the limit)")

    # -- grammar ----------------------------------------------------------------------------------------------
    def parse(self) -> pl.Expr:
        for t in self.toks:  # named first: a filter that tries to read elsewhere is told so, whatever else is wrong
            if t.kind == "id" and (t.text.lower() in TABLE_WORDS or re.match(r"(read|scan)_", t.text.lower())):
                raise FilterError(f"{t.text!r} would read another table or a file", reads=True)
        bad = next((t for t in self.toks if t.kind == "bad"), None)
        if bad is not None:
            raise FilterError(f"unexpected {bad.text!r} at character {bad.pos + 1}")
        node = self.expr()
        if self.tok.kind != "end":
            raise FilterError(f"unexpected {self.where_am_i()[3:]}")
        if node.type not in ("bool", "null"):
            raise FilterError(f"the filter is {TYPE_NAMES[node.type]}, not a condition")
        return node.expr.cast(pl.Boolean)

    def expr(self) -> Node:
        self.nest()
        node = self.logic("or", self.conj)
        self.depth -= 1
        return node

    def conj(self) -> Node:
        return self.logic("and", self.negation)

    def logic(self, word: str, part) -> Node:
        node = part()
        while self.word(word):
            right = part()
            for side in (node, right):
                self.need(side, "bool", word.upper())
            node = Node(node.expr & right.expr if word == "and" else node.expr | right.expr, "bool")
        return node

    def negation(self) -> Node:
        if self.word("not"):
            self.nest()
            node = self.negation()
            self.depth -= 1
            self.need(node, "bool", "NOT")
            return Node(~node.expr, "bool")
        return self.predicate()

    def predicate(self) -> Node:
        left = self.sum()
        t = self.tok
        if t.kind == "op" and t.text in COMPARE:
            self.i += 1
            right = self.sum()
            if "null" in (left.type, right.type):
                return Node(pl.lit(None, dtype=pl.Boolean), "bool")
            if left.type != right.type:
                raise FilterError(f"{t.text} compares {TYPE_NAMES[left.type]} with {TYPE_NAMES[right.type]}")
            return Node(getattr(left.expr, COMPARE[t.text])(right.expr), "bool")
        if self.word("is"):
            negated = self.word("not")
            self.expect("null")
            return Node(left.expr.is_not_null() if negated else left.expr.is_null(), "bool")
        negated = self.word("not")
        if self.word("in"):
            values = self.values(left)  # numbers compared as floats: an int column IN (1.5, 2) is valid SQL
            node = Node((left.expr.cast(pl.Float64) if left.type == "num" else left.expr).is_in(values.implode()),
                        "bool")
        elif self.tok.kind == "id" and self.tok.text.lower() in ("like", "ilike"):
            node = self.like(left)
        elif self.word("between"):
            low, _, high = self.sum(), self.expect("and"), self.sum()
            for side in (low, high):
                if side.type != left.type or left.type not in ("num", "str"):
                    raise FilterError(f"BETWEEN needs {TYPE_NAMES[left.type]} bounds of the same type")
            node = Node(left.expr.is_between(low.expr, high.expr), "bool")
        elif negated:
            raise FilterError(f"expected IN, LIKE, ILIKE or BETWEEN after NOT {self.where_am_i()}")
        else:
            return left
        return Node(~node.expr if negated else node.expr, "bool")

    def values(self, left: Node) -> pl.Series:
        self.expect("(")
        vals = []
        while True:
            t, sign = self.tok, self.word("-")
            t = self.tok
            if t.kind not in ("num", "str") or (sign and t.kind != "num"):
                raise FilterError(f"IN takes a list of literal values {self.where_am_i()}")
            kind = "num" if t.kind == "num" else "str"
            if kind != left.type:
                raise FilterError(f"IN compares {TYPE_NAMES[left.type]} with {TYPE_NAMES[kind]} {self.where_am_i()}")
            self.i += 1
            vals.append(-self.number(t.text) if sign else self.number(t.text) if kind == "num" else t.text)
            if not self.word(","):
                break
        self.expect(")")
        if left.type == "num":
            return pl.Series(vals, dtype=pl.Float64)
        return pl.Series(vals, dtype=pl.String)

    def like(self, left: Node) -> Node:
        op = self.tok.text.upper()
        self.i += 1
        pattern = self.tok
        if pattern.kind != "str":
            raise FilterError(f"{op} takes a quoted pattern {self.where_am_i()}")
        self.i += 1
        self.need(left, "str", op)
        regex = ("(?si)" if op == "ILIKE" else "(?s)") + like_regex(pattern.text)
        return Node(left.expr.str.contains(regex), "bool")

    def sum(self) -> Node:
        node = self.product()
        while self.tok.kind == "op" and self.tok.text in "+-":
            op = self.tok.text
            self.i += 1
            right = self.product()
            node = self.arith(node, right, op)
        return node

    def product(self) -> Node:
        node = self.unary()
        while self.tok.kind == "op" and self.tok.text in ("*", "/", "%"):
            op = self.tok.text
            self.i += 1
            node = self.arith(node, self.unary(), op)
        return node

    def arith(self, left: Node, right: Node, op: str) -> Node:
        for side in (left, right):
            self.need(side, "num", op)
        ops = {"+": "add", "-": "sub", "*": "mul", "/": "truediv", "%": "mod"}
        return Node(getattr(left.expr, ops[op])(right.expr), "num")

    def unary(self) -> Node:
        if self.word("-"):
            self.nest()
            node = self.unary()
            self.depth -= 1
            self.need(node, "num", "-")
            return Node(-node.expr, "num")
        return self.atom()

    def atom(self) -> Node:
        t = self.tok
        if t.kind == "op" and t.text == "(":
            self.i += 1
            node = self.expr()
            self.expect(")")
            return node
        if t.kind in ("num", "str", "id", "qid"):
            self.terms += 1
            if self.terms > MAX_TERMS:
                raise FilterError(f"more than {MAX_TERMS} columns and values (the limit; IN (...) lists are not "
                                  "counted)")
        if t.kind == "num":
            self.i += 1
            return Node(pl.lit(self.number(t.text)), "num")
        if t.kind == "str":
            self.i += 1
            return Node(pl.lit(t.text, dtype=pl.String), "str")
        if t.kind == "qid":
            self.i += 1
            return self.column(t.text)
        if t.kind != "id":
            raise FilterError(f"expected a column or a value {self.where_am_i()}")
        word = t.text.lower()
        self.i += 1
        if word in ("true", "false"):
            return Node(pl.lit(word == "true"), "bool")
        if word == "null":
            return Node(pl.lit(None), "null")
        if self.tok.kind == "op" and self.tok.text == "(":
            return self.call(t.text)
        if word in KEYWORDS:
            raise FilterError(f"unexpected {t.text.upper()} (character {t.pos + 1})")
        return self.column(t.text)

    def call(self, name: str) -> Node:
        if name.lower() not in FUNCTIONS:
            raise FilterError(f"unknown function {name!r} (the functions are {', '.join(FUNCTIONS)})")
        arg_type, result = FUNCTIONS[name.lower()]
        self.expect("(")
        arg = self.expr()
        self.expect(")")
        self.need(arg, arg_type, f"{name.lower()}()")
        e = arg.expr
        out = {"abs": lambda: e.abs(), "length": lambda: e.str.len_chars(), "lower": lambda: e.str.to_lowercase(),
               "upper": lambda: e.str.to_uppercase()}[name.lower()]()
        return Node(out, result)

    def column(self, name: str) -> Node:
        if name not in self.columns:
            raise FilterError(f"no column {name!r}")
        kind = self.columns[name]
        if kind is None:
            raise FilterError(f"column {name!r} cannot be filtered on")
        return Node(pl.col(name), kind)

    @staticmethod
    def number(text: str):
        return float(text) if any(c in text for c in ".eE") else int(text)

    @staticmethod
    def need(node: Node, kind: str, op: str) -> None:
        if node.type not in (kind, "null"):
            raise FilterError(f"{op} needs {TYPE_NAMES[kind]}, not {TYPE_NAMES[node.type]}")


def shown(where: str, n: int = 120) -> str:
    """The filter as an error line quotes it: repr, cut short (a refused filter may be 80,000 characters)."""
    return repr(where if len(where) <= n else where[: n - 1] + "\u2026")


def compile_where(where: str, schema) -> pl.Expr:
    """The polars expression of a filter over a frame of `schema` ({column: dtype}), or an InputError naming the
    reason and the fix."""
    columns = ", ".join(schema)
    if len(where) > MAX_CHARS:
        raise InputError(f"--where has {len(where)} characters, over the limit of {MAX_CHARS}; fix: a shorter "
                         "condition (one IN (...) list instead of many ORs)")
    try:
        return Parser(where, dict(schema)).parse()
    except FilterError as exc:
        if exc.reads:
            raise InputError(f"--where {shown(where)} reads other tables ({exc}); fix: use a condition over the "
                             f"columns only ({columns}), e.g. {EXAMPLE}") from None
        raise InputError(f"--where {shown(where)} is not a valid filter ({exc}); fix: use a condition over "
                         f"{columns}, e.g. {EXAMPLE}") from None
