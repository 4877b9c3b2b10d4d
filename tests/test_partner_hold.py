"""A broken mapping file holds only its own partner: the others go on, its interchanges wait (not fail),
the panel says so, and they go on by themselves once the file is fixed. On SQLite and PostgreSQL."""

from __future__ import annotations

import shutil
from datetime import timedelta

import pytest
from sqlmodel import Session, select

from gateway.pipeline.translation import HELD
from gateway.pipeline.worker import Worker
from gateway.store import Document, Interchange, utcnow
from tests.db import store_url  # noqa: F401 - fixture
from tests.pipeline_fixtures import PARTNERS, pipeline, store_payload
from tests.test_web_support import GOOD_MAPPING, add_token, add_user, client_for, new_runtime, sign_in, x12_850, zenith_sample


@pytest.fixture
def rt(store_url, tmp_path):  # noqa: F811
    folder = tmp_path / "partners"
    folder.mkdir()
    for f in PARTNERS.glob("*.yaml"):
        shutil.copy(f, folder)
    (folder / "zenith-tools.yaml").write_text(GOOD_MAPPING)
    runtime = new_runtime(store_url, tmp_path)
    runtime.settings = runtime.settings.model_copy(update={"partners_dir": folder})
    add_user(runtime.engine, "victor", "viewer")
    yield runtime
    runtime.engine.dispose()


def _state(engine, ich_id: int) -> tuple[str, str | None, int]:
    with Session(engine) as s:
        ich = s.get(Interchange, ich_id)
        count = len(s.exec(select(Document.id).where(Document.interchange_id == ich_id)).all())
        return ich.state, ich.error, count


def test_a_broken_mapping_file_holds_only_its_partner_and_recovers_once_fixed(rt, caplog):
    folder = rt.settings.partners_dir
    # A YAML error dropped into the folder (a tab where spaces belong): the file cannot even be read.
    (folder / "zenith-tools.yaml").write_text(GOOD_MAPPING.replace("  translations:", "\ttranslations:"))
    rt.partners_changed()
    zenith = store_payload(rt.engine, zenith_sample("ZT-7").encode(), "zt.x12")
    northwind = store_payload(rt.engine, x12_850(501, ["NW-501"]), "nw.x12")
    worker = Worker(rt, pipeline=pipeline(), name="w1")
    worker.run_until_idle()
    assert _state(rt.engine, northwind)[:1] == ("split",) and _state(rt.engine, northwind)[2] == 1
    state, error, docs = _state(rt.engine, zenith)
    assert (state, docs) == ("received", 0) and error.startswith(HELD) and "zenith-tools.yaml" in error
    # Looked at again later, it still waits (no attempt used up, never failed).
    later = Worker(rt, pipeline=pipeline(), name="w2", clock=lambda: utcnow() + timedelta(minutes=5))
    later.run_until_idle()
    assert _state(rt.engine, zenith)[0] == "received"

    # The panel says which file, what is wrong and how many interchanges wait.
    c = client_for(rt)
    sign_in(c, "victor")
    for page in ("/partners", "/sources"):
        html = c.get(page).text
        assert 'id="broken-partners"' in html and "zenith-tools.yaml" in html and "1 interchange(s) waiting" in html
    api = client_for(rt)
    api.headers["Authorization"] = f"Bearer {add_token(rt.engine, 'victor')}"
    broken = api.get("/api/partners-broken").json()
    assert [b["file"].rsplit("/", 1)[-1] for b in broken] == ["zenith-tools.yaml"] and broken[0]["problems"]

    # Fixed: the held interchange is split by itself, with the partner's own mapping.
    (folder / "zenith-tools.yaml").write_text(GOOD_MAPPING)
    rt.partners_changed()
    Worker(rt, pipeline=pipeline(), name="w3", clock=lambda: utcnow() + timedelta(minutes=10)).run_until_idle()
    state, error, docs = _state(rt.engine, zenith)
    assert (state, error, docs) == ("split", None, 1)
    with Session(rt.engine) as s:
        doc = s.exec(select(Document).where(Document.interchange_id == zenith)).one()
    assert doc.partner == "zenith-tools" and doc.state == "translated"
    assert 'id="broken-partners"' not in c.get("/partners").text
