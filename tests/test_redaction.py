"""The one URL redactor: every URL form, with and without a secret."""

from __future__ import annotations

import pytest

from trainchain.core.redaction import redact, url_secrets, without_credentials


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # user:password@, any scheme, with and without a port
        ("https://bob:hunter2@git.example.org/x.git", "https://bob:***@git.example.org/x.git"),
        ("http://bob:hunter2@git.example.org:8080/x", "http://bob:***@git.example.org:8080/x"),
        ("https://u:p%40ss@h/r.git", "https://u:***@h/r.git"),
        ("https://u:p@ss@h/r.git", "https://u:***@h/r.git"),  # a raw '@': the last one wins
        (
            "ssh://deploy:s3cret@git.example.org:2222/x.git",
            "ssh://deploy:***@git.example.org:2222/x.git",
        ),
        (
            "postgresql+psycopg://ml:p%40ss@db:5432/mlflow",
            "postgresql+psycopg://ml:***@db:5432/mlflow",
        ),
        ("redis://:tok3n@cache:6379/0", "redis://:***@cache:6379/0"),
        # a bare token as the user part of http(s)
        ("https://ghp_abc123@github.com/x/y.git", "https://***@github.com/x/y.git"),
        (
            "http://ghp_abc123@github.example.org:8443/x/y.git",
            "http://***@github.example.org:8443/x/y.git",
        ),
        ("HTTPS://ghp_abc123@github.com/x/y.git", "HTTPS://***@github.com/x/y.git"),
        # tokens in the query string
        ("https://h/x.git?token=abc123", "https://h/x.git?token=***"),
        (
            "https://h:8443/api?ref=main&access_token=abc123",
            "https://h:8443/api?ref=main&access_token=***",
        ),
        ("http://h/x?private_token=abc&per_page=5", "http://h/x?private_token=***&per_page=5"),
        (
            "https://b.s3.amazonaws.com/m?X-Amz-Signature=abc#f",
            "https://b.s3.amazonaws.com/m?X-Amz-Signature=***#f",
        ),
        ("https://u:pw@h/x?api_key=k1", "https://u:***@h/x?api_key=***"),
        # no secret: left as they are
        ("ssh://git@github.com/x/y.git", "ssh://git@github.com/x/y.git"),
        ("ssh://git@127.0.0.1:1/team/model.git", "ssh://git@127.0.0.1:1/team/model.git"),
        ("git@github.com:x/y.git", "git@github.com:x/y.git"),
        ("http://host:8080/path?ref=main", "http://host:8080/path?ref=main"),
        ("https://host/x?token=", "https://host/x?token="),
        ("/srv/git/repo", "/srv/git/repo"),
        ("no url here: user:pw@host", "no url here: user:pw@host"),
        ("mail bob@example.org", "mail bob@example.org"),
        # inside a sentence, several at once
        (
            "clone of https://t0k@h/a.git failed; retry https://u:a/b:c@h/r (exit 128)",
            "clone of https://***@h/a.git failed; retry https://u:***@h/r (exit 128)",
        ),
    ],
)
def test_redact_hides_every_url_secret_and_nothing_else(text: str, expected: str) -> None:
    """Passwords, http(s) tokens and secret query values become ***; other text stays."""
    assert redact(text) == expected


def test_redact_is_idempotent() -> None:
    """Redacting redacted text changes nothing (reports are redacted more than once)."""
    once = redact("https://ghp_abc@github.com/x?token=t https://u:p@h/r")
    assert redact(once) == once


def test_url_secrets_are_what_redact_hides() -> None:
    """The secrets of a URL, as given and decoded, so a program's echo of them is hidden."""
    assert url_secrets("https://u:p%40ss@h/r.git") == ["p%40ss", "p@ss"]
    assert url_secrets("https://ghp_abc123@github.com/x/y.git") == ["ghp_abc123"]
    assert url_secrets("https://h/x.git?access_token=abc123") == ["abc123"]
    assert url_secrets("ssh://git@github.com/x/y.git") == []
    assert url_secrets("git@github.com:x/y.git") == []


def test_without_credentials_names_the_same_repository() -> None:
    """Whatever credentials a URL carries, the repository is the same."""
    assert without_credentials("https://u:one@host/team/m.git") == "https://host/team/m.git"
    assert without_credentials("https://tok@host/team/m.git") == "https://host/team/m.git"
    assert without_credentials("ssh://git@host:22/m.git") == "ssh://host:22/m.git"
    assert without_credentials("git@host:team/m.git") == "git@host:team/m.git"
