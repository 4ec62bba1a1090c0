"""Typed records of a PBX, in the words of the MikoPBX manual.

The wire format (MikoPBX REST v3) is turned into these in pbx/mikopbx.py only.
"""

from __future__ import annotations

import enum
import html
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

SECRET_MASK = "XXXXXXXX"  # what MikoPBX returns instead of a stored SIP password
ANY_PROVIDER = "none"  # `providerid` of an "any provider" incoming route
DEFAULT_ROUTE_ID = 1  # the catch-all route; never listed, never deleted
SYSTEM_DESTINATIONS = ("hangup", "busy", "did2user", "voicemail")

# Real tags only: MikoPBX writes numbers as raw "<201>" inside its HTML.
_TAG = re.compile(r"</?[A-Za-z][^>]*>")


def strip_html(text: str) -> str:
    """MikoPBX `represent` fields are HTML (an icon plus text); keep the text."""
    return html.unescape(_TAG.sub("", text or "")).strip()


class _Model(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="ignore")


RegistrationType = Literal["outbound", "inbound", "none"]


class ProviderSummary(_Model):
    """A SIP provider account as `GET /sip-providers` lists it (no description, no manualattributes)."""

    id: str
    type: str = "SIP"
    description: str = ""
    note: str = ""
    disabled: bool = False
    username: str = ""
    host: str = ""
    port: int = 5060
    registration_type: RegistrationType = "outbound"
    transport: str = "udp"


class Provider(_Model):
    """A SIP provider account in full (`GET /sip-providers/{id}`).

    `secret` is what the PBX returned: for outbound accounts always the mask
    `XXXXXXXX`; sending the mask back keeps the stored password.
    """

    model_config = ConfigDict(populate_by_name=True, extra="allow")

    id: str = ""
    type: str = "SIP"
    description: str = ""
    note: str = ""
    disabled: bool = False
    registration_type: RegistrationType = "outbound"
    username: str = ""
    secret: str = Field(default=SECRET_MASK, repr=False)
    host: str = ""
    port: int = 5060
    transport: str = "udp"
    qualify: bool = True
    qualifyfreq: int = 60
    dtmfmode: str = "auto"
    fromuser: str = ""
    fromdomain: str = ""
    disablefromuser: bool = False
    outbound_proxy: str = ""
    networkfilterid: str = "none"
    manualattributes: str = ""
    additional_hosts: list[str] = Field(default_factory=list, alias="additionalHosts")

    @field_validator("additional_hosts", mode="before")
    @classmethod
    def _hosts(cls, value: Any) -> list[str]:
        items = value or []
        return [item["address"] if isinstance(item, dict) else str(item) for item in items]

    @field_validator("transport", mode="before")
    @classmethod
    def _transport(cls, value: Any) -> str:
        # getDefault answers "UDP", but writes only accept lower case.
        return str(value or "udp").lower()

    @field_validator("port", "qualifyfreq", mode="before")
    @classmethod
    def _int(cls, value: Any) -> Any:
        return 5060 if value in (None, "") else value

    def payload(self, *, secret: str | None = None) -> dict[str, Any]:
        """The JSON body of a create/update; the secret only when it is given."""
        body = self.model_dump(by_alias=True, exclude={"secret"})
        body["additionalHosts"] = [{"address": host} for host in self.additional_hosts]
        body["transport"] = self.transport.lower()
        body["port"] = int(self.port)
        if not body.get("id"):
            body.pop("id", None)
        # MikoPBX reads registration_type from the request to decide about the mask.
        body["secret"] = secret if secret is not None else SECRET_MASK
        for key in ("represent", "statusClass", "search_index", "networkfilter_represent"):
            body.pop(key, None)
        return body


