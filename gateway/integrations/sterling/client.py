"""IBM Sterling B2B Integrator mailbox source (B2B REST API, ``/B2BAPIs/svc``).

The pipeline drives a source in three steps and must keep this order, so nothing is lost or doubled::

    for msg in client.list_pending():          # messages waiting in the configured mailboxes
        try:
            data = client.fetch(msg)            # raw payload bytes, length checked
        except MessageGone:
            continue                            # consumed/removed by someone else: skip, keep polling
        store.commit(msg, data, sha256(data))   # durable first ...
        client.acknowledge(msg)                 # ... then tell Sterling it was taken

Wire behaviour follows ``specs/sterling.md``: Basic auth on every request; mailbox id looked up by path and
matched exactly (the server's match is SQL LIKE); ``GET /mailboxcontents/?parentMailboxId=&detail=true&_range=a-b``
paged until a short page, deduplicated by id and re-listed until a pass finds nothing new (offset paging over a
live mailbox shifts); payload read with ``GET /documents/{documentId}`` (a plain read that never spends an
extraction), after re-checking the message with ``GET /mailboxmessages/{id}``; acknowledgement by one policy per
source: ``consume`` (``PUT extractableAlways=0, extractableCount=0``: the message stays visible to operators),
``move`` (``actions/move`` to an archive mailbox) or ``delete``. ``actions/extract`` is deliberately not used: it
is not idempotent and cannot be retried safely.
"""

from __future__ import annotations

import base64
import binascii
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any
from urllib.parse import quote, urlsplit

import httpx
import structlog
from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential_jitter

from gateway.integrations.base import SourceError
from gateway.integrations.sterling.settings import SterlingConfig

__all__ = [
    "MailboxNotFound",
    "MailboxUnavailable",
    "MessageGone",
    "PayloadSizeMismatch",
    "PayloadTooLarge",
    "RemoteMessage",
    "SterlingAuthError",
    "SterlingError",
    "SterlingPermissionError",
    "SterlingProtocolError",
    "SterlingClient",
    "SterlingUnavailable",
]

log = structlog.get_logger(__name__)


_RETRY_STATUSES = frozenset({429, 500, 502, 503, 504, 507, 509, 598, 599})
_BODY_SNIPPET = 300


# ------------------------------------------------------------------------------------------- errors


class SterlingError(SourceError):
    """A Sterling call failed in a way the poll cannot work around. Texts never carry credentials."""

    def __init__(self, message: str, *, status: int | None = None, method: str | None = None,
                 path: str | None = None, detail: str | None = None) -> None:
        super().__init__(message)
        self.status, self.method, self.path, self.detail = status, method, path, detail


class SterlingAuthError(SterlingError):
    """401: credentials rejected (wrong, rotated, locked or expired B2Bi password). Not retried."""


class SterlingPermissionError(SterlingError):
    """403: the API user lacks ``APIUser`` or the mailbox permission (``"<path> Mailbox"``)."""


class SterlingUnavailable(SterlingError):
    """Transient faults outlasted the retry budget, or the API context root is missing (Liberty 404)."""


class SterlingProtocolError(SterlingError):
    """The server answered with something this client cannot interpret (unexpected status or shape)."""


class MailboxNotFound(SterlingError):
    """A configured mailbox path is not visible to the API user (missing, or its permission revoked)."""


class MailboxUnavailable(SterlingError):
    """Some configured mailboxes could not be listed (not found / not permitted); the others were.

    Raised by :meth:`SterlingClient.list_pending` after every listable mailbox has been yielded.
    ``failures`` maps mailbox path to the underlying error.
    """

    def __init__(self, failures: dict[str, SterlingError]) -> None:
        text = "; ".join(f"{path}: {err}" for path, err in failures.items())
        super().__init__(f"Sterling mailboxes not polled: {text}")
        self.failures = failures


class PayloadTooLarge(SterlingError):
    """The message is larger than ``max_payload_bytes``; it was not fetched (and must not be acknowledged)."""


class PayloadSizeMismatch(SterlingError):
    """Decoded payload length differs from the message ``size``: incomplete upload or truncated read.

    Not acknowledged; a later poll retries it.
    """


