"""``[[syspro]]`` settings: a SYSPRO site read through OData or, where OData is not licensed, e.net."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator


class SysproRetry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_attempts: int = Field(4, ge=1, description="tries of one request on 5xx, timeouts and network errors")
    backoff_initial: float = Field(0.5, ge=0)
    backoff_max: float = Field(15.0, ge=0)


class SysproOData(BaseModel):
    """The OData service root for one company, e.g. ``https://erp/SYSPRO8Odata/SYSPROOData/EDU1``.

    The path is the site's choice (specs/syspro.md B.2: no public evidence), so it is configuration.
    """

    model_config = ConfigDict(extra="forbid")

    url: str = Field(min_length=1)
    operator: str = Field(min_length=1, description="a SYSPRO operator enabled for OData in Operator Maintenance")
    password: SecretStr = Field(description="the operator's OData password")
    page_size: int = Field(5000, ge=1, le=1_000_000,
                           description="$top per request; 5000 is the documented cap, a site may allow more")
    ieee754_compatible: bool = Field(True, description="ask for decimals as strings (exact)")
    verify_tls: bool = True


class SysproEnet(BaseModel):
    """The e.net REST host, e.g. ``http://erp-app01:31002/SYSPROWCFService/Rest`` (port: the site's)."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(min_length=1)
    operator: str = Field(min_length=1)
    password: SecretStr
    company_id: str = Field(min_length=1)
    company_password: SecretStr = SecretStr("")
    page_size: int = Field(1000, ge=1, le=100_000, description="COMFND ReturnRows per call")


class SysproSettings(BaseModel):
    """One SYSPRO site the record flows read (``source.system: syspro`` with this ``name``)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field("syspro", min_length=1, max_length=100)
    read: Literal["odata", "enet"] = Field("odata", description="enet: COMFND through an e.net session")
    odata: SysproOData | None = None
    enet: SysproEnet | None = None
    timeout_seconds: float = Field(60.0, gt=0)
    trust_env: bool = True
    retry: SysproRetry = Field(default_factory=SysproRetry)

    @model_validator(mode="after")
    def _reader_configured(self) -> SysproSettings:
        if self.read == "odata" and self.odata is None:
            raise ValueError("read = 'odata' needs an [syspro.odata] section (url, operator, password)")
        if self.read == "enet" and self.enet is None:
            raise ValueError("read = 'enet' needs an [syspro.enet] section (url, operator, password, company_id)")
        return self
