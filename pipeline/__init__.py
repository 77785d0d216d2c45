"""prefsynth's library: stages (prompts, generate, judge, pair, rationale, publish), backends,
table schemas and run storage. Flows in `flows/` only wire these together."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("prefsynth")
except PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.0.0+src"
