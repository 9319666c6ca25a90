"""The access policy: which token may read or write which names. No Flask in here.

A policy is a list of tokens, each with a name, its secret (or the secret's SHA-256) and rules
over name prefixes: ``read``, ``write`` (which implies read) or ``deny``. For a name, the rule
with the longest prefix the name starts with decides; no matching rule means no access. The
file (``ACCESS_POLICY_FILE``) is TOML or JSON, the same shape either way::

    [[tokens]]
    name = "ci"                       # 1-16 of A-Z a-z 0-9 . _ -: the actor in the history
    sha256 = "9f86d081884c7d65..."    # or: secret = "the token itself"
    metrics = false                   # may it read /metrics? (default false)
    rules = { "ci/" = "write", "ci/secrets/" = "deny" }

``READ_TOKENS``/``WRITE_TOKENS`` are shorthand for tokens with the one rule ``"" = "read"`` /
``"" = "write"`` (and /metrics), named after the first 8 hex digits of their SHA-256.

``PolicySource`` keeps the policy in force and reloads the file when it changes (looked at no
more than once per ``check_interval`` seconds): a file that does not parse is refused with a
clear message and the policy in force stays. ``python policy.py FILE`` checks a file.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import re
import sys
import threading
import time
import tomllib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("var_keeper.policy")

LEVELS = ("deny", "read", "write")
MAX_PREFIX_CHARS = 255
# The change log stores a token's name as the actor of a change: ASCII, 16 characters at most.
TOKEN_NAME = re.compile(r"[A-Za-z0-9._-]{1,16}")
_HEX_DIGEST = re.compile(r"[0-9a-fA-F]{64}")
_TOKEN_MEMBERS = {"name", "secret", "sha256", "rules", "metrics"}


class PolicyError(ValueError):
    """A policy that cannot be used; the message says where and why."""


@dataclass(frozen=True, slots=True)
class Rule:
    prefix: str
    level: str  # "deny", "read" or "write"

    def describe(self) -> str:
        return f"rule {json.dumps(self.prefix, ensure_ascii=False)} = {json.dumps(self.level)}"

    def allows(self, operation: str) -> bool:
        return self.level == "write" or (self.level == "read" and operation == "read")


@dataclass(frozen=True, slots=True)
class Token:
    """One token: its public ``name``, the SHA-256 of its secret, its rules (longest prefix
    first) and whether it may read /metrics."""

    name: str
    digest: bytes
    rules: tuple[Rule, ...]
    metrics: bool = False

    def rule_for(self, name: str) -> Rule | None:
        """The rule that decides for ``name``: the longest prefix it starts with."""
        return next((rule for rule in self.rules if name.startswith(rule.prefix)), None)

    def may(self, name: str, operation: str) -> bool:
        """Whether this token may ``operation`` ("read" or "write") the variable ``name``."""
        rule = self.rule_for(name)
        return rule is not None and rule.allows(operation)

    def refusal(self, name: str, operation: str) -> str | None:
        """Why this token may not ``operation`` ``name`` (naming the rule), or None if it may."""
        rule = self.rule_for(name)
        if rule is not None and rule.allows(operation):
            return None
        shown = json.dumps(name, ensure_ascii=False)
        if rule is None:
            return f"token {self.name!r} may not {operation} {shown}: no rule covers it"
        return f"token {self.name!r} may not {operation} {shown}: {rule.describe()}"

    def reads_all_under(self, prefix: str) -> bool:
        """Whether every name starting with ``prefix`` is readable (no filtering needed)."""
        rule = self.rule_for(prefix)
        if rule is None or not rule.allows("read"):
            return False
        nested = (r for r in self.rules if r.prefix.startswith(prefix) and r.prefix != prefix)
        return all(r.allows("read") for r in nested)

    def read_regions(self, prefix: str) -> list[str]:
        """Prefixes, none inside another, in name order, that together hold every name under
        ``prefix`` this token may read (they may also hold some it may not: filter)."""
        deciding = self.rule_for(prefix)
        regions = {prefix} if deciding is not None and deciding.allows("read") else set()
        for rule in self.rules:
            if rule.allows("read") and rule.prefix.startswith(prefix):
                regions.add(rule.prefix)
        ordered = sorted(regions)
        outermost: list[str] = []
        for region in ordered:
            if not outermost or not region.startswith(outermost[-1]):
                outermost.append(region)
        return outermost

    def may_write_somewhere(self) -> bool:
        return any(rule.level == "write" for rule in self.rules)


class Policy:
    """The tokens in force. ``find`` compares a digest with every token's in constant time."""

    def __init__(self, tokens: Sequence[Token]) -> None:
        self.tokens = tuple(tokens)

    @property
    def enabled(self) -> bool:
        return bool(self.tokens)

    def find(self, digest: bytes) -> Token | None:
        found = None
        for token in self.tokens:
            if hmac.compare_digest(digest, token.digest):
                found = token
        return found

    def by_name(self, name: str) -> Token | None:
        return next((token for token in self.tokens if token.name == name), None)


def digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).digest()


# --- Parsing


def parse(text: str, kind: str) -> list[Token]:
    """The tokens of a policy document; ``kind`` is "toml" or "json"."""
    try:
        if kind == "toml":
            document: Any = tomllib.loads(text)
        else:
            document = json.loads(text, object_pairs_hook=_no_duplicate_keys)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise PolicyError(f"not valid {kind.upper()}: {exc}") from exc
    if not isinstance(document, dict) or set(document) != {"tokens"}:
        raise PolicyError('the policy must have one member, "tokens": a list of tokens')
    items = document["tokens"]
    if not isinstance(items, list):
        raise PolicyError('"tokens" must be a list of tokens')
    tokens = [_token(index, item) for index, item in enumerate(items)]
    _check_unique(tokens)
    return tokens


def load(path: str) -> list[Token]:
    """The tokens of the policy file at ``path`` (TOML unless it ends in .json)."""
    return _load(path)[0]


def _load(path: str, kind: str | None = None) -> tuple[list[Token], bytes]:
    """The tokens of the policy file at ``path``, and the bytes they were read from."""
    kind = kind or ("json" if path.lower().endswith(".json") else "toml")
    try:
        with open(path, "rb") as file:
            raw = file.read()
    except OSError as exc:
        raise PolicyError(f"cannot read the access policy {path}: {exc.strerror}") from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PolicyError(f"the access policy {path} is not UTF-8 text") from exc
    try:
        return parse(text, kind), raw
    except PolicyError as exc:
        raise PolicyError(f"the access policy {path} is refused: {exc}") from exc


def shorthand(read_tokens: Iterable[str], write_tokens: Iterable[str]) -> list[Token]:
    """READ_TOKENS / WRITE_TOKENS as tokens with the one rule "" = read / write."""
    tokens = []
    for level, secrets in (("write", write_tokens), ("read", read_tokens)):
        for secret in secrets:
            if not secret.strip():
                raise PolicyError(f"an empty token in {level.upper()}_TOKENS")
            hashed = digest(secret.strip())
            rules = (Rule("", level),)
            tokens.append(Token(hashed.hex()[:8], hashed, rules, metrics=True))
    return tokens


def combine(*groups: Sequence[Token]) -> Policy:
    """One policy of every group's tokens; a token (or a name) given twice is an error."""
    tokens = [token for group in groups for token in group]
    _check_unique(tokens)
    return Policy(tokens)


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [key for key, _ in pairs]
    repeated = sorted({key for key in keys if keys.count(key) > 1})
    if repeated:
        raise PolicyError(f"the member {repeated[0]!r} is given twice in one object")
    return dict(pairs)


def _token(index: int, item: Any) -> Token:
    where = f"token {index + 1}"
    if not isinstance(item, dict):
        raise PolicyError(f"{where} must be a table/object")
    name = item.get("name")
    if isinstance(name, str) and TOKEN_NAME.fullmatch(name):
        where = f"token {name!r}"
    else:
        raise PolicyError(f"{where}: name must be 1 to 16 of A-Z a-z 0-9 . _ -")
    unknown = sorted(set(item) - _TOKEN_MEMBERS)
    if unknown:
        raise PolicyError(f"{where}: unknown member {unknown[0]!r}")
    hashed = _token_digest(where, item)
    metrics = item.get("metrics", False)
    if not isinstance(metrics, bool):
        raise PolicyError(f"{where}: metrics must be true or false")
    return Token(name, hashed, _rules(where, item.get("rules")), metrics)


def _token_digest(where: str, item: dict[str, Any]) -> bytes:
    if ("secret" in item) == ("sha256" in item):
        raise PolicyError(f"{where}: give exactly one of secret or sha256")
    if "secret" in item:
        secret = item["secret"]
        if not isinstance(secret, str) or not secret.strip():
            raise PolicyError(f"{where}: the secret is empty")
        if secret != secret.strip() or any(ord(c) < 0x21 or ord(c) == 0x7F for c in secret):
            raise PolicyError(f"{where}: the secret has spaces or control characters")
        return digest(secret)
    hex_digest = item["sha256"]
    if not isinstance(hex_digest, str) or not _HEX_DIGEST.fullmatch(hex_digest):
        raise PolicyError(f"{where}: sha256 must be 64 hex digits (sha256sum of the token)")
    return bytes.fromhex(hex_digest)


