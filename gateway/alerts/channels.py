"""Where alerts go: webhooks (Slack, Teams Workflows, plain JSON) and e-mail (SMTP).

Each sender raises :class:`ChannelError` with a one-line reason a person can act on; the reason
never carries the channel's credentials (a webhook URL's path is its token, an SMTP password).
"""

from __future__ import annotations

import smtplib
import socket
import ssl
from dataclasses import dataclass, field
from datetime import datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid

import httpx

from gateway.alerts.settings import AlertKind, EmailChannel, EmailSecurity, WebhookChannel, WebhookFormat

_COLOUR = {"error": "#c0392b", "warning": "#d68910", "info": "#2e86c1", "ok": "#1e8449"}
_TEAMS_COLOUR = {"error": "Attention", "warning": "Warning", "info": "Accent", "ok": "Good"}


class ChannelError(Exception):
    """A channel did not take the alert; the message says why, without credentials."""


@dataclass(frozen=True)
class Message:
    """An alert as every channel renders it."""

    kind: AlertKind
    title: str
    lines: tuple[str, ...] = ()
    link: str | None = None  # absolute URL into the panel, when the panel's address is configured
    subject: str = ""
    severity: str = "error"  # error | warning | info | ok
    at: datetime | None = None
    extra: dict = field(default_factory=dict)

    def text(self) -> str:
        """Plain text: the title, each line, and the link."""
        parts = [self.title, *self.lines]
        if self.link:
            parts.append(f"Open in the panel: {self.link}")
        return "\n".join(parts)


def applies(channel: WebhookChannel | EmailChannel, kind: AlertKind) -> bool:
    """Whether ``channel`` takes alerts of ``kind`` (tests and digests go to every channel)."""
    return channel.kinds is None or kind in (AlertKind.TEST, AlertKind.DIGEST) or kind in channel.kinds


# ------------------------------------------------------------------------------------ webhooks


def _slack_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def webhook_payload(fmt: WebhookFormat, msg: Message) -> dict:
    """The JSON body for a webhook of format ``fmt``."""
    if fmt is WebhookFormat.SLACK:
        text = "*" + _slack_escape(msg.title) + "*"
        if msg.lines:
            text += "\n" + "\n".join(_slack_escape(line) for line in msg.lines)
        if msg.link:
            text += f"\n<{msg.link}|Open in the panel>"
        return {"text": text}
    if fmt is WebhookFormat.TEAMS:
        body = [{"type": "TextBlock", "text": msg.title, "weight": "Bolder", "size": "Medium", "wrap": True,
                 "color": _TEAMS_COLOUR.get(msg.severity, "Default")}]
        body += [{"type": "TextBlock", "text": line, "wrap": True, "spacing": "Small"} for line in msg.lines]
        card: dict = {"$schema": "http://adaptivecards.io/schemas/adaptive-card.json", "type": "AdaptiveCard",
                      "version": "1.4", "body": body}
        if msg.link:
            card["actions"] = [{"type": "Action.OpenUrl", "title": "Open in the panel", "url": msg.link}]
        return {"type": "message", "attachments": [
            {"contentType": "application/vnd.microsoft.card.adaptive", "contentUrl": None, "content": card}]}
    return {"kind": str(msg.kind), "severity": msg.severity, "title": msg.title, "lines": list(msg.lines),
            "text": msg.text(), "subject": msg.subject, "link": msg.link,
            "at": msg.at.isoformat() if msg.at else None, **msg.extra}


def _scrubbed(text: str, secret: str) -> str:
    """``text`` with the URL (and its path, the token) cut out."""
    if secret:
        text = text.replace(secret, "<webhook URL>")
        path = httpx.URL(secret).path
        if len(path) > 1:
            text = text.replace(path, "/***")
    return text


