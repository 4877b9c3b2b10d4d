"""The registry of outside systems and the Source protocol: every registered source loads and fits
the protocol, a new kind of source is one class and one registry line, checks say what is wrong."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from sqlmodel import Session, select

from gateway import integrations
from gateway.integrations.base import Check, Intake, Source
from gateway.integrations.local.settings import LocalSettings
from gateway.integrations.local.source import LocalSource
from gateway.pollers import poll_source
from gateway.runtime import Runtime
from gateway.settings import Settings, configured_sources
from gateway.store import Interchange, RawPayload

PAYLOAD = b"ISA*00*          *00*          *ZZ*FAKE           *ZZ*GATEWAY        *240502*0914*U*00401*000000777*0*P*>~"


def test_every_registered_source_loads_and_names_its_kind():
    classes = integrations.source_classes()
    assert set(classes) == {"sterling", "sftp", "local"}
    for kind, cls in classes.items():
        assert cls.kind == kind
        assert callable(cls.configured) and callable(cls.poll) and callable(cls.check)


def test_configured_sources_are_sources_of_every_kind(tmp_path):
    settings = Settings(data_dir=tmp_path, local=[LocalSettings(name="a", path=tmp_path), LocalSettings(
        name="b", path=tmp_path / "b")])
    sources = configured_sources(settings)
    assert [(s.kind, s.name) for s in sources] == [("local", "a"), ("local", "b")]
    assert all(isinstance(s, Source) for s in sources)
    assert settings.source_names() == ["local:a", "local:b"]


def test_a_local_source_check_names_a_missing_folder(tmp_path):
    good = LocalSource(LocalSettings(name="ok", path=tmp_path)).check()
    assert good == [Check(f"folder {tmp_path}", True, "readable")]
    [bad] = LocalSource(LocalSettings(name="gone", path=tmp_path / "missing")).check()
    assert not bad.ok and "missing" in bad.detail


class FakeSource:
    """A source of a kind the gateway did not know: what a new integration package provides."""

    kind: ClassVar[str] = "fake"
    acknowledged: ClassVar[list[str]] = []

    def __init__(self, name: str) -> None:
        self.name = name
        self.interval_seconds = 1.0

    @classmethod
    def configured(cls, settings: Any) -> Sequence[FakeSource]:
        return [cls("one")]

    def poll(self, intake: Intake) -> None:
        intake.listed()
        intake.take("fake.x12", "fake-1", PAYLOAD, lambda: self.acknowledged.append("fake-1"))

    def check(self) -> list[Check]:
        return [Check("fake", True)]


def test_a_new_kind_of_source_is_one_registry_line(engine, tmp_path, monkeypatch):
    monkeypatch.setitem(integrations.SOURCES, "fake", f"{__name__}:FakeSource")
    monkeypatch.setattr(FakeSource, "acknowledged", [])
    rt = Runtime(settings=Settings(data_dir=tmp_path, partners_dir=tmp_path), engine=engine)
    assert "fake:one" in rt.settings.source_names()
    report = poll_source(rt, "fake:one")
    assert (report.polled, report.listed, report.stored, report.acknowledged) == (True, 1, 1, 1)
    assert FakeSource.acknowledged == ["fake-1"]
    with Session(engine) as s:
        [ich] = s.exec(select(Interchange)).all()
        assert (ich.source, ich.remote_id) == ("fake:one", "fake-1")
        assert bytes(s.get(RawPayload, ich.id).data) == PAYLOAD
