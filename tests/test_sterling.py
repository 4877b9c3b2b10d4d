"""Sterling B2Bi mailbox source against the simulator, over real HTTP on 127.0.0.1."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from urllib.parse import unquote

import httpx
import pytest
from structlog.testing import capture_logs

from gateway.integrations.sterling.simulator.app import SterlingSim, run_sterling_sim
from gateway.integrations.sterling.client import (
    MailboxUnavailable,
    MessageGone,
    PayloadTooLarge,
    RemoteMessage,
    SterlingAuthError,
    SterlingClient,
    SterlingUnavailable,
    parse_sterling_timestamp,
)
from gateway.integrations.sterling.settings import SterlingConfig

USER, PASSWORD = "edi_gateway_api", "Pw-9f3!kq-not-in-logs"
INBOX = "/ACME_EDI/Inbox"
X12 = b"ISA*00*          *00*          *ZZ*ACME           *ZZ*GATEWAY        *240502*0914*U*00401*000000123*0*P*>~"


@pytest.fixture(scope="module")
def served() -> Iterator[SterlingSim]:
    with run_sterling_sim(users={USER: PASSWORD}, partners=["ACME_EDI", "ACMEXEDI"]) as sim:
        yield sim


@pytest.fixture
def sim(served: SterlingSim) -> SterlingSim:
    served.reset()
    served.ordering = "random"
    return served


def source(sim: SterlingSim, **overrides) -> SterlingClient:
    settings = dict(base_url=sim.base_url, username=USER, password=PASSWORD, mailboxes=[INBOX], page_size=3,
                    timeout=2.0, retry_attempts=3, retry_wait_initial=0.01, retry_wait_max=0.05)
    settings.update(overrides)
    return SterlingClient(SterlingConfig(**settings))


def api_calls(sim: SterlingSim, fragment: str) -> list[tuple[str, str, int]]:
    return [r for r in sim.requests if fragment in r[1]]


def drain(src: SterlingClient) -> list[tuple[RemoteMessage, bytes]]:
    """What the pipeline does: list, fetch, (store), acknowledge; skip vanished messages."""
    done = []
    for msg in src.list_pending():
        try:
            data = src.fetch(msg)
        except MessageGone:
            continue
        src.acknowledge(msg)
        done.append((msg, data))
    return done


# ----------------------------------------------------------------------------------------- listing


def test_lists_every_message_once_across_pages(sim: SterlingSim) -> None:
    ids = [sim.deposit(INBOX, f"ACME_850_{i:04d}.edi", X12 + str(i).encode()) for i in range(8)]
    sim.deposit("/ACMEXEDI/Inbox", "decoy.edi", b"x")  # '_' is a LIKE wildcard: must not be polled
    with source(sim) as src:
        listed = list(src.list_pending())
    assert [m.remote_id for m in listed] == [str(i) for i in ids]
    ranges = [p for m, p, s in sim.requests if "mailboxcontents" in p]
    assert len(ranges) >= 3  # 8 rows at page size 3 need three pages
    first = listed[0]
    assert (first.source, first.mailbox, first.name, first.size) == ("sterling", INBOX, "ACME_850_0000.edi",
                                                                     len(X12) + 1)
    assert first.created is not None and first.created.tzinfo is not None
    assert first.document_id and ":" in first.document_id


def test_sub_mailboxes_and_consumed_messages_are_not_listed(sim: SterlingSim) -> None:
    keep = sim.deposit("/ACME_EDI", "top.edi", X12)
    gone = sim.deposit("/ACME_EDI", "old.edi", X12, extractable_count=0)
    with source(sim, mailboxes=["/ACME_EDI"], page_size=2) as src:
        listed = [m.remote_id for m in src.list_pending()]
    assert listed == [str(keep)]
    assert sim.message_state(gone)["state"] == "pending"


def test_front_insert_between_pages_is_neither_lost_nor_doubled(sim: SterlingSim) -> None:
    sim.ordering = "insertion"
    for i in range(5):
        sim.deposit(INBOX, f"m{i}.edi", X12)
    sim.faults.update(insert_between_pages=1)
    with source(sim, page_size=2) as src:
        listed = [m.remote_id for m in src.list_pending()]
    assert len(listed) == len(set(listed)) == 6


def test_polls_every_configured_mailbox(sim: SterlingSim) -> None:
    a = sim.deposit(INBOX, "a.edi", X12)
    b = sim.deposit("/ACME_EDI/Outbox", "b.edi", X12)
    with source(sim, mailboxes=[INBOX, "/ACME_EDI/Outbox"]) as src:
        assert {(m.mailbox, m.remote_id) for m in src.list_pending()} == {(INBOX, str(a)),
                                                                         ("/ACME_EDI/Outbox", str(b))}


def test_revoked_mailbox_reported_after_the_others_are_polled(sim: SterlingSim) -> None:
    ok = sim.deposit("/ACME_EDI/Outbox", "b.edi", X12)
    sim.deposit(INBOX, "a.edi", X12)
    sim.faults.update(forbid_mailboxes=[INBOX])
    got = []
    with source(sim, mailboxes=[INBOX, "/ACME_EDI/Outbox"]) as src, pytest.raises(MailboxUnavailable) as err:
        for msg in src.list_pending():
            got.append(msg.remote_id)
    assert got == [str(ok)]
    assert list(err.value.failures) == [INBOX]


# ------------------------------------------------------------------------------------- fetch + ack


def test_fetch_reads_without_spending_the_extraction_then_ack_consumes(sim: SterlingSim) -> None:
    mid = sim.deposit(INBOX, "po.edi", X12)
    with source(sim) as src:
        (msg,) = src.list_pending()
        assert src.fetch(msg) == X12
        assert sim.message_state(mid)["extractable"] is True  # fetch alone must not consume it
        src.acknowledge(msg)
        state = sim.message_state(mid)
        assert (state["state"], state["extractable"], state["acks"], state["extracts"]) == ("consumed", False, 1, 0)
        assert list(src.list_pending()) == []


@pytest.mark.parametrize(("mode", "final_state", "final_mailbox"),
                         [("move", "moved", "/ACME_EDI/Processed"), ("delete", "deleted", INBOX)])
def test_ack_modes(sim: SterlingSim, mode: str, final_state: str, final_mailbox: str) -> None:
    mid = sim.deposit(INBOX, "po.edi", X12)
    with source(sim, ack_mode=mode) as src:
        assert [data for _, data in drain(src)] == [X12]
        assert list(src.list_pending()) == []
    state = sim.message_state(mid)
    assert (state["state"], state["mailboxPath"]) == (final_state, final_mailbox)


def test_ack_404_counts_as_done(sim: SterlingSim) -> None:
    sim.deposit(INBOX, "po.edi", X12)
    with source(sim, ack_mode="delete") as src:
        (msg,) = src.list_pending()
        src.fetch(msg)
        src.acknowledge(msg)
        src.acknowledge(msg)  # e.g. a restart retrying the ack: the message is already gone
    assert api_calls(sim, "/mailboxmessages/")[-1] == ("DELETE", f"/B2BAPIs/svc/mailboxmessages/{msg.remote_id}",
                                                       404)


def test_ack_lost_response_is_retried_and_lands(sim: SterlingSim) -> None:
    mid = sim.deposit(INBOX, "po.edi", X12)
    with source(sim, ack_mode="delete") as src:
        (msg,) = src.list_pending()
        sim.faults.update(ack_commit_then_fail=1)
        src.acknowledge(msg)
    assert [s for m, _, s in api_calls(sim, "/mailboxmessages/") if m == "DELETE"] == [500, 404]
    assert sim.message_state(mid)["state"] == "deleted"


def test_liberty_404_on_ack_is_not_mistaken_for_done(sim: SterlingSim) -> None:
    mid = sim.deposit(INBOX, "po.edi", X12)
    with source(sim) as src:
        (msg,) = src.list_pending()
        sim.faults.update(liberty_404_count=1)
        with pytest.raises(SterlingUnavailable, match="b2bAPI.jar"):
            src.acknowledge(msg)
    assert sim.message_state(mid)["state"] == "pending"


# ---------------------------------------------------------------------------------------- faults


@pytest.mark.parametrize("body", ["liberty", "json", "empty"])
def test_5xx_burst_within_retry_budget_recovers(sim: SterlingSim, body: str) -> None:
    sim.deposit(INBOX, "po.edi", X12)
    sim.faults.update(burst_count=2, burst_body=body, burst_statuses=[503, 500])
    with source(sim, retry_attempts=3) as src:
        assert [data for _, data in drain(src)] == [X12]
    assert sorted(s for _, _, s in sim.requests if s >= 500) == [500, 503]


def test_retry_after_is_honoured(sim: SterlingSim) -> None:
    sim.faults.update(burst_count=1, burst_retry_after=1)
    started = time.monotonic()
    with source(sim, retry_wait_max=1.0) as src:
        assert list(src.list_pending()) == []
    assert time.monotonic() - started >= 0.95


def test_5xx_beyond_retry_budget_is_a_clear_error(sim: SterlingSim) -> None:
    sim.faults.update(burst_count=-1, burst_statuses=[502])
    with source(sim, retry_attempts=3) as src, pytest.raises(SterlingUnavailable) as err:
        list(src.list_pending())
    assert "after 3 attempts" in str(err.value) and "HTTP 502" in str(err.value)
    assert len(sim.requests) == 3


def test_slow_response_within_timeout_is_waited_for(sim: SterlingSim) -> None:
    sim.deposit(INBOX, "po.edi", X12)
    sim.faults.update(delay_seconds=0.3, match="/documents/")
    with source(sim, timeout=1.5, retry_attempts=1) as src:
        assert [data for _, data in drain(src)] == [X12]


def test_slow_response_over_timeout_is_retried_then_surfaces(sim: SterlingSim) -> None:
    sim.faults.update(delay_seconds=0.8)
    started = time.monotonic()
    with source(sim, timeout=0.2, retry_attempts=2) as src, pytest.raises(SterlingUnavailable, match="timeout"):
        list(src.list_pending())
    assert time.monotonic() - started < 1.5


def test_dropped_connection_mid_body_is_retried(sim: SterlingSim) -> None:
    sim.deposit(INBOX, "po.edi", X12)
    sim.faults.update(truncate_count=1, match="/documents/")
    with source(sim) as src:
        assert [data for _, data in drain(src)] == [X12]


def test_401_raises_auth_error_without_the_password(sim: SterlingSim) -> None:
    with capture_logs() as logs:
        with source(sim, password="wrong-" + PASSWORD) as src, pytest.raises(SterlingAuthError) as err:
            list(src.list_pending())
    text = f"{err.value} {err.value!r} {logs}"
    assert PASSWORD not in text and USER in str(err.value)
    assert len(sim.requests) == 1  # a rejected password is not retried (that would lock the account)


def test_401_mid_poll_stops_the_poll(sim: SterlingSim) -> None:
    sim.deposit(INBOX, "po.edi", X12)
    with source(sim) as src:
        (msg,) = src.list_pending()
        sim.faults.update(auth_fail_count=-1)  # password rotated on the Sterling side
        with pytest.raises(SterlingAuthError):
            src.fetch(msg)


def test_secrets_not_in_repr_or_logs(sim: SterlingSim) -> None:
    sim.faults.update(burst_count=1)
    with capture_logs() as logs:
        src = source(sim)
        list(src.list_pending())
        src.close()
    assert any(e["event"] == "sterling.request.retry" for e in logs)
    assert PASSWORD not in f"{logs} {src!r} {src.config!r} {src.config.model_dump()}"


@pytest.mark.parametrize(("mode", "reason"), [("delete", "not found"), ("drain", "no longer extractable")])
def test_vanished_message_is_skipped_and_the_poll_goes_on(sim: SterlingSim, mode: str, reason: str) -> None:
    ids = [sim.deposit(INBOX, f"po{i}.edi", X12 + str(i).encode()) for i in range(3)]
    sim.faults.update(vanish_ids=[ids[1]], vanish_mode=mode)
    fetched, gone = [], []
    with source(sim) as src:
        for msg in src.list_pending():
            try:
                fetched.append(src.fetch(msg))
            except MessageGone as exc:
                gone.append((exc.message.remote_id, exc.reason))
                continue
            src.acknowledge(msg)
    assert fetched == [X12 + b"0", X12 + b"2"]
    assert len(gone) == 1 and gone[0][0] == str(ids[1]) and reason in gone[0][1]
    assert [sim.message_state(i)["state"] for i in (ids[0], ids[2])] == ["consumed", "consumed"]


def test_redrop_after_ack_shows_same_bytes_under_a_new_id(sim: SterlingSim) -> None:
    mid = sim.deposit(INBOX, "po.edi", X12)
    sim.faults.update(redeliver_on_ack=1)
    with source(sim) as src:
        (first, data1), (second, data2) = drain(src)  # the re-drop is caught by the same poll's re-list pass
        assert drain(src) == []
    assert first.remote_id == str(mid) and second.remote_id != first.remote_id
    assert second.name == first.name and data2 == data1


def test_lost_ack_lists_the_same_id_again(sim: SterlingSim) -> None:
    sim.deposit(INBOX, "po.edi", X12)
    sim.faults.update(ignore_acks=1)
    with source(sim) as src:
        (first, _), = drain(src)
        (again, _), = drain(src)
    assert again.remote_id == first.remote_id


def test_same_payload_deposited_twice_is_two_messages(sim: SterlingSim) -> None:
    r = httpx.post(f"{sim.base_url}/_sim/messages",
                   json={"mailbox": INBOX, "name": "po.edi", "payload_text": X12.decode(), "copies": 2})
    assert r.status_code == 201
    with source(sim) as src:
        got = drain(src)
    assert len({m.remote_id for m, _ in got}) == 2
    assert {hashlib.sha256(d).hexdigest() for _, d in got} == {r.json()["sha256"]}


def test_large_payload_fetched_intact(sim: SterlingSim) -> None:
    r = httpx.post(f"{sim.base_url}/_sim/messages",
                   json={"mailbox": INBOX, "name": "big.edi", "generate_bytes": 6 * 1024 * 1024 + 7})
    with source(sim, timeout=10) as src:
        (msg,) = src.list_pending()
        data = src.fetch(msg)
    assert len(data) == msg.size == 6 * 1024 * 1024 + 7
    assert hashlib.sha256(data).hexdigest() == r.json()["sha256"]


def test_payload_over_size_policy_is_refused_unread(sim: SterlingSim) -> None:
    mid = sim.deposit(INBOX, "big.edi", b"x" * 4096)
    with source(sim, max_payload_bytes=4095) as src:
        (msg,) = src.list_pending()
        with pytest.raises(PayloadTooLarge):
            src.fetch(msg)
    assert sim.message_state(mid)["documentReads"] == 0


# ------------------------------------------------------------------------------- wire conventions


def test_simulator_wire_conventions(sim: SterlingSim) -> None:
    with httpx.Client(base_url=f"{sim.base_url}/B2BAPIs/svc") as anon, \
            httpx.Client(base_url=f"{sim.base_url}/B2BAPIs/svc", auth=(USER, PASSWORD)) as api:
        assert anon.get("/mailboxes/").headers["www-authenticate"].startswith("Basic")
        unknown = api.get("/messages/")
        assert unknown.status_code == 404 and unknown.text.startswith("Error 404: java.io.FileNotFoundException")
        doc = api.post("/documents/", json={"payload": "SVNB", "documentName": "a.edi"})
        assert doc.status_code == 201
        doc_id = unquote(doc.json()["Location"].rsplit("/", 1)[1])
        made = api.post("/mailboxmessages", json={"documentId": doc_id, "mailboxPath": INBOX, "name": "a.edi"})
        assert made.status_code == 201
        mid = made.json()["Location"].rsplit("/", 1)[1]
        one = api.get(f"/mailboxmessages/{mid}/").json()
        assert one["_id"] == mid and one["id"] == int(mid)
        assert one["extractableAlways"] == {"code": False, "display": "No"}
        assert parse_sterling_timestamp(one["creationDate"]) is not None and one["creationDate"][-5] in "+-"
        assert api.put(f"/mailboxmessages/{mid}", json={"extractableCount": 0}).json() == {"rowsAffected": 1}
        missing = api.get("/mailboxmessages/1")
        assert missing.status_code == 404 and missing.json()["errorDescription"].startswith("API0001")


def test_timestamps_with_offsets() -> None:
    assert parse_sterling_timestamp("2024-05-02T09:14:07.000-0500") == datetime(2024, 5, 2, 14, 14, 7,
                                                                                 tzinfo=timezone.utc)
    assert parse_sterling_timestamp("2024-05-02T09:14:07.000+0100").hour == 8
    assert parse_sterling_timestamp("garbage") is None and parse_sterling_timestamp(None) is None
