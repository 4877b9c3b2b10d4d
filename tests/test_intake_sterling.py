"""Sterling intake through the poller against the simulator over real HTTP, with every fault it can inject.

Each fault is set through the simulator's ``/_sim/faults`` control surface. After each scenario: nothing
lost (every message stored once, byte-exact), nothing doubled (one ``received`` interchange per distinct
payload), acknowledged only after stored, and ``SourceStatus`` carrying the error where a poll failed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import httpx
import pytest
from sqlmodel import Session, select

import gateway.intake as intake_module
from gateway.intake import take
from gateway.pollers import poll_source
from gateway.runtime import Runtime
from gateway.integrations.sterling.simulator.app import SterlingSim, run_sterling_sim
from gateway.integrations.sterling.settings import SterlingSettings
from gateway.settings import Settings
from gateway.store import Interchange, RawPayload, SourceStatus

USER, PASSWORD = "edi_gateway_api", "Pw-9f3!kq-not-in-status"
INBOX = "/ACME_EDI/Inbox"
SOURCE = "sterling:b2bi"
X12 = b"ISA*00*          *00*          *ZZ*ACME           *ZZ*GATEWAY        *240502*0914*U*00401*0000001%02d*0*P*>~"


@pytest.fixture(scope="module")
def served() -> Iterator[SterlingSim]:
    with run_sterling_sim(users={USER: PASSWORD}, partners=["ACME_EDI"]) as sim:
        yield sim


@pytest.fixture
def sim(served: SterlingSim) -> SterlingSim:
    httpx.post(f"{served.base_url}/_sim/reset").raise_for_status()
    return served


def faults(sim: SterlingSim, **knobs) -> None:
    httpx.patch(f"{sim.base_url}/_sim/faults", json=knobs).raise_for_status()


def clear_faults(sim: SterlingSim) -> None:
    httpx.delete(f"{sim.base_url}/_sim/faults").raise_for_status()


def runtime(engine, sim: SterlingSim, tmp_path, **overrides) -> Runtime:
    values = dict(name="b2bi", base_url=sim.base_url, username=USER, password=PASSWORD, mailboxes=[INBOX],
                  page_size=3, timeout=2.0, retry_attempts=3, retry_wait_initial=0.01, retry_wait_max=0.05)
    values.update(overrides)
    settings = Settings(data_dir=tmp_path, partners_dir=tmp_path / "partners", sterling=[SterlingSettings(**values)])
    return Runtime(settings=settings, engine=engine)


def deposit(sim: SterlingSim, n: int) -> dict[str, bytes]:
    """``n`` messages with distinct payloads; message id -> payload."""
    return {str(sim.deposit(INBOX, f"ACME_{i:03d}.x12", X12 % i)): X12 % i for i in range(n)}


def stored(engine) -> dict[str, bytes]:
    """remote id -> stored bytes, for every interchange (asserting the stored hash and size match)."""
    out = {}
    with Session(engine) as s:
        for ich in s.exec(select(Interchange).order_by(Interchange.id)):
            data = s.get(RawPayload, ich.id).data
            assert ich.sha256 == hashlib.sha256(data).hexdigest() and ich.size == len(data)
            assert ich.remote_id not in out
            out[ich.remote_id] = data
    return out


def states(engine) -> list[str]:
    with Session(engine) as s:
        return list(s.exec(select(Interchange.state).order_by(Interchange.id)))


def status(engine) -> SourceStatus:
    with Session(engine) as s:
        return s.get(SourceStatus, SOURCE)


def sim_state(sim: SterlingSim, msg_id: str) -> str:
    return sim.message_state(int(msg_id))["state"]


@pytest.fixture
def ack_after_store(sim: SterlingSim, monkeypatch) -> list[str]:
    """Checks, at every intake, that Sterling has not yet been told; returns the ids taken."""
    seen: list[str] = []

    def checked_take(engine, **kw):
        if kw["remote_id"] not in seen:  # a re-read of a message already stored may follow a lost ack
            assert sim.message_state(int(kw["remote_id"]))["acks"] == 0, "acknowledged before it was stored"
        seen.append(kw["remote_id"])
        return take(engine, **kw)

    monkeypatch.setattr(intake_module, "take", checked_take)
    return seen


def test_every_message_stored_byte_exact_then_acknowledged(engine, sim, tmp_path, ack_after_store):
    sent = deposit(sim, 7)  # three pages at page size 3
    report = poll_source(runtime(engine, sim, tmp_path), SOURCE)
    assert (report.listed, report.stored, report.acknowledged, report.errors) == (7, 7, 7, [])
    assert stored(engine) == sent
    assert {sim_state(sim, i) for i in sent} == {"consumed"}
    assert sorted(ack_after_store) == sorted(sent)
    st = status(engine)
    assert st.files_taken == 7 and st.last_success_at and st.last_error is None
    assert poll_source(runtime(engine, sim, tmp_path), SOURCE).listed == 0


def test_5xx_burst_within_the_retry_budget_loses_nothing(engine, sim, tmp_path, ack_after_store):
    sent = deposit(sim, 4)
    faults(sim, burst_count=2, burst_statuses=[503, 502])
    report = poll_source(runtime(engine, sim, tmp_path), SOURCE)
    assert (report.stored, report.errors) == (4, [])
    assert stored(engine) == sent and sorted(s for _, _, s in sim.requests if s >= 500) == [502, 503]


def test_5xx_burst_beyond_the_budget_fails_the_poll_and_the_next_one_takes_all(engine, sim, tmp_path,
                                                                             ack_after_store):
    sent = deposit(sim, 3)
    rt = runtime(engine, sim, tmp_path)
    faults(sim, burst_count=-1, burst_statuses=[502], match="/documents/")  # listing works, fetching does not
    report = poll_source(rt, SOURCE)
    assert report.stored == report.acknowledged == 0
    assert "HTTP 502" in report.error and "after 3 attempts" in report.error
    assert stored(engine) == {} and {sim_state(sim, i) for i in sent} == {"pending"}
    st = status(engine)
    assert "HTTP 502" in st.last_error and st.last_error_at and st.last_success_at is None
    clear_faults(sim)
    assert poll_source(rt, SOURCE).stored == 3 and stored(engine) == sent
    assert status(engine).last_success_at is not None


def test_5xx_on_acknowledgment_stored_once_and_acknowledged_next_poll(engine, sim, tmp_path, ack_after_store):
    sent = deposit(sim, 2)
    rt = runtime(engine, sim, tmp_path)
    faults(sim, burst_count=-1, burst_statuses=[503], match="/mailboxmessages/", methods=["PUT"])
    report = poll_source(rt, SOURCE)
    assert (report.stored, report.acknowledged) == (1, 0) and "HTTP 503" in report.error  # stops at the first
    clear_faults(sim)
    report = poll_source(rt, SOURCE)
    assert (report.stored, report.already_stored, report.acknowledged, report.errors) == (1, 1, 2, [])
    assert stored(engine) == sent and states(engine) == ["received", "received"]
    assert {sim_state(sim, i) for i in sent} == {"consumed"}


def test_acknowledgment_committed_but_its_response_lost_is_done(engine, sim, tmp_path):
    sent = deposit(sim, 1)
    faults(sim, ack_commit_then_fail=1)
    report = poll_source(runtime(engine, sim, tmp_path, ack_mode="delete"), SOURCE)
    assert (report.stored, report.acknowledged, report.errors) == (1, 1, [])  # the retry's 404 counts as done
    assert [s for m, _, s in sim.requests if m == "DELETE"] == [500, 404]
    assert stored(engine) == sent and {sim_state(sim, i) for i in sent} == {"deleted"}


def test_slow_responses_within_the_timeout_are_waited_for(engine, sim, tmp_path, ack_after_store):
    sent = deposit(sim, 2)
    faults(sim, delay_seconds=0.3, match="/documents/")
    report = poll_source(runtime(engine, sim, tmp_path, timeout=1.5), SOURCE)
    assert (report.stored, report.errors) == (2, []) and stored(engine) == sent


def test_responses_slower_than_the_timeout_fail_the_poll_without_loss(engine, sim, tmp_path, ack_after_store):
    sent = deposit(sim, 2)
    rt = runtime(engine, sim, tmp_path, timeout=0.2, retry_attempts=2)
    faults(sim, delay_seconds=0.6, match="/documents/")
    report = poll_source(rt, SOURCE)
    assert report.stored == 0 and "timeout" in report.error and "timeout" in status(engine).last_error
    assert {sim_state(sim, i) for i in sent} == {"pending"}
    clear_faults(sim)
    assert poll_source(rt, SOURCE).stored == 2 and stored(engine) == sent


def test_401_recorded_without_the_password_and_nothing_taken(engine, sim, tmp_path):
    sent = deposit(sim, 2)
    rt = runtime(engine, sim, tmp_path)
    faults(sim, auth_fail_count=-1)  # the password was rotated on the Sterling side
    report = poll_source(rt, SOURCE)
    assert report.stored == 0 and "HTTP 401" in report.error and USER in report.error
    st = status(engine)
    assert "HTTP 401" in st.last_error and PASSWORD not in st.last_error and PASSWORD not in (st.cursor or "")
    assert [s for _, _, s in sim.requests] == [401]  # not retried: that would lock the account
    assert {sim_state(sim, i) for i in sent} == {"pending"}
    clear_faults(sim)
    assert poll_source(rt, SOURCE).stored == 2


def test_message_vanishing_between_list_and_fetch_is_skipped(engine, sim, tmp_path, ack_after_store):
    sent = deposit(sim, 3)
    vanished = list(sent)[1]
    faults(sim, vanish_ids=[int(vanished)])
    report = poll_source(runtime(engine, sim, tmp_path), SOURCE)
    assert (report.listed, report.stored, report.skipped, report.errors) == (3, 2, 1, [])
    assert stored(engine) == {k: v for k, v in sent.items() if k != vanished}


def test_message_drained_by_another_consumer_is_skipped(engine, sim, tmp_path):
    sent = deposit(sim, 2)
    faults(sim, vanish_next_listed=1, vanish_mode="drain")
    report = poll_source(runtime(engine, sim, tmp_path), SOURCE)
    assert (report.stored, report.skipped, report.errors) == (1, 1, [])
    assert len(stored(engine)) == 1 and set(stored(engine)) < set(sent)


def test_lost_acknowledgment_redelivers_the_same_id_recognised_not_doubled(engine, sim, tmp_path):
    sent = deposit(sim, 1)
    rt = runtime(engine, sim, tmp_path)
    faults(sim, ignore_acks=1)
    assert poll_source(rt, SOURCE).stored == 1
    assert {sim_state(sim, i) for i in sent} == {"pending"}  # the ack had no effect
    report = poll_source(rt, SOURCE)
    assert (report.stored, report.already_stored, report.acknowledged) == (0, 1, 1)
    assert stored(engine) == sent and states(engine) == ["received"]
    assert {sim_state(sim, i) for i in sent} == {"consumed"}
    assert status(engine).files_taken == 1


def test_redelivery_under_a_new_id_is_recorded_as_a_duplicate(engine, sim, tmp_path):
    sent = deposit(sim, 1)
    faults(sim, redeliver_on_ack=1)  # the partner drops the same bytes again once we have acknowledged
    report = poll_source(runtime(engine, sim, tmp_path), SOURCE)
    assert (report.stored, report.duplicates, report.acknowledged) == (1, 1, 2)
    assert states(engine) == ["received", "duplicate"]
    assert set(stored(engine).values()) == set(sent.values())
    with Session(engine) as s:
        first, dup = s.exec(select(Interchange).order_by(Interchange.id)).all()
    assert dup.duplicate_of == first.id and dup.remote_id != first.remote_id
    assert all(m["state"] == "consumed" for m in sim.snapshot())


def test_same_payload_deposited_twice_processed_once(engine, sim, tmp_path):
    r = httpx.post(f"{sim.base_url}/_sim/messages",
                   json={"mailbox": INBOX, "name": "po.x12", "payload_text": (X12 % 1).decode(), "copies": 2})
    r.raise_for_status()
    report = poll_source(runtime(engine, sim, tmp_path), SOURCE)
    assert (report.stored, report.duplicates, report.acknowledged) == (1, 1, 2)
    assert states(engine) == ["received", "duplicate"]
    assert set(stored(engine)) == {str(i) for i in r.json()["ids"]}


def test_new_message_inserted_between_pages_is_taken_once(engine, sim, tmp_path):
    deposit(sim, 5)
    faults(sim, insert_between_pages=1)
    report = poll_source(runtime(engine, sim, tmp_path, page_size=2), SOURCE)
    assert (report.stored, report.errors) == (6, [])
    assert len(stored(engine)) == 6 and all(m["state"] == "consumed" for m in sim.snapshot())


def test_dropped_connection_mid_body_is_retried(engine, sim, tmp_path):
    sent = deposit(sim, 1)
    faults(sim, truncate_count=1, match="/documents/")
    assert poll_source(runtime(engine, sim, tmp_path), SOURCE).stored == 1 and stored(engine) == sent


def test_large_payload_stored_intact(engine, sim, tmp_path, ack_after_store):
    size = 6 * 1024 * 1024 + 7
    r = httpx.post(f"{sim.base_url}/_sim/messages", json={"mailbox": INBOX, "name": "big.x12",
                                                          "generate_bytes": size})
    report = poll_source(runtime(engine, sim, tmp_path, timeout=15), SOURCE)
    assert (report.stored, report.errors) == (1, [])
    ((remote_id, data),) = stored(engine).items()
    assert remote_id == str(r.json()["ids"][0])
    assert len(data) == size and hashlib.sha256(data).hexdigest() == r.json()["sha256"]
    assert sim_state(sim, remote_id) == "consumed"


def test_payload_over_the_size_limit_is_left_and_reported_while_others_come_in(engine, sim, tmp_path):
    small = deposit(sim, 2)
    big = sim.deposit(INBOX, "huge.x12", b"x" * 5000)
    rt = runtime(engine, sim, tmp_path, max_payload_bytes=4096)
    report = poll_source(rt, SOURCE)
    assert report.stored == 2 and "over the 4096-byte limit" in report.error
    assert stored(engine) == small
    assert sim.message_state(big)["state"] == "pending" and sim.message_state(big)["documentReads"] == 0
    assert "huge.x12" in status(engine).last_error


def test_store_failure_leaves_the_message_unacknowledged(engine, sim, tmp_path, monkeypatch):
    sent = deposit(sim, 1)
    rt = runtime(engine, sim, tmp_path)

    def store_down(*args, **kwargs):
        raise ConnectionError("database unreachable")

    monkeypatch.setattr(intake_module, "take", store_down)
    report = poll_source(rt, SOURCE)
    assert report.acknowledged == 0 and "database unreachable" in report.error
    assert {sim_state(sim, i) for i in sent} == {"pending"}
    monkeypatch.setattr(intake_module, "take", take)
    assert poll_source(rt, SOURCE).stored == 1 and stored(engine) == sent


def test_revoked_mailbox_reported_while_the_others_are_polled(engine, sim, tmp_path):
    other = "/ACME_EDI/Outbox"
    ok = sim.deposit(other, "b.x12", X12 % 2)
    sim.deposit(INBOX, "a.x12", X12 % 1)
    faults(sim, forbid_mailboxes=[INBOX])
    report = poll_source(runtime(engine, sim, tmp_path, mailboxes=[INBOX, other]), SOURCE)
    assert report.stored == 1 and INBOX in report.error
    assert set(stored(engine)) == {str(ok)}