class MessageGone(LookupError):
    """The message disappeared between list and fetch (deleted, moved, or drained by another consumer).

    Not a fault of the poll: skip the message and carry on. Deliberately not a :class:`SterlingError`,
    so a handler that stops the poll on ``SterlingError`` does not stop on this.
    """

    def __init__(self, msg: RemoteMessage, reason: str) -> None:
        super().__init__(f"Sterling message {msg.remote_id} ({msg.name!r}) in {msg.mailbox} is gone: {reason}")
        self.message, self.reason = msg, reason


class _Transient(Exception):
    def __init__(self, detail: str, retry_after: float | None = None) -> None:
        super().__init__(detail)
        self.retry_after = retry_after


# ------------------------------------------------------------------------------------------ message


@dataclass(frozen=True, slots=True)
class RemoteMessage:
    """One message waiting in a Sterling mailbox, as listed. ``remote_id`` is the Sterling message id."""

    mailbox: str
    remote_id: str
    name: str
    size: int | None
    created: datetime | None
    document_id: str | None = None
    mailbox_id: str | None = None
    source: str = "sterling"


def parse_sterling_timestamp(value: Any) -> datetime | None:
    """``2024-05-02T09:14:07.000+0000`` (colon-less offset) -> aware UTC datetime; None if absent/unparseable."""
    if not isinstance(value, str) or not value:
        return None
    for fmt in ("%Y-%m-%dT%H:%M:%S.%f%z", "%Y-%m-%dT%H:%M:%S%z"):
        try:
            return datetime.strptime(value, fmt).astimezone(timezone.utc)
        except ValueError:
            pass
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed.astimezone(timezone.utc) if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def _flag(value: Any) -> bool | None:
    # extractableAlways is {"code": bool, ...} on mailboxmessages, a plain boolean on mailboxcontents.
    if isinstance(value, dict):
        value = value.get("code")
    if value is None:
        return None
    if isinstance(value, str):
        return value.strip().lower() in {"1", "true", "yes", "y"}
    return bool(value)


def _extractable(item: dict[str, Any], now: datetime) -> bool:
    """Whether Sterling would still hand this message out. Unknown (fields missing) counts as yes:
    fetching twice is caught by the store's hash dedupe, skipping would lose a document."""
    if _flag(item.get("extractableAlways")):
        return True
    count = item.get("extractableCount")
    if count is not None:
        try:
            return int(count) > 0
        except (TypeError, ValueError):
            return True
    until = parse_sterling_timestamp(item.get("extractableUntil"))
    if until is not None:
        return until > now
    return True


# ------------------------------------------------------------------------------------------- source


