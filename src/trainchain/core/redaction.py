"""Secrets out of URLs, wherever a URL is shown: the one redactor.

Emails, log lines, console messages, reports and Jenkins errors all pass text through
:func:`redact`. It hides

- the password of ``scheme://user:password@host`` (any scheme: https, ssh, postgresql,
  redis's ``redis://:password@host``): ``https://user:***@host``;
- a bare user part of an http(s) URL, which is a token there
  (``https://ghp_abc123@github.com/x/y.git``): ``https://***@github.com/x/y.git``;
- the value of a query parameter whose name ends in token, secret, password, key,
  signature, sig, auth or credential (``?access_token=...``, ``&X-Amz-Signature=...``):
  ``?access_token=***``.

``ssh://git@host/x.git`` and the scp-like ``git@host:x.git`` name a user, not a secret,
and stay as they are. Text that is not a URL is left alone.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

HIDDEN = "***"

# scheme://user[:password]@ . The password may hold '/' and ':'; an '@' belongs to it when
# another '@' follows before the host ends (a password with a raw '@': the last '@' wins).
_USERINFO = re.compile(
    r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^\s/?#@:]*)"
    r"(?::(?P<password>(?:[^\s@]|@(?=[^\s/?#]*@))*))?@"
)
_SECRET_PARAM = re.compile(
    r"(?P<name>[?&;][\w.~%-]*?(?:token|secret|password|passwd|pwd|key|signature|sig|auth|"
    r"credential)=)(?P<value>[^&#;\s]*)",
    re.IGNORECASE,
)


def _hide_userinfo(m: re.Match[str]) -> str:
    if m["password"] is not None:
        return f"{m['scheme']}{m['user']}:{HIDDEN}@"
    if m["scheme"].lower() in {"http://", "https://"}:
        return f"{m['scheme']}{HIDDEN}@"
    return m[0]


def _hide_param(m: re.Match[str]) -> str:
    return m["name"] + HIDDEN if m["value"] else m[0]


def redact(text: str) -> str:
    """``text`` with every URL's password, http(s) token and secret query value as ``***``."""
    return _SECRET_PARAM.sub(_hide_param, _USERINFO.sub(_hide_userinfo, text))


def url_secrets(url: str) -> list[str]:
    """The secrets :func:`redact` hides in ``url``, as given and percent-decoded (at least 3
    characters each), to hide them where a program repeats them without the URL."""
    found = [m["value"] for m in _SECRET_PARAM.finditer(url) if m["value"]]
    m = _USERINFO.search(url)
    if m and m["password"] is not None:
        found.append(m["password"])
    elif m and m["scheme"].lower() in {"http://", "https://"}:
        found.append(m["user"])
    return sorted({s for secret in found for s in (secret, unquote(secret)) if len(s) >= 3})


def without_credentials(url: str) -> str:
    """``url`` with no user part at all (``https://u:p@host/x`` -> ``https://host/x``): the
    same repository whatever credentials it was given with."""
    return _USERINFO.sub(lambda m: m["scheme"], url)
