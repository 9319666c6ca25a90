"""``DATABASE_URL`` parsed: the store's scheme, hosts, credentials and database (or file)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

_DATABASE_NAME = re.compile(r"^[A-Za-z0-9_]{1,64}$")


@dataclass(frozen=True, slots=True)
class DatabaseURL:
    """A parsed ``DATABASE_URL``. ``str()`` of it never shows the password.

    A cluster is several hosts in the host part, tried in that order:
    ``mysql://user:pw@h1:3306,h2:3306,h3:3306/vars``. ``host`` and ``port`` are the first one.
    """

    scheme: str
    host: str = ""
    port: int = 3306
    user: str = ""
    password: str = field(default="", repr=False)
    database: str = ""
    path: str = ""
    hosts: tuple[tuple[str, int], ...] = ()

    @classmethod
    def parse(cls, url: str, password_file: str | None = None) -> DatabaseURL:
        parts = urlsplit(url)
        scheme = parts.scheme.split("+", 1)[0].lower()
        if scheme == "sqlite":
            # SQLAlchemy's convention: sqlite:///relative/file.db, sqlite:////absolute/file.db.
            path = unquote(url.split("://", 1)[1])[1:]
            if not path:
                raise ValueError("DATABASE_URL sqlite:///PATH needs a file path")
            return cls(scheme="sqlite", path=path)
        if scheme not in ("mysql", "mariadb"):
            raise ValueError(
                f"DATABASE_URL must start with mysql:// or sqlite:///, not {parts.scheme or '(none)'}://"
            )
        database = unquote(parts.path.lstrip("/")) or "vars"
        if not _DATABASE_NAME.match(database):
            raise ValueError("the database name in DATABASE_URL may use only letters, digits and _")
        password = unquote(parts.password or "")
        if password_file:
            try:
                password = Path(password_file).read_text(encoding="utf-8").rstrip("\r\n")
            except OSError as exc:
                detail = exc.strerror or exc
                raise ValueError(f"DATABASE_PASSWORD_FILE={password_file}: {detail}") from exc
        # urlsplit knows one host only: split "h1:3306,h2:3306" ourselves.
        host_part = parts.netloc.rpartition("@")[2]
        hosts = tuple(_host_and_port(h) for h in host_part.split(",")) if host_part else ()
        hosts = hosts or (("127.0.0.1", 3306),)
        return cls(
            scheme="mysql",
            host=hosts[0][0],
            port=hosts[0][1],
            user=unquote(parts.username or "root"),
            password=password,
            database=database,
            hosts=hosts,
        )

    def __str__(self) -> str:
        if self.scheme == "sqlite":
            return f"sqlite:///{self.path}"
        secret = ":***" if self.password else ""
        hosts = ",".join(
            f"[{h}]:{p}" if ":" in h else f"{h}:{p}"
            for h, p in self.hosts or [(self.host, self.port)]
        )
        return f"mysql://{self.user}{secret}@{hosts}/{self.database}"


def _host_and_port(text: str) -> tuple[str, int]:
    """``host``, ``host:port`` or ``[v6 address]:port`` of a DATABASE_URL, port 3306 if none."""
    text = text.strip()
    host, port = text, ""
    if text.startswith("["):  # [::1]:3306
        host, _, rest = text[1:].partition("]")
        port = rest.removeprefix(":")
    elif ":" in text:
        host, _, port = text.rpartition(":")
    if not host:
        raise ValueError("DATABASE_URL has an empty host in its list of hosts")
    if port and not (port.isascii() and port.isdigit() and 0 < int(port) < 65536):
        raise ValueError("the port in DATABASE_URL is not a number")
    return host.lower(), int(port or 3306)
