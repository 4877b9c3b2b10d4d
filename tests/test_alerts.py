"""Alerts: read from the store, de-duplicated, rate-limited, sent to a real webhook receiver and SMTP server."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError
from sqlmodel import select

from gateway.alerts import recent_alerts, send_test
from gateway.alerts.channels import ChannelError, Message, send_email, send_webhook, webhook_payload
from gateway.alerts.rules import ack_verdict
from gateway.alerts.scanner import Scanner
from gateway.alerts.settings import AlertKind, AlertSettings, EmailChannel, WebhookChannel, WebhookFormat
from gateway.store import transaction
from gateway.store.models import AlertRecord, Document, Event, Interchange, SourceStatus
from tests.alert_receivers import TOKEN_PATH, WebhookReceiver, self_signed, smtp_server

T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


class Clock:
    def __init__(self, now: datetime = T0) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kw) -> None:
        self.now += timedelta(**kw)


def settings_for(url: str, **kw) -> AlertSettings:
    opts = dict(webhooks=[{"name": "ops", "url": url, "format": "json"}], panel_url="https://edi.example.com",
                attention_after_minutes=30, outage_after_minutes=10)
    opts.update(kw)
    return AlertSettings(**opts)


def interchange(engine, *, at: datetime = T0, state: str = "split", ack: str | None = None, partner="acme",
                fail_event: bool = False) -> int:
    with transaction(engine) as s:
        ich = Interchange(sha256="0" * 64, size=10, source="local:drop", remote_name="in.x12", received_at=at,
                          partner=partner, sender_id="ACME", control_number="000000123", state=state, ack=ack,
                          ack_kind="997" if ack else None, error="ISA13 is not numeric" if state == "failed" else None)
        s.add(ich)
        s.flush()
        s.add(Event(interchange_id=ich.id, stage="translate", outcome="fail" if fail_event else "ok", at=at))
        return ich.id


def document(engine, ich: int, *, state: str, at: datetime, position: int = 1, number: str = "INV-1",
             partner: str = "acme", stage: str | None = None, error: str | None = None, code: str | None = None,
             outcome: str | None = None) -> int:
    with transaction(engine) as s:
        doc = Document(interchange_id=ich, position=position, partner=partner, kind="invoice", standard="x12",
                       message_type="810", invoice_number=number, state=state, stage=stage, error=error,
                       error_code=code, created_at=at, updated_at=at)
        s.add(doc)
        s.flush()
        if outcome:
            s.add(Event(document_id=doc.id, interchange_id=ich, stage=stage or "post", outcome=outcome, at=at,
                        detail=json.dumps({"error": error, "code": code})))
        return doc.id


def stage_event(engine, stage: str, outcome: str, at: datetime, code: str | None = None, error: str = "x") -> None:
    with transaction(engine) as s:
        s.add(Event(stage=stage, outcome=outcome, at=at, detail=json.dumps({"error": error, "code": code})))


def changed(model, **values):
    """A copy of a settings model with ``values`` changed, validated again."""
    return type(model).model_validate({**model.model_dump(), **values})


def scanner(engine, cfg: AlertSettings, clock: Clock, sources=(), owner="test-a") -> Scanner:
    return Scanner(engine, cfg, list(sources), owner=owner, clock=clock)


# ------------------------------------------------------------------------------------------ settings


def test_settings_need_a_channel_and_valid_urls():
    with pytest.raises(ValidationError, match="no channel"):
        AlertSettings()
    AlertSettings(enabled=False)  # switched off: no channel needed
    with pytest.raises(ValidationError, match="http"):
        WebhookChannel(name="x", url="ftp://example.com/hook")
    with pytest.raises(ValidationError, match="username and password go together"):
        EmailChannel(host="smtp.example.com", sender="a@example.com", recipients=["b@example.com"], username="u")
    with pytest.raises(ValidationError, match="unique"):
        AlertSettings(webhooks=[{"name": "a", "url": "https://x/1"}, {"name": "a", "url": "https://x/2"}])


def test_settings_file_alerts_section_with_secrets(tmp_path):
    from gateway.settings import load_settings

    path = tmp_path / "gateway.toml"
    path.write_text(f"""
