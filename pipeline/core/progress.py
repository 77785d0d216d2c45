"""Progress bars for long stages (tqdm on stderr), with live tokens/s when tokens are reported."""

from __future__ import annotations

import os
import sys
import time
from contextlib import contextmanager

from tqdm.auto import tqdm


class _Bar:
    def __init__(self, bar: tqdm):
        self._bar, self._tokens, self._t0 = bar, 0, time.perf_counter()
        self.in_flight = None  # optional () -> int: requests in flight (the openai backend's counter)

    def advance(self, n: int, tokens: int | None = None) -> None:
        if tokens is not None:
            self._tokens += tokens
            rate = self._tokens / max(time.perf_counter() - self._t0, 1e-9)
            flight = f", {self.in_flight()} in flight" if self.in_flight is not None else ""
            self._bar.set_postfix_str(f"{self._tokens} tok, {rate:.0f} tok/s{flight}", refresh=False)
        self._bar.update(n)


@contextmanager
def bar(*, total: int, desc: str, unit: str, initial: int = 0):
    disable = os.environ.get("PREFSYNTH_PROGRESS", "1") == "0"
    with tqdm(total=total, initial=initial, desc=desc, unit=unit, file=sys.stderr, mininterval=1.0,
              disable=disable, dynamic_ncols=True) as t:
        yield _Bar(t)