class ClientCredentialsAuth(httpx.Auth):
    """OAuth2 client credentials (RFC 6749 §4.4) for the B2B REST API: the mode the brief assumed for
    B2Bi 6.2.2+ (SPECULATIVE: ``specs/sterling.md`` §2 found it documented for the SaaS product only).

    The token comes from ``token_url`` (the client authenticating with Basic), is kept until shortly
    before ``expires_in`` runs out, and is fetched again once when the API answers 401 (expired or
    revoked early); a second 401 is the API's answer. The secret never leaves this object but in
    the token request's Authorization header.
    """

    requires_response_body = True
    MARGIN_S = 60.0  # fetch a new token this long before the old one expires

    def __init__(self, token_url: str, client_id: str, client_secret: str, *, scope: str | None = None,
                 clock=time.monotonic) -> None:
        self.token_url, self.client_id, self.scope = token_url, client_id, scope
        self._basic = httpx.BasicAuth(client_id, client_secret)
        self._clock = clock
        self._token: str | None = None
        self._expires_at = 0.0
        self._lock = threading.Lock()

    def _token_request(self) -> httpx.Request:
        form = {"grant_type": "client_credentials"}
        if self.scope:
            form["scope"] = self.scope
        request = httpx.Request("POST", self.token_url, data=form, headers={"Accept": "application/json"})
        return next(self._basic.auth_flow(request))

    def _adopt(self, response: httpx.Response) -> str:
        if response.status_code in _RETRY_STATUSES:  # the token endpoint is busy: the request is retried
            raise _Transient(f"OAuth2 token request: HTTP {response.status_code}")
        if response.status_code in (400, 401):
            raise SterlingAuthError(f"Sterling OAuth2 token request: HTTP {response.status_code}, client "
                                    f"{self.client_id!r} refused ({_oauth_error(response)})",
                                    status=response.status_code, method="POST", path="/oauth2/token")
        try:
            data = response.json()
            token, lifetime = str(data["access_token"]), float(data.get("expires_in", 3600))
        except (ValueError, KeyError, TypeError):
            raise SterlingProtocolError(f"Sterling OAuth2 token request: HTTP {response.status_code}, no "
                                        "access_token in the answer", method="POST", path="/oauth2/token") from None
        with self._lock:
            self._token, self._expires_at = token, self._clock() + lifetime
        return token

    def _cached(self) -> str | None:
        with self._lock:
            if self._token and self._clock() < self._expires_at - self.MARGIN_S:
                return self._token
            return None

    def auth_flow(self, request: httpx.Request):
        token = self._cached()
        if token is None:
            token = self._adopt((yield self._token_request()))
        request.headers["Authorization"] = f"Bearer {token}"
        response = yield request
        if response.status_code == 401:  # expired or revoked before its time: one new token, one retry
            with self._lock:
                self._token = None
            token = self._adopt((yield self._token_request()))
            request.headers["Authorization"] = f"Bearer {token}"
            yield request


def _oauth_error(response: httpx.Response) -> str:
    try:
        return str(response.json().get("error") or "no reason given")
    except (ValueError, AttributeError):
        return "no reason given"