def send_webhook(channel: WebhookChannel, msg: Message, *, transport: httpx.BaseTransport | None = None) -> None:
    """POST the alert to the webhook; 2xx is success."""
    url = channel.url.get_secret_value()
    payload = webhook_payload(channel.format, msg)
    try:
        with httpx.Client(timeout=channel.timeout_seconds, follow_redirects=False, transport=transport) as client:
            response = client.post(url, json=payload, headers={"User-Agent": "edi-gateway-alerts"})
    except httpx.TimeoutException:
        raise ChannelError(f"webhook {channel.name}: no answer within {channel.timeout_seconds:g} s") from None
    except httpx.HTTPError as exc:
        raise ChannelError(f"webhook {channel.name}: cannot be reached: "
                           f"{_scrubbed(str(exc) or type(exc).__name__, url)}") from None
    if not response.is_success:
        said = _scrubbed(" ".join(response.text.split())[:200], url)
        raise ChannelError(f"webhook {channel.name}: HTTP {response.status_code}" + (f": {said}" if said else ""))


# ------------------------------------------------------------------------------------ e-mail


def email_message(channel: EmailChannel, msg: Message) -> EmailMessage:
    mail = EmailMessage()
    mail["Subject"] = f"{channel.subject_prefix} {msg.title}".strip()
    mail["From"] = channel.sender
    mail["To"] = ", ".join(channel.recipients)
    if msg.at:
        mail["Date"] = format_datetime(msg.at)
    mail["Message-ID"] = make_msgid(domain=channel.sender.rsplit("@", 1)[-1].strip(" >") or None)
    mail["X-EDI-Gateway-Alert"] = str(msg.kind)
    mail.set_content(msg.text() + "\n\n-- \nSent by the EDI gateway. Alert settings: [alerts] in the settings file.\n")
    return mail


def send_email(channel: EmailChannel, msg: Message) -> str:
    """Send the alert through the channel's SMTP server (STARTTLS or TLS verified against ``ca_file``)."""
    host, port = channel.host, channel.effective_port
    context = ssl.create_default_context(cafile=str(channel.ca_file) if channel.ca_file else None)
    where = f"e-mail {channel.name} ({host}:{port})"
    try:
        if channel.security is EmailSecurity.TLS:
            smtp: smtplib.SMTP = smtplib.SMTP_SSL(host, port, timeout=channel.timeout_seconds, context=context)
        else:
            smtp = smtplib.SMTP(host, port, timeout=channel.timeout_seconds)
        with smtp:
            smtp.ehlo()
            if channel.security is EmailSecurity.STARTTLS:
                smtp.starttls(context=context)
                smtp.ehlo()
            if channel.username is not None and channel.password is not None:
                smtp.login(channel.username, channel.password.get_secret_value())
            refused = smtp.send_message(email_message(channel, msg))
    except smtplib.SMTPAuthenticationError as exc:
        raise ChannelError(f"{where}: the server refused the login of {channel.username} "
                           f"({exc.smtp_code})") from None
    except smtplib.SMTPNotSupportedError as exc:
        if "AUTH" in str(exc):
            raise ChannelError(f"{where}: the server offers no login on this connection (most offer it only "
                               "over TLS: security = \"starttls\" or \"tls\")") from None
        raise ChannelError(f"{where}: the server does not offer STARTTLS (security = \"tls\" for a TLS port "
                           "such as 465)") from None
    except smtplib.SMTPRecipientsRefused as exc:
        raise ChannelError(f"{where}: every recipient was refused: {', '.join(exc.recipients)}") from None
    except smtplib.SMTPResponseException as exc:
        said = exc.smtp_error.decode("utf-8", "replace") if isinstance(exc.smtp_error, bytes) else str(exc.smtp_error)
        raise ChannelError(f"{where}: the server said {exc.smtp_code} {' '.join(said.split())[:200]}") from None
    except ssl.SSLError as exc:
        raise ChannelError(f"{where}: TLS failed: {exc.reason or exc}") from None
    except (socket.timeout, TimeoutError):
        raise ChannelError(f"{where}: no answer within {channel.timeout_seconds:g} s") from None
    except (smtplib.SMTPException, OSError) as exc:
        raise ChannelError(f"{where}: {exc.strerror if isinstance(exc, OSError) and exc.strerror else exc}") from None
    # Some recipients refused, the others have it: sending again would give them a second copy.
    return f"sent; refused {', '.join(sorted(refused))}" if refused else "sent"


def send(channel: WebhookChannel | EmailChannel, msg: Message) -> str:
    """Send ``msg`` through ``channel``: 'sent' (or what went half wrong); raises :class:`ChannelError`."""
    if isinstance(channel, WebhookChannel):
        send_webhook(channel, msg)
        return "sent"
    return send_email(channel, msg)
