"""The error hierarchy of prefsynth (docs/architecture.md rule 6).

Every error a user can cause says what is wrong, with which value, and how to fix it.
Only `TransientBackendError` is retried by flows; everything else fails fast.
"""

from __future__ import annotations


class PrefsynthError(Exception):
    """Base class: anything prefsynth raises on purpose."""


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