class Route(_Model):
    """An incoming route. `providerid` None means "any provider" (stored as NULL)."""

    id: int | None = None
    rulename: str = ""
    number: str = ""
    providerid: str | None = None
    priority: int = 0
    timeout: int = 120
    extension: str = ""
    audio_message_id: str | None = None
    note: str = ""

    @field_validator("providerid", "audio_message_id", mode="before")
    @classmethod
    def _none(cls, value: Any) -> Any:
        return None if value in (None, "", ANY_PROVIDER) else str(value)

    @field_validator("id", mode="before")
    @classmethod
    def _id(cls, value: Any) -> Any:
        return None if value in (None, "") else int(value)

    @field_validator("number", "extension", "rulename", "note", mode="before")
    @classmethod
    def _str(cls, value: Any) -> str:
        return "" if value is None else str(value)

    @property
    def any_provider(self) -> bool:
        return self.providerid is None

    def payload(self) -> dict[str, Any]:
        """The JSON body of a write. `providerid` is always present: MikoPBX resets a
        route to "any provider" when it is omitted."""
        body: dict[str, Any] = {
            "rulename": self.rulename,
            "number": self.number,
            "providerid": self.providerid or ANY_PROVIDER,
            "timeout": self.timeout,
            "extension": self.extension,
            "note": self.note,
            "audio_message_id": self.audio_message_id or ANY_PROVIDER,
        }
        if self.priority:
            body["priority"] = self.priority
        if self.id is not None:
            body["id"] = str(self.id)
        return body


class DestinationType(enum.StrEnum):
    USER = "USER"
    SIP = "SIP"
    EXTERNAL = "EXTERNAL"
    QUEUE = "QUEUE"
    IVR_MENU = "IVR_MENU"
    CONFERENCE = "CONFERENCE"
    DIALPLAN_APPLICATION = "DIALPLAN_APPLICATION"
    SYSTEM = "SYSTEM"
    MODULES = "MODULES"
    OTHER = "OTHER"


class Destination(_Model):
    """Where a route can send a call: `value` goes into the route's `extension`."""

    value: str
    name: str = ""
    type: DestinationType = DestinationType.OTHER
    type_localized: str = Field(default="", alias="typeLocalized")

    @field_validator("name", mode="before")
    @classmethod
    def _name(cls, value: Any) -> str:
        return strip_html(str(value or ""))

    @field_validator("type", mode="before")
    @classmethod
    def _type(cls, value: Any) -> DestinationType:
        try:
            return DestinationType(str(value).upper())
        except ValueError:
            return DestinationType.OTHER


class RegistrationState(enum.StrEnum):
    """MikoPBX reports `registered`, `REGISTERED` or `OK` depending on the account
    type; these are the normalised values."""

    REGISTERED = "registered"
    UNREGISTERED = "unregistered"
    REJECTED = "rejected"
    UNREACHABLE = "unreachable"
    LAGGED = "lagged"
    OFF = "off"
    UNKNOWN = "unknown"

    @classmethod
    def parse(cls, raw: str | None) -> RegistrationState:
        value = (raw or "").strip().upper()
        if value in ("REGISTERED", "OK", "REACHABLE"):
            return cls.REGISTERED
        if value in ("OFF", "DISABLED"):
            return cls.OFF
        try:
            return cls(value.lower())
        except ValueError:
            return cls.UNKNOWN

    @property
    def good(self) -> bool:
        return self is RegistrationState.REGISTERED


class RegistrationStatus(_Model):
    id: str
    state: RegistrationState = RegistrationState.UNKNOWN
    raw_state: str = ""
    host: str = ""
    username: str = ""
    description: str = ""
    rtt: float | None = None
    state_duration: int | None = Field(default=None, alias="stateDuration")
    last_change: str | None = Field(default=None, alias="lastChange")
    rejection_reason: str | None = Field(default=None, alias="rejectionReason")

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> RegistrationStatus:
        raw = str(data.get("state", ""))
        return cls.model_validate({**data, "state": RegistrationState.parse(raw), "raw_state": raw})


class _Call(_Model):
    """A call as MikoPBX reports it."""

    start: str = ""
    answer: str = ""
    endtime: str = ""
    src_num: str = ""
    dst_num: str = ""
    did: str = ""
    linkedid: str = ""


class CdrRecord(_Call):
    id: str = ""
    disposition: str = ""
    duration: int = 0
    billsec: int = 0
    from_account: str = ""
    to_account: str = ""

    @field_validator("id", mode="before")
    @classmethod
    def _id(cls, value: Any) -> str:
        return "" if value is None else str(value)


class CdrPage(_Model):
    records: list[CdrRecord]
    total: int
    limit: int
    offset: int
    has_more: bool
