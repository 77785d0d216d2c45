"""The error hierarchy of prefsynth (docs/architecture.md rule 6).

Every error a user can cause says what is wrong, with which value, and how to fix it.
Only `TransientBackendError` is retried by flows; everything else fails fast.
"""

from __future__ import annotations

import errno
import re

# the userinfo of a URL (`http://user:password@host`): a password in HF_ENDPOINT or an openai base_url
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s'\"<>@]*(?:@[^/\s'\"<>@]*)*@")


def redact(text: str) -> str:
    """`text` with the user and password of every URL in it replaced by `***` (issue 39): for every place that
    shows a URL or an error that may quote one."""
    return _USERINFO.sub(r"\1***@", str(text))


class PrefsynthError(Exception):
    """Base class: anything prefsynth raises on purpose. Its message never shows a URL's password, whoever wrote
    the message (a transport's error text quoting the URL included)."""

    def __str__(self) -> str:
        return redact(super().__str__())


class ConfigError(PrefsynthError):
    """A config key or value is invalid."""


class InputError(PrefsynthError):
    """The prompt input (file, dataset) is missing, empty or malformed."""


class SchemaError(PrefsynthError):
    """A table does not match its declared pyarrow schema or invariants."""


class ModelNotFoundError(PrefsynthError):
    """A model reference resolves to nothing loadable."""


class BackendError(PrefsynthError):
    """A generation or scoring backend failed in a way a retry will not fix."""


class TransientBackendError(BackendError):
    """A backend failure worth retrying (timeouts, 429/5xx, dropped connections)."""


class ConvergenceError(PrefsynthError):
    """A numerical fit (Bradley-Terry) did not reach its tolerance."""


class FunnelError(PrefsynthError):
    """The drop funnel does not add up (a bug in prefsynth; raised only under PREFSYNTH_STRICT_FUNNEL=1)."""


class BudgetExceeded(PrefsynthError):
    """The next request could take the run past `budget.usd`: the run stops cleanly, finished work kept."""


class BatchPending(PrefsynthError):
    """A batch input file was written for a runner outside prefsynth: the rerun ingests its output file."""


class SandboxUnavailable(PrefsynthError):
    """The code verifier's OS sandbox (bubblewrap) is missing or does not work here: no code is run."""


class DiskFull(PrefsynthError):
    """The disk a run writes to is full or over quota: finished work is kept, a rerun resumes."""


def disk_full(exc: BaseException) -> bool:
    """Whether `exc` is a write that failed for want of space (pyarrow's OSError carries the errno in its text)."""
    text = str(exc).lower()
    return isinstance(exc, OSError) and (exc.errno in (errno.ENOSPC, errno.EDQUOT) or "no space left" in text
                                         or "errno 28]" in text)


def no_space(path, exc: BaseException) -> DiskFull:
    return DiskFull(f"no space left on the disk of {path} ({str(exc)[:120]}); finished stages are kept; fix: free "
                    "space there (or pass --out on a larger disk) and rerun the same command to resume")