class SterlingClient:
    """Polls Sterling B2Bi mailboxes over the B2B REST API. Synchronous; one instance per poller.

    Use as a context manager (or call :meth:`close`) to release the HTTP connection pool.
    """

    def __init__(self, config: SterlingConfig, *, transport: httpx.BaseTransport | None = None) -> None:
        self.config = config
        verify: bool | ssl.SSLContext = config.verify
        if isinstance(config.verify, str):
            verify = ssl.create_default_context(cafile=config.verify)  # customer CA for self-signed Liberty certs
        if config.auth == "oauth2":
            assert config.oauth_client_secret is not None
            self._secret = config.oauth_client_secret.get_secret_value()
            auth: httpx.Auth = ClientCredentialsAuth(
                config.oauth_token_url or config.base_url + "/oauth2/token", config.oauth_client_id or "",
                self._secret, scope=config.oauth_scope)
        else:
            assert config.password is not None
            self._secret = config.password.get_secret_value()
            auth = httpx.BasicAuth(config.username or "", self._secret)
        self._client = httpx.Client(
            base_url=config.base_url + config.api_root,
            auth=auth,
            # IBM documents all three headers as required, GET included.
            headers={"Accept": "application/json", "Content-Type": "application/json"},
            timeout=config.timeout, verify=verify, transport=transport, follow_redirects=False,
        )
        self._backoff = wait_exponential_jitter(multiplier=config.retry_wait_initial, max=config.retry_wait_max,
                                                jitter=config.retry_wait_initial)
        self._retrying = Retrying(
            retry=retry_if_exception_type(_Transient),
            stop=stop_after_attempt(config.retry_attempts),
            wait=self._wait,
            before_sleep=self._log_retry,
            reraise=True,
        )
        self._log = log.bind(source="sterling", host=urlsplit(config.base_url).netloc)

    # ------------------------------------------------------------------ public interface
    def list_pending(self) -> Iterator[RemoteMessage]:
        """Yield each extractable message of every configured mailbox once, oldest id first per mailbox.

        A mailbox's listing is read completely before its messages are yielded, so acknowledgements made
        while iterating cannot shift the offsets of pages still to be read. Raises :class:`SterlingAuthError`
        and :class:`SterlingUnavailable` at once; mailboxes that are missing or not permitted are skipped
        and reported together as :class:`MailboxUnavailable` once the others are done.
        """
        failures: dict[str, SterlingError] = {}
        for path in self.config.mailboxes:
            try:
                mailbox_id = self._mailbox_id(path)
                seen: set[str] = set()
                for _ in range(self.config.max_list_passes):
                    fresh = [m for m in self._list_mailbox(path, mailbox_id) if m.remote_id not in seen]
                    if not fresh:
                        break
                    self._log.info("sterling.mailbox.listed", mailbox=path, new=len(fresh))
                    for msg in fresh:
                        seen.add(msg.remote_id)
                        yield msg
            except (SterlingPermissionError, MailboxNotFound) as err:
                self._log.error("sterling.mailbox.unavailable", mailbox=path, error=str(err))
                failures[path] = err
        if failures:
            raise MailboxUnavailable(failures)

    def fetch(self, msg: RemoteMessage) -> bytes:
        """Return the message's raw payload bytes (base64-decoded, never text-decoded).

        Re-reads the message first so one taken by another consumer since the listing is reported as
        :class:`MessageGone`. The read does not spend an extraction. Raises :class:`PayloadTooLarge`,
        :class:`PayloadSizeMismatch`, or another :class:`SterlingError`.
        """
        current = self._get_json("GET", f"/mailboxmessages/{quote(msg.remote_id, safe='')}", gone=msg)
        if not isinstance(current, dict):
            raise self._protocol("GET", "/mailboxmessages/{id}", "expected a JSON object")
        if not _extractable(current, datetime.now(timezone.utc)):
            raise MessageGone(msg, "no longer extractable (consumed by another reader)")
        moved_to = current.get("mailboxPath")
        if isinstance(moved_to, str) and moved_to != msg.mailbox:
            raise MessageGone(msg, f"moved to {moved_to}")
        document_id = current.get("documentId") or msg.document_id
        if not document_id:
            raise self._protocol("GET", "/mailboxmessages/{id}", f"message {msg.remote_id} has no documentId")
        size = current.get("size", msg.size)
        size = int(size) if isinstance(size, (int, str)) and str(size).isdigit() else None
        if size is not None and size > self.config.max_payload_bytes:
            raise PayloadTooLarge(f"Sterling message {msg.remote_id} ({msg.name!r}) is {size} bytes, over the "
                                  f"{self.config.max_payload_bytes}-byte limit; not fetched")
        # documentIds contain ':' (host:node:hexmillis:seq); always percent-encode the path segment.
        path = f"/documents/{quote(str(document_id), safe='')}"
        document = self._get_json("GET", path, gone=msg)
        encoded = document.get("payload") if isinstance(document, dict) else None
        if not isinstance(encoded, str):
            raise self._protocol("GET", "/documents/{id}", f"document {document_id} has no payload")
        try:
            data = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise self._protocol("GET", "/documents/{id}", f"document {document_id} payload is not base64") from None
        if size is not None and len(data) != size:
            raise PayloadSizeMismatch(
                f"Sterling message {msg.remote_id} ({msg.name!r}): payload is {len(data)} bytes, message says "
                f"{size}; left unacknowledged for a later poll", method="GET", path=path)
        self._log.info("sterling.message.fetched", mailbox=msg.mailbox, message_id=msg.remote_id,
                       name=msg.name, size=len(data))
        return data

    def acknowledge(self, msg: RemoteMessage) -> None:
        """Tell Sterling the message was taken. Call only after its bytes are durably stored.

        Idempotent: retried on transient faults, and a 404 (someone, possibly an earlier attempt of ours
        whose response was lost, already removed it) counts as done.
        """
        ident = quote(msg.remote_id, safe="")
        mode = self.config.ack_mode
        if mode == "consume":
            method, path, body = "PUT", f"/mailboxmessages/{ident}", {"extractableAlways": 0, "extractableCount": 0}
        elif mode == "move":
            # Unlike actions/extract, a repeated move to the same archive is harmless, so retrying it is safe.
            method, path, body = "POST", f"/mailboxmessages/{ident}/actions/move", {"mailboxPath": self._archive(msg)}
        else:
            method, path, body = "DELETE", f"/mailboxmessages/{ident}", None
        response = self._request(method, path, json=body)
        if response.status_code == 404 and self._is_api_error(response):
            self._log.info("sterling.message.ack_already_done", mailbox=msg.mailbox, message_id=msg.remote_id)
            return
        self._raise_for_status(response, method, path)
        rows = self._json_or_none(response)
        if isinstance(rows, dict) and rows.get("rowsAffected") == 0:
            # Nothing updated: the message is no longer there, which is the state an ack wants.
            self._log.warning("sterling.message.ack_no_rows", mailbox=msg.mailbox, message_id=msg.remote_id)
            return
        self._log.info("sterling.message.acknowledged", mailbox=msg.mailbox, message_id=msg.remote_id, mode=mode)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> SterlingClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"SterlingClient({self.config.base_url!r}, user={self.config.principal!r}, " \
               f"mailboxes={self.config.mailboxes!r})"

    def find_mailbox(self, path: str) -> str:
        """The id of the mailbox at ``path``; MailboxNotFound when the user cannot see it."""
        return self._mailbox_id(path)

    def waiting(self, path: str) -> int:
        """How many extractable messages the mailbox at ``path`` holds: one listing, nothing fetched."""
        return len(self._list_mailbox(path, self._mailbox_id(path)))

    # ------------------------------------------------------------------ listing
    def _mailbox_id(self, path: str) -> str:
        # ?path= is a LIKE match ('_' and '%' are wildcards), so several rows can come back: match exactly.
        for row in self._pages("/mailboxes/", {"path": path}):
            if row.get("path") == path:
                ident = row.get("_id", row.get("id"))
                if ident is not None:
                    return str(ident)
        raise MailboxNotFound(f"mailbox {path} does not exist or is not visible to "
                               f"{self.config.principal!r}", path=path)

    def _list_mailbox(self, path: str, mailbox_id: str) -> list[RemoteMessage]:
        now = datetime.now(timezone.utc)
        found: dict[str, RemoteMessage] = {}
        for row in self._pages("/mailboxcontents/", {"parentMailboxId": mailbox_id, "detail": "true"}):
            if row.get("type") == "mailbox" or row.get("id") is None:
                continue  # sub-mailboxes share the listing with messages
            if not _extractable(row, now):
                continue
            ident = str(row["id"])
            size = row.get("size")
            found.setdefault(ident, RemoteMessage(
                mailbox=path, remote_id=ident, name=str(row.get("name") or ""),
                size=int(size) if isinstance(size, (int, str)) and str(size).isdigit() else None,
                created=parse_sterling_timestamp(row.get("creationDate")),
                document_id=str(row["documentId"]) if row.get("documentId") else None, mailbox_id=mailbox_id))
        # Server order depends on the database; ids are allocation-ordered, the closest thing to arrival order.
        return sorted(found.values(), key=lambda m: (len(m.remote_id), m.remote_id))

    def _pages(self, path: str, params: dict[str, str]) -> Iterator[dict[str, Any]]:
        size, start = self.config.page_size, 0
        while True:
            page = self._get_json("GET", path, params={**params, "_range": f"{start}-{start + size - 1}"})
            if not isinstance(page, list):
                raise self._protocol("GET", path, "expected a JSON array")
            yield from (row for row in page if isinstance(row, dict))
            if len(page) < size:
                return
            start += size

    def _archive(self, msg: RemoteMessage) -> str:
        parent = msg.mailbox.rsplit("/", 1)[0]
        return self.config.archive_mailbox.format(parent=parent, mailbox=msg.mailbox)

    # ------------------------------------------------------------------ HTTP
    def _get_json(self, method: str, path: str, *, params: dict[str, str] | None = None,
                  gone: RemoteMessage | None = None) -> Any:
        response = self._request(method, path, params=params)
        if gone is not None and response.status_code == 404 and self._is_api_error(response):
            self._log.info("sterling.message.gone", mailbox=gone.mailbox, message_id=gone.remote_id, path=path)
            raise MessageGone(gone, "not found (deleted or purged since listing)")
        self._raise_for_status(response, method, path)
        body = self._json_or_none(response)
        if body is None:
            raise self._protocol(method, path, f"non-JSON body: {self._snippet(response)}")
        return body

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return self._retrying(self._attempt, method, path, **kwargs)
        except _Transient as exc:
            raise SterlingUnavailable(
                f"Sterling {method} {path} failed after {self.config.retry_attempts} attempts: {exc}",
                method=method, path=path, detail=str(exc)) from None

    def _attempt(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._client.request(method, path, **kwargs)
        except httpx.TimeoutException as exc:
            raise _Transient(f"timeout after {self.config.timeout}s ({type(exc).__name__})") from None
        except httpx.TransportError as exc:
            raise _Transient(f"{type(exc).__name__}: {self._redact(str(exc))}") from None
        if response.status_code in _RETRY_STATUSES:
            raise _Transient(f"HTTP {response.status_code} {self._snippet(response, 120)}".rstrip(),
                             retry_after=self._retry_after(response))
        return response

    def _wait(self, state: RetryCallState) -> float:
        cfg = self.config
        backoff = self._backoff(state)
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, _Transient) and exc.retry_after is not None:
            return min(max(exc.retry_after, backoff), cfg.retry_wait_max)
        return backoff

    def _log_retry(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        method, path = state.args[:2]
        self._log.warning("sterling.request.retry", method=method, path=path, attempt=state.attempt_number,
                          reason=str(exc), wait=round(state.upcoming_sleep, 3))

    @staticmethod
    def _retry_after(response: httpx.Response) -> float | None:
        value = response.headers.get("Retry-After", "")
        return float(value) if value.strip().isdigit() else None

    def _raise_for_status(self, response: httpx.Response, method: str, path: str) -> None:
        status = response.status_code
        if 200 <= status < 300:
            return
        detail = self._error_text(response)
        where = f"Sterling {method} {path}"
        if status == 401:
            raise SterlingAuthError(f"{where}: HTTP 401, credentials for {self.config.principal!r} rejected "
                                    "(wrong, rotated or locked password or client secret?)", status=401,
                                    method=method, path=path)
        if status == 403:
            raise SterlingPermissionError(f"{where}: HTTP 403, {self.config.principal!r} lacks APIUser or the "
                                          f"mailbox permission: {detail}", status=403, method=method, path=path)
        if status == 404 and not self._is_api_error(response):
            raise SterlingUnavailable(f"{where}: HTTP 404 from the server, not from the API ({detail}); is the "
                                      "B2B REST API (b2bAPI.jar) deployed at this address?", status=404,
                                      method=method, path=path, detail=detail)
        raise SterlingError(f"{where}: HTTP {status}: {detail}", status=status, method=method, path=path,
                            detail=detail)

    @staticmethod
    def _json_or_none(response: httpx.Response) -> Any:
        # Liberty answers some errors (and a mis-deployed API answers everything) with text/HTML.
        text = response.content.lstrip()[:1]
        if "json" not in response.headers.get("content-type", "") or text not in (b"{", b"["):
            return None
        try:
            return response.json()
        except ValueError:
            return None

    def _is_api_error(self, response: httpx.Response) -> bool:
        body = self._json_or_none(response)
        return isinstance(body, dict) and "errorCode" in body

    def _error_text(self, response: httpx.Response) -> str:
        body = self._json_or_none(response)
        if isinstance(body, dict) and ("errorDescription" in body or "errorCode" in body):
            return self._redact(str(body.get("errorDescription") or body.get("errorCode")))
        return self._snippet(response) or "(empty body)"

    def _snippet(self, response: httpx.Response, limit: int = _BODY_SNIPPET) -> str:
        return self._redact(response.content[:limit].decode("utf-8", "replace").strip())

    def _redact(self, text: str) -> str:
        # Belt and braces: a proxy or server echoing the request must not leak the password into logs.
        if self._secret:
            text = text.replace(self._secret, "***")
        who = self.config.username if self.config.auth == "basic" else self.config.oauth_client_id
        token = base64.b64encode(f"{who}:{self._secret}".encode()).decode()
        return text.replace(token, "***")

    def _protocol(self, method: str, path: str, what: str) -> SterlingProtocolError:
        return SterlingProtocolError(f"Sterling {method} {path}: unexpected response, {what}",
                                     method=method, path=path)
