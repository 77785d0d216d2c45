"""Token and dollar accounting, and the budget (pipeline/core/accounting.py), without a server."""

import json

import pytest

from pipeline.core import accounting
from pipeline.errors import BudgetExceeded


class Backend:  # what the ledger reads of an openai backend
    ref, model, label, base_url = "m", "served-m", "m@rev", "https://user:pw@api.example.com:8443/v1?key=abc"


PRICES = {"m": {"input": 2.0, "output": 10.0}}  # USD per million tokens


def test_endpoint_names_never_carry_credentials_or_queries():
    assert accounting.endpoint_name(Backend.base_url) == "https://api.example.com:8443/v1"
    assert accounting.endpoint_name("http://127.0.0.1:8000/v1/") == "http://127.0.0.1:8000/v1"


def test_ledger_books_usage_and_parts_take_what_their_chunk_used():
    ledger = accounting.Ledger("judge", prices=PRICES, budget_usd=None)
    ticket = ledger.reserve(Backend, chars=400, max_out=1)
    ledger.release(ticket, {"input_tokens": 100, "output_tokens": 1})
    ledger.book(Backend, {"input_tokens": 50, "output_tokens": 2})  # an answer read back from the request log
    rows = ledger.take()
    assert rows == [{"model": "m@rev", "served": "served-m", "endpoint": "https://api.example.com:8443/v1",
                     "requests": 2, "input_tokens": 150, "output_tokens": 3}]
    assert ledger.take() == [] and ledger.spent == pytest.approx((150 * 2 + 3 * 10) / 1e6)
    ledger.release(ledger.reserve(Backend, chars=40, max_out=1), {"input_tokens": None, "output_tokens": 1})
    assert ledger.take()[0] | {} == {"model": "m@rev", "served": "served-m",
                                    "endpoint": "https://api.example.com:8443/v1", "requests": 1, "input_tokens": 10,
                                    "output_tokens": 1, "estimated": True}


def test_budget_refuses_the_request_that_could_pass_it_and_stays_stopped():
    # spent so far: 1e6 input tokens at $2 = $2; each request may cost up to (1000 * 2 + 100 * 10) / 1e6 = $0.003
    ledger = accounting.Ledger("judge", prices=PRICES, budget_usd=2.0065,
                               spent=[{"model": "m@rev", "endpoint": "e", "requests": 1, "input_tokens": 1_000_000,
                                       "output_tokens": 0}])
    first = ledger.reserve(Backend, chars=1000, max_out=100)
    second = ledger.reserve(Backend, chars=1000, max_out=100)  # 2 + 0.006 in flight <= 2.0065
    with pytest.raises(BudgetExceeded) as err:
        ledger.reserve(Backend, chars=1000, max_out=100)
    msg = str(err.value)
    assert "budget.usd=2.0065 would be passed: spent $2.000000 so far (in flight $0.006000)" in msg
    assert "could cost up to $0.003000" in msg and "fix: raise budget.usd" in msg
    assert "\n" not in msg and "pw" not in msg and "key=abc" not in msg
    ledger.release(first, {"input_tokens": 10, "output_tokens": 1})
    ledger.release(second, None)  # failed: nothing booked
    with pytest.raises(BudgetExceeded):  # latched: what is left would fit, but the run stops as one
        ledger.reserve(Backend, chars=1, max_out=1)
    assert ledger.take()[0]["requests"] == 1


def test_rerun_starts_from_what_earlier_stages_and_finished_parts_recorded(tmp_path):
    (tmp_path / "tables").mkdir()
    row = {"model": "m@rev", "endpoint": "e", "requests": 3, "input_tokens": 300, "output_tokens": 30}
    (tmp_path / "tables" / "generate.json").write_text(json.dumps({"usage": [row]}))
    (tmp_path / "tables" / "rationale.json").write_text(json.dumps({"usage": [row]}))  # a later stage: not counted
    got = accounting.recorded(tmp_path, "judge", [{"usage": [row]}, {"keys": []}])
    assert got == [{**row, "served": None, "requests": 6, "input_tokens": 600, "output_tokens": 60}]
    cfg = type("Cfg", (), {"prices": PRICES, "budget": type("B", (), {"usd": 1})})
    ledger = accounting.Ledger.for_stage(tmp_path, cfg, "judge", [{"usage": [row]}])
    assert ledger.spent == pytest.approx((600 * 2 + 60 * 10) / 1e6)


def test_summary_prices_each_stage_model_and_endpoint():
    row = {"model": "m@rev", "served": "served-m", "endpoint": "e", "requests": 2, "input_tokens": 1000,
           "output_tokens": 100}
    other = {**row, "model": "x@served", "served": "x"}
    s = accounting.summary({"judge": {"usage": [row, other]}, "rationale": [{"usage": [row]}, {"usage": [row]}]},
                           PRICES, 1.0)
    assert s["stages"]["judge"][0]["usd"] == pytest.approx(0.003) and s["stages"]["judge"][1]["usd"] is None
    assert s["stages"]["rationale"][0]["requests"] == 4
    assert s["total"] == {"requests": 8, "input_tokens": 4000, "output_tokens": 400, "usd": pytest.approx(0.009)}
    assert s["unpriced_models"] == ["x@served"] and s["budget_usd"] == 1.0
