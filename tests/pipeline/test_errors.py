"""pipeline/errors.py: an error's message never shows a URL's password (issue 39), whoever wrote the message."""

from pipeline.errors import BackendError, ConfigError, redact
from tests.conftest import TINY, cli_in_process


def test_redact_hides_userinfo_and_keeps_the_rest():
    assert redact("http://user:pw@host:8000/v1") == "http://***@host:8000/v1"
    assert redact("cannot reach https://u:p@ss@h.co/x (ConnectError: http://a:b@c/)") == \
        "cannot reach https://***@h.co/x (ConnectError: http://***@c/)"
    assert redact("http://host/path@x and 'HTTP://tok@h'") == "http://host/path@x and 'HTTP://***@h'"
    assert str(BackendError("push: http://me:s3cret@hub.local failed")) == "push: http://***@hub.local failed"
    assert "s3cret" not in f"{ConfigError('x http://me:s3cret@h')}"


def test_a_password_in_an_openai_base_url_is_not_printed(tmp_path):
    proc = cli_in_process("run", "--config", str(TINY), "--out", str(tmp_path / "out"), "--set",
                          "generate.backend=openai", "--set", "generate.openai.base_url=http://me:s3cret@127.0.0.1:9/v1")
    assert proc.returncode == 2 and "s3cret" not in proc.stdout + proc.stderr
    assert "http://***@127.0.0.1:9" in proc.stderr
