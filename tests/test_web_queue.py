"""The landing page as a work queue, the outage banner on every page, held files viewable before forcing,
errors in plain words (message, then line in the file and position in the set, then the code)."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest

from gateway.store import Document, SourceStatus, transaction, utcnow
from tests.test_web_support import (
    DEMO,
    FakeDelivery,
    add_user,
    client_for,
    ingest,
    new_runtime,
    sign_in,
    x12_850,
)


@pytest.fixture
def rt(tmp_path):
    from gateway.integrations.local.settings import LocalSettings
    from gateway.store.db import upgrade

    url = f"sqlite:///{tmp_path / 'gateway.db'}"
    upgrade(url)
    runtime = new_runtime(url, tmp_path)
    runtime.settings = runtime.settings.model_copy(update={"local": [LocalSettings(name="drop", path=tmp_path)]})
    add_user(runtime.engine, "olga", "operator")
    add_user(runtime.engine, "victor", "viewer")
    yield runtime
    runtime.engine.dispose()


def _viewer(rt):
    """A panel signed in as a viewer, made after the documents: its counts are cached for a few seconds."""
    c = client_for(rt)
    sign_in(c, "victor")
    return c


def _age(engine, doc_id: int, **delta) -> None:
    with transaction(engine) as s:
        d = s.get(Document, doc_id)
        d.created_at = d.created_at - timedelta(**delta)


def test_the_queue_counts_what_needs_a_person_with_the_oldest_age_and_newest_problems_first(rt):
    delivery = FakeDelivery()
    delivery.attention = {"ATT-1"}
    ingest(rt, (DEMO / "northwind-retail-850-NW-4471.x12").read_bytes(), "ok.x12", delivery)  # done: not a problem
    old_broken = ingest(rt, x12_850(701, ["BRK-1"], broken=(1,)), "old.x12")[0]
    _age(rt.engine, old_broken, days=3)
    waiting = ingest(rt, x12_850(702, ["ATT-1"]), "att.x12", delivery)[0]
    delivery.plex_fault = "Plex refused the sales order: customer NWR01 is on hold"
    refused = ingest(rt, x12_850(703, ["PLX-1"]), "plx.x12", delivery)[0]
    ingest(rt, b"not EDI at all\n", "junk.txt")

    viewer = _viewer(rt)
    o = viewer.get("/api/overview").json()["queue"]
    assert o["waiting"]["count"] == 1 and o["failed"]["count"] == 2 and o["held"]["count"] == 1
    assert o["failed"]["by_stage"] == {"translate": 1, "plex": 1}
    assert o["held"]["unreadable"] == 1 and o["held"]["duplicates"] == 0
    oldest = o["failed"]["oldest"]
    assert oldest.startswith((utcnow() - timedelta(days=3)).date().isoformat())
    kinds = [(p["kind"], p["id"]) for p in o["problems"]]
    # Newest first: the held file came last, then the refused posting, the waiting one, the old failure.
    assert kinds[:3] == [("held", kinds[0][1]), ("failed", refused), ("waiting", waiting)]
    assert ("failed", old_broken) in kinds

    page = viewer.get("/").text
    queue = page[page.index('id="queue"'):page.index('id="problems"')]
    assert re.search(r'id="q-waiting".*?<span class="n">1</span>', queue, re.S)
    assert re.search(r'id="q-failed".*?<span class="n">2</span>.*?oldest received <time[^>]*>3 d ago', queue, re.S)
    assert re.search(r'id="q-held".*?<span class="n">1</span>', queue, re.S)
    # Problems sit above the activity figures, each with a way in.
    assert page.index('id="problems"') < page.index('id="state-counts"') < page.index('id="per-hour"')
    assert f'href="/documents/{refused}"' in page and "on hold" in page and 'data-refresh="15"' in page


def test_nothing_to_do_says_so(rt):
    ingest(rt, (DEMO / "northwind-retail-850-NW-4471.x12").read_bytes(), "ok.x12", FakeDelivery())
    viewer = _viewer(rt)
    page = viewer.get("/").text
    assert 'id="all-clear"' in page and '<table class="grid stack" id="problems">' not in page
    assert 'id="outage"' not in page  # the drop folder has not had its first poll yet: not late either


def test_a_failing_source_puts_a_banner_on_every_page_with_since_last_error_and_what_to_do(rt):
    since = utcnow() - timedelta(minutes=42)
    with transaction(rt.engine) as s:
        s.add(SourceStatus(source="local:drop", last_poll_at=utcnow(), last_success_at=since - timedelta(minutes=1),
                           last_error="sterling.example.com: 401 Unauthorized: password rejected for user edi",
                           last_error_at=utcnow()))
        s.add(SourceStatus(source="sftp:removed-long-ago", last_poll_at=since, last_error="gone", last_error_at=since))
    viewer = _viewer(rt)
    for path in ("/", "/documents", "/partners", "/sources", f"/interchanges/{424242}"):
        page = viewer.get(path)
        banner = re.search(r'<div class="outage" id="outage".*?</div>\s*</div>', page.text, re.S)
        assert banner, path
        text = banner.group(0)
        assert "Local folder drop is failing" in text and "401 Unauthorized" in text and "credentials" in text
        assert "removed-long-ago" not in text  # a source no longer configured is not an outage
    # The overview lists configured sources only.
    assert "removed-long-ago" not in viewer.get("/").text
    with transaction(rt.engine) as s:
        row = s.get(SourceStatus, "local:drop")
        row.last_success_at = utcnow() + timedelta(seconds=1)
    client = client_for(rt)  # a fresh panel: the banner is cached for a few seconds per process
    sign_in(client, "victor")
    assert 'id="outage"' not in client.get("/documents").text


def test_a_held_duplicate_is_viewable_before_forcing_with_its_difference_to_the_first_file(rt):
    first = x12_850(801, ["RES-1"], broken=(1,))
    corrected = x12_850(801, ["RES-1"])  # the partner re-sent it fixed, with the same interchange control number
    assert len(ingest(rt, first, "first.x12")) == 1
    assert ingest(rt, corrected, "corrected.x12") == []
    from sqlmodel import Session, select

    from gateway.store import Interchange

    with Session(rt.engine) as s:
        dup = s.exec(select(Interchange).where(Interchange.state == "duplicate")).one()
        original = dup.duplicate_of
    viewer = _viewer(rt)
    page = viewer.get(f"/interchanges/{dup.id}")
    assert page.status_code == 200
    text = page.text
    assert "same sender, receiver and interchange control number 000000801" in text
    assert f'href="/interchanges/{original}"' in text
    # What forcing it would give: the corrected set translates now.
    preview = text[text.index('id="preview"'):text.index("</table>", text.index('id="preview"'))]
    assert "RES-1" in preview and "translated" in preview
    # The difference to the first file, line by line.
    diff = re.search(r'<pre class="diff" id="diff">(.*?)</pre>', text, re.S).group(1)
    assert 'class="diff-del">-PO1*1*TWELVE' in diff and 'class="diff-add">+PO1*1*12' in diff
    # Segments numbered by line in the file.
    assert re.search(r'id="line-1".*?ISA\*00', text, re.S)
    assert 'id="held-action"' not in text  # a viewer sees no action
    raw = viewer.get(f"/interchanges/{dup.id}/raw")
    assert raw.content == corrected and "attachment" in raw.headers["content-disposition"]
    assert viewer.get("/interchanges/987654").status_code == 404


def test_errors_read_in_plain_words_first_with_one_numbering(rt):
    broken = ingest(rt, x12_850(901, ["BRK-9"], broken=(1,)), "brk.x12")[0]
    viewer = _viewer(rt)
    for path in ("/documents", f"/documents/{broken}", "/"):
        text = viewer.get(path).text
        m = re.search(r'<span class="msg">(.*?)</span> <span class="where">— (.*?)</span> <span class="code">(.*?)</span>',
                      text)
        assert m, path
        assert "&#39;TWELVE&#39; is not a number" in m.group(1)
        assert m.group(2) == "PO1 at line 7 of the file, position 5 in the set, element 02"
        assert m.group(3) == "element.invalid_number"
        assert ">brk.x12: segment" not in text  # the file name does not come first (payloads keep it, collapsed)