data_dir = "{tmp_path}"
[alerts]
attention_after_minutes = 45
[[alerts.webhooks]]
name = "slack"
url = "secret:slack-url"
[alerts.email]
host = "smtp.example.com"
username = "gw"
password = "secret:smtp-password"
sender = "gw@example.com"
recipients = ["ops@example.com"]
""")
    s = load_settings(path)
    assert s.secret_references() == {"slack-url", "smtp-password"}
    assert "secret:slack-url" not in repr(s)  # a SecretStr: never shown
    resolved = s.resolve_secrets({"slack-url": "https://hooks.slack.com" + TOKEN_PATH, "smtp-password": "pw"}.get)
    assert resolved.alerts.webhooks[0].url.get_secret_value().endswith(TOKEN_PATH)
    assert resolved.alerts.email.effective_port == 587 and resolved.alerts.attention_after_minutes == 45


# ------------------------------------------------------------------------------------------ channels


def test_webhook_formats_reach_the_receiver():
    msg = Message(AlertKind.DOCUMENT_FAILED, "Invoice INV-1 from acme failed at post", ("Plex said <no>",),
                  "https://edi.example.com/documents/7", "document 7", "error", T0)
    with WebhookReceiver() as hook:
        for fmt in WebhookFormat:
            send_webhook(WebhookChannel(name=fmt.value, url=hook.url, format=fmt), msg)
        slack, teams, plain = hook.wait_for(3)
    assert slack["text"].startswith("*Invoice INV-1 from acme failed at post*")
    assert "Plex said &lt;no&gt;" in slack["text"] and "<https://edi.example.com/documents/7|" in slack["text"]
    card = teams["attachments"][0]
    assert card["contentType"] == "application/vnd.microsoft.card.adaptive"
    assert card["content"]["body"][0]["text"] == msg.title
    assert card["content"]["actions"][0]["url"] == msg.link
    assert plain["kind"] == "document_failed" and plain["lines"] == ["Plex said <no>"] and plain["link"] == msg.link
    assert webhook_payload(WebhookFormat.SLACK, msg) == slack


def test_webhook_refusal_is_reported_without_the_token():
    with WebhookReceiver() as hook:
        hook.status = 403
        with pytest.raises(ChannelError) as exc:
            send_webhook(WebhookChannel(name="ops", url=hook.url), Message(AlertKind.TEST, "t"))
        url = hook.url
    assert "webhook ops: HTTP 403" in str(exc.value)
    with pytest.raises(ChannelError) as gone:  # the receiver is stopped: nothing listens there any more
        send_webhook(WebhookChannel(name="ops", url=url, timeout_seconds=2), Message(AlertKind.TEST, "t"))
    for text in (str(exc.value), str(gone.value)):
        assert "SeCrEtToKeN42" not in text
    assert "cannot be reached" in str(gone.value)


def test_email_with_login_through_a_real_smtp_server():
    with smtp_server(login=("gateway", "s3cret-pw")) as (port, box):
        channel = EmailChannel(host="127.0.0.1", port=port, security="none", username="gateway", password="s3cret-pw",
                               sender="EDI gateway <gateway@example.com>", recipients=["ops@example.com", "b@example.com"])
        send_email(channel, Message(AlertKind.OUTAGE, "Source sterling:b2bi has failed for 20 minutes",
                                    ("last error: HTTP 401",), "https://edi.example.com/sources", at=T0))
        (mail,) = box.wait_for(1)
        assert box.logins == ["gateway"]
        assert mail["Subject"] == "[EDI gateway] Source sterling:b2bi has failed for 20 minutes"
        assert mail["To"] == "ops@example.com, b@example.com" and mail["X-EDI-Gateway-Alert"] == "outage"
        body = mail.get_payload(decode=True).decode()
        assert "last error: HTTP 401" in body and "https://edi.example.com/sources" in body
        wrong = changed(channel, password="nope")
        with pytest.raises(ChannelError) as exc:
            send_email(wrong, Message(AlertKind.TEST, "t"))
    assert "refused the login of gateway" in str(exc.value) and "nope" not in str(exc.value)


def test_email_starttls_verified_against_the_configured_ca(tmp_path):
    cert, key = self_signed(tmp_path)
    with smtp_server(login=("gateway", "pw"), tls_files=(cert, key)) as (port, box):
        channel = EmailChannel(host="127.0.0.1", port=port, security="starttls", ca_file=cert, username="gateway",
                               password="pw", sender="gateway@example.com", recipients=["ops@example.com"])
        send_email(channel, Message(AlertKind.TEST, "over TLS"))
        assert box.wait_for(1)[0]["Subject"].endswith("over TLS")
        with pytest.raises(ChannelError, match="TLS failed"):  # the system's CAs do not know this certificate
            send_email(changed(channel, ca_file=None), Message(AlertKind.TEST, "t"))
        with pytest.raises(ChannelError, match="offers no login on this connection"):  # plain text where the server demands TLS
            send_email(changed(channel, security="none"), Message(AlertKind.TEST, "t"))


def test_send_test_reports_each_channel_and_is_kept(engine):
    with WebhookReceiver() as good, WebhookReceiver() as bad, smtp_server() as (port, box):
        bad.status = 500
        cfg = AlertSettings(webhooks=[{"name": "good", "url": good.url, "format": "slack"},
                                      {"name": "bad", "url": bad.url}],
                            email={"host": "127.0.0.1", "port": port, "security": "none", "sender": "gw@example.com",
                                   "recipients": ["ops@example.com"]})
        results = send_test(cfg, actor="alice", engine=engine)
        assert good.wait_for(1)[0]["text"].startswith("*Test alert from the EDI gateway*")
        assert box.wait_for(1)[0]["Subject"] == "[EDI gateway] Test alert from the EDI gateway"
    assert {r.channel: r.ok for r in results} == {"good": True, "bad": False, "email": True}
    assert "HTTP 500" in next(r.detail for r in results if r.channel == "bad")
    (row,) = recent_alerts(engine)
    assert row.kind == "test" and row.subject == "alice" and row.status == "sent"
    assert json.loads(row.channels)["bad"].startswith("error: webhook bad: HTTP 500")


# ------------------------------------------------------------------------------------------ verdicts


ISA = "ISA*00*          *00*          *ZZ*GW             *ZZ*ACME           *261201*1200*U*00401*000000001*0*P*>~"


def test_ack_verdicts():
    accepted = ISA + "GS*FA*GW*ACME*20261201*1200*1*X*004010~ST*997*0001~AK1*IN*5~AK2*810*0001~AK5*A~AK9*A*1*1*1~SE*6*0001~GE*1*1~IEA*1*000000001~"
    assert ack_verdict(accepted).status == "accepted" and not ack_verdict(accepted).rejecting
    partly = accepted.replace("AK9*A*1*1*1", "AK9*P*2*2*1").replace("AK5*A", "AK5*A~AK2*810*0002~AK5*R*5")
    v = ack_verdict(partly)
    assert v.status == "partially_accepted" and v.rejecting and v.rejected == ("810 0002",)
    ta1 = ISA + "TA1*000000123*261201*1200*R*022~IEA*0*000000001~"
    assert ack_verdict(ta1).rejected == ("interchange 000000123",)
    contrl = "UNA:+.? 'UNB+UNOC:3+GW+ACME+261201:1200+1'UNH+1+CONTRL:D:3:UN'UCI+77+ACME+GW+7'UCM+9+ORDERS:D:96A:UN+4+16'UNT+4+1'UNZ+1+1'"
    assert ack_verdict(contrl).status == "partially_accepted" and ack_verdict(contrl).rejected == ("ORDERS 9",)
    assert ack_verdict(contrl.replace("UCI+77+ACME+GW+7", "UCI+77+ACME+GW+4")).status == "rejected"
    assert ack_verdict(contrl.replace("+4+16'", "+7'")).status == "accepted"


# ------------------------------------------------------------------------------------------ the scanner


def test_scan_alerts_each_failure_once(engine):
    clock = Clock()
    ich = interchange(engine, at=T0)
    doc = document(engine, ich, state="failed", at=T0 + timedelta(seconds=5), stage="post", outcome="fail",
                   error="Plex refused permission (HTTP 403)", code="plex.permission")
    document(engine, ich, state="done", at=T0, position=2, number="INV-2")
    with WebhookReceiver() as hook:
        sc = scanner(engine, settings_for(hook.url), clock)
        clock.advance(seconds=30)
        report = sc.scan()
        (body,) = hook.wait_for(1)
        assert report.sent == 1 and report.noticed == 1
        assert body["title"] == "Invoice INV-1 from acme failed at post"
        assert body["lines"][0] == "Plex refused permission (HTTP 403)" and "code plex.permission" in body["lines"]
        assert body["link"] == f"https://edi.example.com/documents/{doc}"
        clock.advance(seconds=60)
        assert sc.scan().sent == 0  # the same failure again: already told
        # Reprocessed and failed again: a new failing event, a new alert.
        with transaction(engine) as s:
            row = s.get(Document, doc)
            row.updated_at = clock.now
            s.add(Event(document_id=doc, interchange_id=ich, stage="post", outcome="fail", at=clock.now))
        clock.advance(seconds=60)
        assert sc.scan().sent == 1
        assert len(hook.wait_for(2)) == 2
    assert len(hook.bodies()) == 2


def test_scan_groups_a_burst_and_keeps_to_the_hourly_limit(engine):
    clock = Clock()
    ich = interchange(engine)
    for n in range(8):
        document(engine, ich, state="failed", at=T0 + timedelta(seconds=1), position=n + 1, number=f"INV-{n}",
                 partner="acme" if n < 5 else "globex", stage="post", outcome="fail", error="boom", code="plex.error")
    with WebhookReceiver() as hook:
        cfg = settings_for(hook.url, group_after=5, max_per_hour=3)
        sc = scanner(engine, cfg, clock)
        clock.advance(seconds=10)
        assert sc.scan().sent == 1
        (grouped,) = hook.wait_for(1)
        assert grouped["title"] == "8 documents or files failed"
        assert grouped["lines"][0] == "by partner: acme 5, globex 3" and grouped["link"].endswith("?state=failed")
        # Five separate failures in later looks: two fit in the hour, then a summary takes the last place.
        for n in range(5):
            clock.advance(seconds=60)
            document(engine, ich, state="failed", at=clock.now, position=20 + n, number=f"LATE-{n}",
                     stage="post", outcome="fail", error="boom", code="plex.error")
            sc.scan()
        bodies = hook.wait_for(3)
        assert [b["title"] for b in bodies[1:3]] == ["Invoice LATE-0 from acme failed at post",
                                                    "Invoice LATE-1 from acme failed at post"]
        with transaction(engine) as s:
            held = s.exec(select(AlertRecord).where(AlertRecord.status == "held")).all()
        assert sorted(r.title for r in held) == [f"Invoice LATE-{n} from acme failed at post" for n in (2, 3, 4)]
        clock.advance(hours=1)
        sc.scan()
        digest = hook.wait_for(4)[3]
        assert digest["kind"] == "digest" and digest["title"] == "3 more alerts (summed up: too many this hour)"
        assert "Invoice LATE-4 from acme failed at post" in digest["lines"]
    assert len(hook.bodies()) == 4


def test_waiting_choice_alerted_after_the_threshold(engine):
    clock = Clock()
    ich = interchange(engine)
    doc = document(engine, ich, state="needs_attention", at=T0, stage="match", outcome="attention",
                   error="no Plex supplier matches GLOBEX INDUSTRIES")
    with WebhookReceiver() as hook:
        sc = scanner(engine, settings_for(hook.url), clock)
        clock.advance(minutes=29)
        assert sc.scan().sent == 0
        clock.advance(minutes=2)
        assert sc.scan().sent == 1
        (body,) = hook.wait_for(1)
        assert body["title"] == "Invoice INV-1 from acme has waited 31 minutes for a supplier choice"
        assert body["kind"] == "attention_waiting" and body["link"].endswith(f"/documents/{doc}")
        clock.advance(minutes=5)
        assert sc.scan().sent == 0


def test_source_outage_escalates_then_recovers(engine):
    clock = Clock()
    source = "sterling:b2bi"
    with transaction(engine) as s:
        s.add(SourceStatus(source=source, last_poll_at=T0, last_success_at=T0))

    def poll(ok: bool) -> None:
        with transaction(engine) as s:
            row = s.get(SourceStatus, source)
            row.last_poll_at = clock.now
            if ok:
                row.last_success_at = clock.now
            else:
                row.last_error_at, row.last_error = clock.now, "Sterling refused the credentials (HTTP 401)"

    with WebhookReceiver() as hook:
        sc = scanner(engine, settings_for(hook.url), clock, sources=[source, "local:unpolled"])
        for _ in range(9):  # failing for 9 minutes: under the threshold
            clock.advance(minutes=1)
            poll(False)
            assert sc.scan().sent == 0
        clock.advance(minutes=1)
        poll(False)
        assert sc.scan().sent == 1
        (body,) = hook.wait_for(1)
        assert body["title"] == "Source sterling:b2bi has failed for 10 minutes"
        assert body["lines"][0] == "last error: Sterling refused the credentials (HTTP 401)"
        assert body["severity"] == "error" and body["link"].endswith("/sources")
        clock.advance(minutes=1)
        poll(False)
        assert sc.scan().sent == 0  # one alert per outage
        clock.advance(minutes=1)
        poll(True)
        assert sc.scan().sent == 1
        back = hook.wait_for(2)[1]
        assert back["title"] == "Source sterling:b2bi works again" and back["severity"] == "ok"
        assert back["lines"] == ["it failed for 12 minutes"]
        # A short blip afterwards is never alerted.
        clock.advance(minutes=1)
        poll(False)
        sc.scan()
        clock.advance(minutes=1)
        poll(True)
        sc.scan()
    assert len(hook.bodies()) == 2


def test_destination_outage_from_audit_events(engine):
    clock = Clock()
    with WebhookReceiver() as hook:
        sc = scanner(engine, settings_for(hook.url, outage_after_minutes=5), clock)
        stage_event(engine, "post", "ok", clock.now)
        # A rejected document is the document's fault, not an outage of Plex.
        stage_event(engine, "post", "fail", clock.now + timedelta(seconds=1), code="plex.rejected")
        clock.advance(minutes=1)
        sc.scan()
        for _ in range(6):  # Plex answers 503 for six minutes
            stage_event(engine, "post", "retry", clock.now, code="plex.transient", error="Plex did not answer: 503")
            clock.advance(minutes=1)
            sc.scan()
        (body,) = hook.wait_for(1)
        assert body["title"].startswith("Destination plex has failed for ")
        assert body["lines"][0] == "last error: Plex did not answer: 503"
        # Anaplan had one retry and then silence: not an outage.
        stage_event(engine, "forward", "retry", clock.now, code="anaplan.retry")
        for _ in range(7):
            clock.advance(minutes=1)
            sc.scan()
        stage_event(engine, "plex", "ok", clock.now)  # the seam's name for the stage
        clock.advance(seconds=30)
        sc.scan()
        assert [b["title"] for b in hook.wait_for(2)] == [body["title"], "Destination plex works again"]
    assert len(hook.bodies()) == 2


def test_rejecting_acknowledgment_and_failed_file(engine):
    clock = Clock()
    rejecting = ISA + "GS*FA*GW*ACME*20261201*1200*1*X*004010~ST*997*0001~AK1*IN*5~AK2*810*0007~AK5*R*5~AK9*R*1*1*0~SE*6*0001~GE*1*1~IEA*1*000000001~"
    with WebhookReceiver() as hook:
        sc = scanner(engine, settings_for(hook.url), clock)
        ich = interchange(engine, at=clock.now + timedelta(seconds=1), ack=rejecting)
        interchange(engine, at=clock.now + timedelta(seconds=2), ack=rejecting.replace("AK5*R*5", "AK5*A").replace("AK9*R*1*1*0", "AK9*A*1*1*1"))
        broken = interchange(engine, at=clock.now + timedelta(seconds=3), state="failed", fail_event=True)
        clock.advance(minutes=1)
        assert sc.scan().sent == 2
        bodies = {b["kind"]: b for b in hook.wait_for(2)}
        ack = bodies["ack_rejected"]
        assert ack["title"] == "The 997 to acme rejects interchange 000000123"
        assert ack["lines"][0] == "rejected: 810 0007" and f"interchange {ich}" in ack["lines"][1]
        assert bodies["document_failed"]["title"] == "File in.x12 from acme could not be read"
        assert bodies["document_failed"]["lines"][0] == "ISA13 is not numeric"
        assert bodies["document_failed"]["subject"] == f"interchange {broken}"
        clock.advance(minutes=1)
        assert sc.scan().sent == 0


def test_one_process_scans_at_a_time_and_a_failed_send_is_retried(engine):
    clock = Clock()
    ich = interchange(engine)
    document(engine, ich, state="failed", at=T0, stage="post", outcome="fail", error="boom", code="plex.error")
    with WebhookReceiver() as hook:
        cfg = settings_for(hook.url)
        first, second = scanner(engine, cfg, clock, owner="a"), scanner(engine, cfg, clock, owner="b")
        hook.status = 502
        clock.advance(seconds=10)
        report = first.scan()
        assert report.failed == 1 and "webhook ops: HTTP 502" in report.errors[0]
        blocked = second.scan()
        assert not blocked.scanned and blocked.held_by == "a"
        hook.status = 200
        clock.advance(seconds=60)
        assert first.scan().sent == 1
        assert len(hook.wait_for(2)) == 2  # the refused try and the one that got through
        with transaction(engine) as s:
            (row,) = s.exec(select(AlertRecord).where(AlertRecord.kind == "document_failed")).all()
        assert row.status == "sent" and row.attempts == 2 and json.loads(row.channels) == {"ops": "sent"}