def _rules(where: str, raw: Any) -> tuple[Rule, ...]:
    if not isinstance(raw, dict) or not raw:
        raise PolicyError(f'{where}: rules must be a table of prefix = "read"|"write"|"deny"')
    rules = []
    for prefix, level in raw.items():
        if level not in LEVELS:
            shown = json.dumps(level) if isinstance(level, str) else repr(level)
            raise PolicyError(f"{where}: unknown rule {shown} for {prefix!r} (read, write or deny)")
        if len(prefix) > MAX_PREFIX_CHARS or any(
            ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in prefix
        ):
            raise PolicyError(f"{where}: the prefix {prefix!r} can never start a name")
        rules.append(Rule(prefix, level))
    return tuple(sorted(rules, key=lambda rule: len(rule.prefix), reverse=True))


def _check_unique(tokens: Sequence[Token]) -> None:
    names: set[str] = set()
    digests: dict[bytes, str] = {}
    for token in tokens:
        if token.name in names:
            raise PolicyError(f"two tokens are named {token.name!r}")
        if token.digest in digests:
            raise PolicyError(
                f"tokens {digests[token.digest]!r} and {token.name!r} are the same secret"
            )
        names.add(token.name)
        digests[token.digest] = token.name


# --- The policy in force


# Set by gunicorn.conf.py for every worker: where the policy in force is kept (PolicySource).
LAST_GOOD_VARIABLE = "VAR_KEEPER_POLICY_LAST_GOOD"


class PolicySource:
    """The policy in force: the file's tokens (if any) and the shorthand ones. Reloads the file
    when its size, time or inode changes; a file that does not parse is logged and refused.

    ``last_good``, if given (gunicorn.conf.py gives every worker the same one), is a private
    file where each policy put in force is kept: a worker that starts while the policy file
    does not parse (restarted after a crash, say) starts with the policy the others hold
    instead of failing to boot."""

    def __init__(
        self,
        path: str | None,
        fixed: Sequence[Token],
        check_interval: float = 1.0,
        last_good: str | None = None,
    ):
        self.path, self.fixed, self.check_interval = path, tuple(fixed), check_interval
        self.last_good = last_good
        self._lock = threading.Lock()
        self._checked = time.monotonic()
        self._stat = self._file_stat()
        self.last_error: str | None = None
        self._policy = combine(self._load_at_start(), self.fixed)

    def _load_at_start(self) -> list[Token]:
        if not self.path:
            return []
        try:
            tokens, raw = _load(self.path)
        except PolicyError as exc:
            if not (self.last_good and os.path.exists(self.last_good)):
                raise
            self.last_error = str(exc)
            log.error("%s; the policy in force in the other workers stays", exc)
            kind = "json" if self.path.lower().endswith(".json") else "toml"
            return _load(self.last_good, kind)[0]
        self._keep(raw)
        return tokens

    def _keep(self, raw: bytes) -> None:
        """Keep ``raw``, a policy now in force, in ``last_good`` (owner-only, replaced
        atomically)."""
        if not self.last_good:
            return
        partial = f"{self.last_good}.{os.getpid()}"
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as file:
            file.write(raw)
        os.replace(partial, self.last_good)

    def current(self) -> Policy:
        if self.path and time.monotonic() - self._checked >= self.check_interval:
            self.reload_if_changed()
        return self._policy

    def reload_if_changed(self) -> bool:
        """Load the file again if it changed; whether a new policy is now in force."""
        with self._lock:
            self._checked = time.monotonic()
            stat = self._file_stat()
            if stat == self._stat:
                return False
            self._stat = stat  # a refused file is not read again until it changes again
            try:
                tokens, raw = _load(self.path or "")
                policy = combine(tokens, self.fixed)
            except PolicyError as exc:
                self.last_error = str(exc)
                log.error("%s; the policy in force stays", exc)
                return False
            self._keep(raw)
            self._policy, self.last_error = policy, None
            log.info("access policy reloaded from %s: %d tokens", self.path, len(policy.tokens))
            return True

    def _file_stat(self) -> tuple[int, int, int] | None:
        if not self.path:
            return None
        try:
            stat = os.stat(self.path)
        except OSError:
            return None
        return (stat.st_mtime_ns, stat.st_size, stat.st_ino)


def main(argv: Sequence[str]) -> int:
    """``python policy.py FILE``: check a policy before putting it in place."""
    if len(argv) != 2:
        print("usage: python policy.py POLICY_FILE", file=sys.stderr)
        return 2
    try:
        tokens = load(argv[1])
    except PolicyError as exc:
        print(exc, file=sys.stderr)
        return 1
    for token in tokens:
        rules = ", ".join(rule.describe().removeprefix("rule ") for rule in token.rules)
        print(f"{token.name}: {rules}{'; metrics' if token.metrics else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
