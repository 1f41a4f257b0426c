"""Redaction of secrets everywhere but the handler's own context: the one function (`redact`)
that API responses, schedules, events, emails and log lines go through. The stored job keeps
the real values (its handler needs them); everything else shows `"***"` instead.

What is secret (the rule, also in README's settings table):

1. A value whose key names a secret. The key is split into words (at `_`, `-`, `.`, spaces
   and camelCase humps: `X-Api-Key` -> x, api, key) and its last word, the head noun that
   says what the value *is*, decides:
   - it is one of `password passwd pass passphrase secret secrets token key keys
     credential credentials creds auth authorization cookie`, or a glued word ending in
     `password passwd passphrase secret token apikey privatekey secretkey accesskey
     credential credentials`: `db_password`, `private-key`, `headers.X-Api-Key`,
     `aws_secret_access_key`, `authToken`, `Proxy-Authorization`, `basic_auth`;
   - or it is `value string hash text header` after such a word: `secret_string`,
     `password_hash`, `auth_header`.
   So `keyword`, `monkey`, `key_frame`, `token_count`, `password_file` and `max_tokens` are
   not secret (a frame, a count, a path; `tokens` is not a head word, as in LLM token
   counts). Any depth, any container; the whole value under such a key is masked.
2. A key named in `SWITCHYARD_SECRET_PARAM_NAMES`, as before.
3. In a two-item list `[name, value]` (headers as pairs), the value when the name is secret.
4. User info in a URL inside any string: `scheme://user:pass@host` -> `scheme://***@host`.

Names in `SWITCHYARD_SECRET_ALLOW_NAMES` are never secret by rules 1-3: by default the keys
that end in `key` without being one (`dedupe_key`, `sort_key`, ...). Names in both lists are
compared by their words, so case and separators do not matter (`Idempotency-Key` is
`idempotency_key`).
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

MASK = "***"

_HEADS = frozenset(
    {
        "password",
        "passwd",
        "pass",
        "passphrase",
        "secret",
        "secrets",
        "token",
        "key",
        "keys",
        "credential",
        "credentials",
        "creds",
        "auth",
        "authorization",
        "cookie",
    }
)
_GLUED = (
    "password",
    "passwd",
    "passphrase",
    "secret",
    "token",
    "apikey",
    "privatekey",
    "secretkey",
    "accesskey",
    "credential",
    "credentials",
)
_OF_A_SECRET = frozenset({"value", "string", "hash", "text", "header"})
# words: acronyms before a hump (API in APIKey), capitalised or lower words, bare capitals, digits
_WORDS = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|[0-9]+")
# scheme://userinfo@ : userinfo runs to the last `@` before the host's path, query or fragment
_URL_USERINFO = re.compile(r"\b([A-Za-z][A-Za-z0-9+.\-]*://)[^\s/?#@]*(?:@[^\s/?#@]*)*@")

_names: frozenset[str] = frozenset()
_allow: frozenset[str] = frozenset()


def _words(name: str) -> list[str]:
    return [w.lower() for w in _WORDS.findall(name)]


def _csv(names: str | frozenset[str] | set[str] | list[str] | tuple[str, ...]) -> frozenset[str]:
    """Names in their spelling-free form: `Idempotency-Key`, `idempotencyKey` -> idempotency_key."""
    items = names.split(",") if isinstance(names, str) else names
    return frozenset("_".join(_words(n)) for n in items if n and n.strip())


def configure(names: str | frozenset[str] = frozenset(), allow: str | frozenset[str] = frozenset()) -> None:
    """Exact secret names (rule 2) and the allow-list, from settings; the patterns are fixed."""
    global _names, _allow
    _names, _allow = _csv(names), _csv(allow)
    is_secret_name.cache_clear()


def _is_head(word: str) -> bool:
    return word in _HEADS or word.endswith(_GLUED)


@lru_cache(maxsize=8192)
def is_secret_name(name: str) -> bool:
    """Whether a value under the key `name` is masked (rules 1 and 2, less the allow-list)."""
    words = _words(name)
    if not words:
        return False
    spelled = "_".join(words)
    if spelled in _allow:
        return False
    if spelled in _names:
        return True
    if _is_head(words[-1]):
        return True
    return words[-1] in _OF_A_SECRET and any(_is_head(w) for w in words[:-1])


def redact_text(text: str) -> str:
    """`text` with the user info of every URL in it masked (rule 4)."""
    if "://" not in text:  # the common case, without the regex
        return text
    return _URL_USERINFO.sub(lambda m: m.group(1) + MASK + "@", text)


def redact(value: Any) -> Any:
    """A copy of `value` (dicts, lists and tuples at any depth) with its secrets masked."""
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {k: (MASK if isinstance(k, str) and is_secret_name(k) else redact(v)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        if len(value) == 2 and isinstance(value[0], str) and is_secret_name(value[0]):
            out = [value[0], MASK]
        else:
            out = [redact(v) for v in value]
        return out if isinstance(value, list) else tuple(out)
    return value
