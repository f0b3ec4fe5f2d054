"""Who may label when the app listens beyond this computer: the annotators' credential store.

Standard library only (no Streamlit): ``labeler annotators`` and the app's sign-in page
(:mod:`labeler.ui.auth`) both use it.

The store is ``WORKSPACE/annotators.json``, mode 0600, rewritten atomically (temporary file,
``fsync``, ``os.replace``). Per annotator it keeps a random 16-byte salt and the
``hashlib.scrypt`` hash of the password (n=2**14, r=8, p=1: about 50 ms and 16 MiB per
check); never the password. It also keeps one random per-workspace secret that signs the
app's session cookies (:func:`sign_session`). Passwords are made by :func:`new_password`
(``secrets.token_urlsafe``, 96 bits) and shown once, by the command that made them.

>>> store = add_annotator("ws", "Ann")          # doctest: +SKIP
>>> verify("ws", "ann", store.password)         # doctest: +SKIP
'Ann'
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import os
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from labeler.errors import ExistsError, InputError, NotFoundError
from labeler.labels.names import MAX_ANNOTATOR_LEN

log = logging.getLogger(__name__)

FILE_NAME = "annotators.json"
FORMAT = 1
MAX_NAME = MAX_ANNOTATOR_LEN  # the sign-in box allows as many characters
SCRYPT = {"n": 2**14, "r": 8, "p": 1}
SESSION_DAYS = 7


@dataclass(frozen=True)
class Annotator:
    """One annotator as stored: ``name`` (as given), ``created`` (Unix time)."""

    name: str
    created: float


@dataclass(frozen=True)
class Invite:
    """What :func:`add_annotator` / :func:`reset_password` return: the password, shown once."""

    name: str
    password: str


def store_path(root: str | os.PathLike[str]) -> Path:
    """The credential store of the workspace at ``root``."""
    return Path(root) / FILE_NAME


def is_loopback(host: str | None) -> bool:
    """Whether a server bound to ``host`` can only be reached from this computer.

    ``None`` or ``""`` (Streamlit's default: every interface), ``0.0.0.0``, ``::`` and any
    host name other than ``localhost`` count as reachable from the network.
    """
    if not host:
        return False
    host = host.strip().strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def clean_name(name: str) -> str:
    """A name as stored and compared: trimmed, inner whitespace collapsed."""
    return " ".join(str(name).split())


def _read(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise InputError(
            f"{path} cannot be read ({exc}); fix or delete it and add the annotators again "
            "with 'labeler annotators add NAME'"
        ) from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise InputError(
            f"{path} is not a labeler annotators file (format {FORMAT}); delete it and add "
            "the annotators again with 'labeler annotators add NAME'"
        )
    return data


def _write(path: Path, data: dict) -> None:
    """Write ``data`` to ``path`` atomically, mode 0600 from the first byte."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)  # whatever the umask
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _hash(password: str, salt: bytes, params: dict) -> bytes:
    return hashlib.scrypt(
        password.encode("utf-8"), salt=salt, n=params["n"], r=params["r"], p=params["p"],
        maxmem=64 * 1024 * 1024, dklen=32,
    )  # fmt: skip


def _entry(password: str) -> dict:
    salt = secrets.token_bytes(16)
    return {
        "salt": salt.hex(),
        "hash": _hash(password, salt, SCRYPT).hex(),
        "scrypt": dict(SCRYPT),
        "created": time.time(),
    }


def new_password() -> str:
    """A fresh random password (16 URL-safe characters, 96 bits)."""
    return secrets.token_urlsafe(12)


def _find(annotators: dict, name: str) -> str | None:
    """The stored spelling of ``name`` (names compare without regard to case)."""
    want = clean_name(name).casefold()
    return next((n for n in annotators if n.casefold() == want), None)


def _check_name(name: str) -> str:
    name = clean_name(name)
    if not name or len(name) > MAX_NAME:
        raise InputError(f"annotator name {name!r} must have 1 to {MAX_NAME} characters")
    return name


def add_annotator(root: str | os.PathLike[str], name: str) -> Invite:
    """Add annotator ``name`` with a new random password; returns it (the store keeps only
    its salted hash). Refuses a name already there (any case)."""
    name = _check_name(name)
    path = store_path(root)
    data = _read(path) or {"format": FORMAT, "secret": secrets.token_hex(32), "annotators": {}}
    if _find(data["annotators"], name) is not None:
        raise ExistsError(
            f"annotator {name!r} is already in {path}; give them a new password with "
            "'labeler annotators reset NAME', or remove them first"
        )
    password = new_password()
    data["annotators"][name] = _entry(password)
    _write(path, data)
    log.info("added annotator %r to %s", name, path)
    return Invite(name, password)


def _existing(root: str | os.PathLike[str], name: str) -> tuple[Path, dict, str]:
    """The store's path, its contents and ``name`` as stored; NotFoundError naming the fix."""
    path = store_path(root)
    data = _read(path)
    stored = _find(data.get("annotators", {}), name)
    if stored is None:
        raise NotFoundError(_unknown(name, path))
    return path, data, stored


def reset_password(root: str | os.PathLike[str], name: str) -> Invite:
    """A new password for ``name``; the old one and every session signed with it stop working."""
    path, data, stored = _existing(root, name)
    password = new_password()
    data["annotators"][stored] = _entry(password)
    _write(path, data)
    return Invite(stored, password)


def remove_annotator(root: str | os.PathLike[str], name: str) -> str:
    """Remove ``name`` (its open sessions end at their next click); returns the stored name."""
    path, data, stored = _existing(root, name)
    del data["annotators"][stored]
    _write(path, data)
    return stored


def _unknown(name: str, path: Path) -> str:
    return f"no annotator {name!r} in {path}; see 'labeler annotators list'"


def annotators(root: str | os.PathLike[str]) -> list[Annotator]:
    """The annotators of the workspace at ``root``, in the order they were added."""
    data = _read(store_path(root))
    return [Annotator(n, float(e.get("created", 0))) for n, e in data.get("annotators", {}).items()]


def verify(root: str | os.PathLike[str], name: str, password: str) -> str | None:
    """The stored name when ``password`` is ``name``'s, else None.

    An unknown name costs the same scrypt work as a wrong password (no hint which names
    exist); the comparison is constant-time.
    """
    data = _read(store_path(root))
    stored = _find(data.get("annotators", {}), name)
    entry = data["annotators"][stored] if stored is not None else None
    if entry is None:
        _hash(password, b"\0" * 16, SCRYPT)
        return None
    got = _hash(password, bytes.fromhex(entry["salt"]), entry.get("scrypt", SCRYPT))
    return stored if hmac.compare_digest(got, bytes.fromhex(entry["hash"])) else None


# --- signed session cookies ----------------------------------------------------------------------


def _mac(secret: str, name: str, expires: int, salt: str) -> str:
    msg = f"{name}\n{expires}\n{salt}".encode()
    return hmac.new(bytes.fromhex(secret), msg, hashlib.sha256).hexdigest()


def _session_salt(entry: dict) -> str:
    """What a session cookie is bound to: the password's salt (a reset ends every session)
    and the sign-out epoch (:func:`end_sessions`)."""
    return f"{entry['salt']}:{entry.get('session', '')}"


def end_sessions(root: str | os.PathLike[str], name: str) -> str:
    """Sign ``name`` out everywhere: every session cookie made so far (copied to another
    browser or not) stops working, and open sessions end at their next click; the password
    stays. What the app's Sign out does. Returns the stored name."""
    path, data, stored = _existing(root, name)
    data["annotators"][stored]["session"] = secrets.token_hex(16)
    _write(path, data)
    return stored


def sign_session(root: str | os.PathLike[str], name: str, *, now: float | None = None) -> str:
    """A cookie value that proves ``name`` signed in, for :data:`SESSION_DAYS` days.

    Signed (HMAC-SHA256) with the workspace's secret and bound to the annotator's current
    salt and sign-out epoch: a password reset, a removal or a sign-out
    (:func:`end_sessions`) makes every older cookie worthless.
    """
    data = _read(store_path(root))
    stored = _find(data.get("annotators", {}), name)
    if stored is None:
        raise NotFoundError(_unknown(name, store_path(root)))
    expires = int((now or time.time()) + SESSION_DAYS * 86400)
    salt = _session_salt(data["annotators"][stored])
    return f"{stored.encode().hex()}.{expires}.{_mac(data['secret'], stored, expires, salt)}"


def session_name(
    root: str | os.PathLike[str], cookie: str | None, *, now: float | None = None
) -> str | None:
    """The annotator a :func:`sign_session` cookie names, or None when it is missing,
    forged, expired, or its annotator was removed, given a new password or signed out."""
    if not cookie:
        return None
    try:
        name_hex, expires_s, mac = cookie.split(".")
        name, expires = bytes.fromhex(name_hex).decode(), int(expires_s)
    except (ValueError, UnicodeDecodeError):
        return None
    if expires < (now or time.time()):
        return None
    data = _read(store_path(root))
    entry = data.get("annotators", {}).get(name)
    if entry is None:
        return None
    good = _mac(data["secret"], name, expires, _session_salt(entry))
    return name if hmac.compare_digest(good, mac) else None


def session_token(root: str | os.PathLike[str], name: str) -> str | None:
    """What must not change while ``name`` stays signed in (its salt and sign-out epoch);
    None once removed."""
    data = _read(store_path(root))
    entry = data.get("annotators", {}).get(name)
    return None if entry is None else _session_salt(entry)


# --- failed sign-ins -----------------------------------------------------------------------------


def throttle_keys(
    name: str, *, forwarded_for: str | None = None, trusted_proxy: bool = False
) -> list[str]:
    """The keys a failed sign-in as ``name`` counts against: the name (case-folded), and
    the client only when a trusted reverse proxy names it (the last address of its
    ``X-Forwarded-For``, the one the proxy itself saw; earlier ones the client can forge).

    Never the socket's address: behind a proxy every browser shares it (Streamlit's
    ``st.context.ip_address`` is documented as unavailable there and not for security), so
    one guesser would lock every annotator out. Wrong passwords under made-up names thus
    never delay a real annotator's sign-in.
    """
    keys = [f"name:{name.casefold()}"]
    if trusted_proxy and forwarded_for:
        client = forwarded_for.split(",")[-1].strip()
        if client:
            keys.append(f"client:{client}")
    return keys


class Throttle:
    """Slows down guessing: after ``free`` failed sign-ins in a row for one key (a name, a
    proxied client: :func:`throttle_keys`), that key waits ``2 ** (failures - free)``
    seconds (at most ``cap``) before the next try is even checked. A success clears the
    key. Bounded memory: a key not failed for ``forget_s`` is dropped, and beyond
    ``max_keys`` keys the longest-quiet ones go first (a flood of made-up names costs at
    most ``max_keys`` entries). Thread-safe; one instance is shared by every session of the
    app (``st.cache_resource``)."""

    def __init__(
        self, *, free: int = 5, cap: float = 300.0, max_keys: int = 10_000, forget_s: float = 3600.0
    ) -> None:
        from collections import OrderedDict

        self.free, self.cap, self.max_keys, self.forget_s = free, cap, max_keys, forget_s
        # key -> (failures, may try again at, last failure); oldest last failure first
        self._fails: OrderedDict[str, tuple[int, float, float]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._fails)

    def wait(self, keys: list[str], *, now: float | None = None) -> float:
        """Seconds before any of ``keys`` may try again (0: now)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            waits = [self._fails[k][1] - now for k in keys if k in self._fails]
        return max([0.0, *waits])

    def failed(self, keys: list[str], *, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        with self._lock:
            self._prune(now)
            for k in keys:
                n = self._fails.pop(k, (0, now, now))[0] + 1
                delay = 0.0 if n < self.free else min(self.cap, 2.0 ** (n - self.free))
                self._fails[k] = (n, now + delay, now)
            while len(self._fails) > self.max_keys:
                self._fails.popitem(last=False)

    def _prune(self, now: float) -> None:
        while self._fails:
            key, (_n, until, last) = next(iter(self._fails.items()))
            if last + self.forget_s > now or until > now:
                break
            del self._fails[key]

    def succeeded(self, keys: list[str]) -> None:
        with self._lock:
            for k in keys:
                self._fails.pop(k, None)
