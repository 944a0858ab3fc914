"""Who may ask: loopback without a token, anything else only with one.

A token is a random string in a file of its own (0600, `serve --new-token`); when a
token is configured every request must carry it, as `Authorization: Bearer TOKEN` or as
the cookie that `/login?token=TOKEN` sets. Compared in constant time (hmac.compare_digest).
"""

import ipaddress
import os
import stat
from http.cookies import CookieError, SimpleCookie
from pathlib import Path
from typing import Optional

from featherflow.errors import UsageError

try:  # the constant-time compare hmac.compare_digest falls back on: importing hmac loads
    # OpenSSL's libcrypto, 3.7 MB of the status page's idle RSS, for this one call
    from _operator import _compare_digest as compare_digest
except ImportError:  # another Python than CPython
    from hmac import compare_digest

COOKIE = "featherflow_token"
TOKEN_FILE = "serve.token"  # in the config dir, unless --token-file says otherwise
COOKIE_DAYS = 30


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: Optional[str]) -> None:
    """Anything but loopback is refused without a token: nobody else on the network may look."""
    if not is_loopback(host) and not token:
        raise UsageError(f"--bind {host} is reachable from other machines and needs a token (valid: a loopback "
                         "address such as 127.0.0.1, or create a token first with `featherflow serve --new-token`)")


def new_token(path: Path) -> str:
    """Write a new random token to `path` (0600, replacing the old one at once) and return it."""
    path = Path(path)
    import secrets  # lazy: hmac, OpenSSL (see compare_digest)

    token = secrets.token_urlsafe(32)
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        temp = path.with_name(f".{path.name}.{os.getpid()}.new")
        fd = os.open(str(temp), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(token + "\n")
        os.replace(temp, path)
    except OSError as exc:
        raise UsageError(f"cannot write the token file {path} ({exc.strerror}; valid: a path in a writable "
                         "directory, --token-file PATH)") from None
    return token


def read_token(path: Path) -> Optional[str]:
    """The token in `path`; None when there is no such file. A file others may read is refused."""
    path = Path(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise UsageError(f"cannot read the token file {path} ({exc.strerror})") from None
    if not stat.S_ISREG(st.st_mode) or st.st_mode & 0o077:
        raise UsageError(f"the token file {path} must be a regular file only its owner can read "
                         f"(valid: chmod 600 {path}, or make a new one with `featherflow serve --new-token`)")
    token = path.read_text().strip()
    if len(token) < 16:
        raise UsageError(f"the token file {path} holds no token of at least 16 characters "
                         "(valid: make one with `featherflow serve --new-token`)")
    return token


def same(given: Optional[str], token: str) -> bool:
    return given is not None and compare_digest(given.encode(), token.encode())


def allowed(token: Optional[str], authorization: Optional[str], cookie: Optional[str]) -> bool:
    """True without a token; with one, when the Bearer header or the cookie carries it."""
    if not token:
        return True
    if authorization and authorization.startswith("Bearer ") and same(authorization[7:].strip(), token):
        return True
    if cookie:
        try:
            jar = SimpleCookie(cookie)
        except CookieError:
            return False
        if COOKIE in jar and same(jar[COOKIE].value, token):
            return True
    return False


def login_cookie(token: str) -> str:
    """The Set-Cookie value of /login: script cannot read it, no other site sends it."""
    return f"{COOKIE}={token}; Max-Age={COOKIE_DAYS * 86400}; Path=/; HttpOnly; SameSite=Strict"
