"""Settings: one TOML file plus `PBXBOT_`-prefixed environment overrides.

    PBXBOT_CONFIG=/etc/pbxbot/config.toml
    PBXBOT_PBX__MAIN__API_KEY=...        (`__` separates nesting levels)

A bad config fails at start with one line per problem (`ConfigError`), never a
traceback; unknown keys are errors, because an ignored typo is a silent
misconfiguration.
"""

from __future__ import annotations

import os
import re
import stat
import tomllib
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from bot.errors import ConfigError

ENV_PREFIX = "PBXBOT_"
CONFIG_ENV = "PBXBOT_CONFIG"

# MikoPBX's nginx allows 180 requests/min (+20 burst) per client IP; stay below it.
MIKOPBX_RATE_LIMIT_PER_MIN = 180
DEFAULT_RATE_LIMIT_PER_MIN = 165
SUPPORTED_DATABASES = ("sqlite", "postgresql+psycopg")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _read_secret_file(path: Path, what: str) -> SecretStr:
    try:
        value = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ValueError(f"cannot read {what} file {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ValueError(f"{what} file {path} is not UTF-8 text") from None
    if not value:
        raise ValueError(f"{what} file {path} is empty")
    return SecretStr(value)


def _value_or_file(section: BaseModel, name: str) -> None:
    """`name` or `name_file` (read into `name`), not both."""
    value, path = getattr(section, name), getattr(section, f"{name}_file")
    if value is not None and path is not None:
        raise ValueError(f"give {name} or {name}_file, not both")
    if path is not None:
        setattr(section, name, _read_secret_file(path, name))


class PbxProfile(_Section):
    """One MikoPBX: `[pbx.<name>]`."""

    url: str
    api_key: SecretStr | None = None
    api_key_file: Path | None = None
    login: str | None = None
    password: SecretStr | None = None
    password_file: Path | None = None
    # True, False, or the path of a CA bundle: PBXes often carry self-signed certificates.
    verify_tls: bool | Path = True
    timeout: float = Field(default=10.0, gt=0, le=300)
    # Above 180 only for a PBX with PBXRateLimitEnabled=0 (nginx limit off).
    rate_limit_per_min: int = Field(default=DEFAULT_RATE_LIMIT_PER_MIN, ge=1, le=100_000)
    # MikoPBX regenerates pjsip.conf/dialplan ~5 s after the last change; verify after this.
    reload_wait: float = Field(default=15.0, ge=0, le=600)

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        value = value.strip().rstrip("/")
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value

    @field_validator("verify_tls")
    @classmethod
    def _ca_file(cls, value: bool | Path) -> bool | Path:
        if isinstance(value, Path) and not value.is_file():
            raise ValueError(f"CA file {value} does not exist")
        return value

    @model_validator(mode="after")
    def _credentials(self) -> PbxProfile:
        _value_or_file(self, "api_key")
        _value_or_file(self, "password")
        has_key = self.api_key is not None
        has_login = self.login is not None or self.password is not None
        if has_key and has_login:
            raise ValueError("give an API key or login + password, not both")
        if not has_key and not has_login:
            raise ValueError("needs api_key (or api_key_file), or login + password")
        if has_login and (not self.login or self.password is None):
            raise ValueError("login and password go together")
        return self


class TelegramSettings(_Section):
    token: SecretStr | None = None
    token_file: Path | None = None
    # aiogram's custom API server: a self-hosted Bot API server, or sandbox/telegram/.
    api_base: str | None = None
    mode: Literal["polling", "webhook"] = "polling"
    # Groups where plans are proposed and approved: chat id -> PBX profile name.
    groups: dict[int, str] = Field(default_factory=dict)
    # Webhook mode: the public HTTPS URL Telegram posts to (it ends with server.webhook_path),
    # and the secret Telegram sends back in X-Telegram-Bot-Api-Secret-Token.
    webhook_url: str | None = None
    webhook_secret: SecretStr | None = None
    webhook_secret_file: Path | None = None
    # Telegram's outbound limits, one budget for all replicas (in Redis when [redis] url is set):
    # messages per group per group_window seconds, and messages per second overall.
    group_limit: int = Field(default=20, ge=1, le=1000)
    group_window: float = Field(default=60.0, gt=0, le=3600)
    global_limit: int = Field(default=30, ge=1, le=1000)
    # how long a message is retried while Telegram answers 429 before it is given up (seconds)
    retry_patience: float = Field(default=600.0, ge=0, le=86400)

    @model_validator(mode="after")
    def _token_file(self) -> TelegramSettings:
        _value_or_file(self, "token")
        _value_or_file(self, "webhook_secret")
        if self.webhook_secret is not None and not re.fullmatch(
            r"[A-Za-z0-9_-]{1,256}", self.webhook_secret.get_secret_value()
        ):
            raise ValueError("webhook_secret: 1-256 characters A-Z a-z 0-9 _ - (Telegram's rule)")
        if self.mode == "webhook" and not self.webhook_url:
            raise ValueError("mode = webhook needs webhook_url")
        return self


class ServerSettings(_Section):
    """The HTTP server of webhook mode: the webhook, /healthz and /metrics."""

    host: str = "0.0.0.0"
    port: int = Field(default=8080, ge=0, le=65535)
    webhook_path: str = "/telegram"
    # how often a replica tries to become the scheduler owner, and the owner's housekeeping period
    leader_interval: float = Field(default=5.0, gt=0, le=300)
    housekeeping_seconds: float = Field(default=60.0, gt=0, le=3600)
    # updates handled at once by one process (polling or webhook); one chat's updates wait their
    # turn in memory first, so a busy chat never takes every slot
    max_concurrent_updates: int = Field(default=64, ge=1, le=1000)
    # updates accepted but not finished; beyond it polling stops fetching and the webhook holds
    # its answer (Telegram then sends more slowly)
    max_pending_updates: int = Field(default=1000, ge=1, le=100_000)


class MirrorSettings(_Section):
    """The PBX mirror's background refresher (bot/plans/mirror.py): a round every
    `refresh_seconds`, with `refresh_share` of each PBX's `rate_limit_per_min`.
    At the defaults 1,000 accounts are all re-read within about 34 minutes;
    a route added, edited or removed, or an account added, removed or disabled by hand,
    shows within one round."""

    refresh_seconds: float = Field(default=60.0, ge=5, le=3600)
    refresh_share: float = Field(default=0.2, ge=0, le=1)  # 0: no refresher


class RedisSettings(_Section):
    # aiogram's FSM storage and event isolation, shared by webhook replicas
    url: str | None = None


class PbxBudgetSettings(_Section):
    """`[pbx_budget]`: how the PBXes' call budgets are shared (pbx/budget.py). One budget
    per PBX (its profile's rate_limit_per_min), for every command, apply, report and
    background read of every process that shares the Redis."""

    # Redis shared by the replicas; default: [redis] url. Without either, each process has its own.
    redis_url: str | None = None
    # the most of the rate background reads (the mirror's refresher) take, when no one else waits
    background_share: float = Field(default=0.2, gt=0, le=1)
    # while Redis does not answer, the share of the rate each process takes alone (1/N for N replicas)
    fallback_share: float = Field(default=0.5, gt=0, le=1)
    # tokens one process or all together may take back to back (nginx allows 20 over the rate)
    burst: int = Field(default=10, ge=1, le=20)


class StorageSettings(_Section):
    # SQLite under data_dir by default; PostgreSQL as postgresql+psycopg://...
    url: str | None = None
    data_dir: Path = Path("data")
    # The Fernet key for SIP passwords at rest; without one, data_dir/secret.key (made on first start).
    secret_key: SecretStr | None = None
    secret_key_file: Path | None = None

    @field_validator("url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        """SQLite or PostgreSQL through psycopg 3 (the driver pbxbot installs); `postgresql://`
        means the same."""
        if value is None:
            return None
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        try:
            url = make_url(value)
        except (ArgumentError, ValueError):
            raise ValueError("not a database URL (sqlite:///FILE or postgresql+psycopg://...)") from None
        if url.drivername == "postgresql":
            return url.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
        if url.drivername not in SUPPORTED_DATABASES:
            raise ValueError(
                f"unsupported database {url.drivername!r}: give sqlite:///FILE or postgresql+psycopg://..."
            )
        return value

    @model_validator(mode="after")
    def _key_file(self) -> StorageSettings:
        from bot.plans.vault import check_key

        _value_or_file(self, "secret_key")
        if self.secret_key is not None and not check_key(self.secret_key.get_secret_value()):
            raise ValueError(
                "secret_key: not a Fernet key (32 url-safe base64-encoded bytes;"
                ' make one with python3 -c "from cryptography.fernet import Fernet;'
                ' print(Fernet.generate_key().decode())")'
            )
        return self


# every kind of change
DEFAULT_APPROVALS = {"add": 1, "route": 1, "remove": 2, "undo": 1, "fix": 1, "restore": 1, "password": 1}


class PolicySettings(_Section):
    """Who may do what (Telegram user ids), and how many approvals each kind of change needs."""

    admins: list[int] = Field(default_factory=list)
    approvers: list[int] = Field(default_factory=list)
    operators: list[int] = Field(default_factory=list)
    viewers: list[int] = Field(default_factory=list)
    # approvals from approvers other than the proposer, per kind of change
    approvals: dict[str, int] = Field(default_factory=lambda: dict(DEFAULT_APPROVALS))
    self_approve: bool = False  # a one-admin PBX: the proposer's own approval counts
    expiry_hours: float = Field(default=24.0, gt=0, le=24 * 30)

    @field_validator("approvals")
    @classmethod
    def _approvals(cls, value: dict[str, int]) -> dict[str, int]:
        unknown = sorted(set(value) - set(DEFAULT_APPROVALS))
        if unknown:
            kinds = ", ".join(DEFAULT_APPROVALS)
            raise ValueError(f"unknown kind {', '.join(unknown)}: the kinds are {kinds}")
        if any(n < 0 or n > 10 for n in value.values()):
            raise ValueError("approvals must be between 0 and 10")
        return {**DEFAULT_APPROVALS, **value}


class RecipeSettings(_Section):
    """When /addnumber applies MikoPBX's recipe to a host.

    "always" (the default): whenever the host then has two or more enabled accounts.
    "needed": not on a host whose logins MikoPBX already routes right through its
    shared host:port context (every account on the same host spelling and port, each
    with a route of its own): there a plan adds only the new account and its route,
    and the doctor keeps its warning about that context."""

    when: Literal["always", "needed"] = "always"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        case_sensitive=False,
    )

    pbx: dict[str, PbxProfile] = Field(default_factory=dict)
    telegram: TelegramSettings = Field(default_factory=TelegramSettings)
    storage: StorageSettings = Field(default_factory=StorageSettings)
    policy: PolicySettings = Field(default_factory=PolicySettings)
    recipe: RecipeSettings = Field(default_factory=RecipeSettings)
    server: ServerSettings = Field(default_factory=ServerSettings)
    redis: RedisSettings = Field(default_factory=RedisSettings)
    pbx_budget: PbxBudgetSettings = Field(default_factory=PbxBudgetSettings)
    mirror: MirrorSettings = Field(default_factory=MirrorSettings)
    log_format: Literal["text", "json"] = "text"
    default_language: Literal["ru", "en"] = "ru"
    timezone: str = "Europe/Moscow"
    # How an operator sends a phone as the DID of its calls, by catalogue name or host
    # (`zadarma = "national"`, `"sip.example.ru" = "plus"`): e164 74951234567 (the
    # catalogue's usual), national 84951234567, plus +74951234567. /addnumber's phone route uses it.
    phone_dids: dict[str, Literal["e164", "national", "plus"]] = Field(default_factory=dict)

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        """An IANA zone: the digest's schedules and periods are computed in it."""
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r} (an IANA name such as Europe/Moscow)") from None
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The file's values come in through init; the environment overrides them.
        return (env_settings, init_settings)

    @field_validator("phone_dids")
    @classmethod
    def _phone_dids(cls, value: dict[str, str]) -> dict[str, str]:
        """Keys as the bot compares them: a family name or a host, in lower case."""
        return {key.strip().rstrip(".").lower(): form for key, form in value.items()}

    @model_validator(mode="after")
    def _groups_name_profiles(self) -> Settings:
        unknown = sorted({name for name in self.telegram.groups.values() if name not in self.pbx})
        if unknown:
            raise ValueError(f"telegram.groups names PBX profiles that do not exist: {', '.join(unknown)}")
        return self

    def profile(self, name: str | None = None) -> tuple[str, PbxProfile]:
        """The named PBX profile, or the only one when no name is given."""
        if name is None:
            if len(self.pbx) != 1:
                names = ", ".join(sorted(self.pbx)) or "none configured"
                raise ConfigError([f"pbx: name a profile with --pbx ({names})"])
            name = next(iter(self.pbx))
        if name not in self.pbx:
            names = ", ".join(sorted(self.pbx)) or "none configured"
            raise ConfigError([f"pbx: no profile named {name!r} ({names})"])
        return name, self.pbx[name]


def _location(loc: tuple[Any, ...]) -> str:
    return (
        ".".join(str(part) for part in loc if part not in ("function-after", "function-before")) or "config"
    )


def _format_errors(exc: ValidationError) -> list[str]:
    lines = []
    for err in exc.errors(include_url=False, include_input=False):
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            message = "unknown key"
        elif err["type"] == "missing":
            message = "required"
        lines.append(f"{_location(err['loc'])}: {message}")
    return lines


def load_settings(path: str | os.PathLike[str] | None = None, **overrides: Any) -> Settings:
    """Read the TOML file (argument, else $PBXBOT_CONFIG, else none) and the environment."""
    if path is None:
        path = os.environ.get(CONFIG_ENV)
    data: dict[str, Any] = {}
    if path:
        file = Path(path)
        try:
            data = tomllib.loads(file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError([f"{file}: no such config file"]) from None
        except OSError as exc:
            raise ConfigError([f"{file}: {exc.strerror}"]) from None
        except UnicodeDecodeError:
            raise ConfigError([f"{file}: not a text file (TOML is UTF-8)"]) from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError([f"{file}: not valid TOML ({exc})"]) from None
    data.update(overrides)
    try:
        return Settings(**data)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc)) from None


def secret_files(settings: Settings) -> list[tuple[str, Path]]:
    """The files holding a secret, by the key that names them (the generated vault key included)."""
    files: list[tuple[str, Path | None]] = [
        ("telegram.token_file", settings.telegram.token_file),
        ("telegram.webhook_secret_file", settings.telegram.webhook_secret_file),
        ("storage.secret_key_file", settings.storage.secret_key_file),
    ]
    for name, profile in settings.pbx.items():
        files += [(f"pbx.{name}.api_key_file", profile.api_key_file)]
        files += [(f"pbx.{name}.password_file", profile.password_file)]
    if settings.storage.secret_key is None:
        from bot.plans.vault import KEY_FILE

        files.append(("storage.data_dir", settings.storage.data_dir / KEY_FILE))
    return [(key, path) for key, path in files if path is not None and path.is_file()]


def exposed_secret_files(settings: Settings) -> list[tuple[str, Path, str]]:
    """(key, path, mode) of each secret file that someone else may read: any "other" user, or a
    group this process is not in (0640 root:pbxbot, read by the pbxbot user, is fine)."""
    own_groups = {os.getegid(), *os.getgroups()}
    exposed = []
    for key, path in secret_files(settings):
        try:
            info = path.stat()
        except OSError:
            continue
        if info.st_mode & stat.S_IROTH or (info.st_mode & stat.S_IRGRP and info.st_gid not in own_groups):
            exposed.append((key, path, f"{stat.S_IMODE(info.st_mode):04o}"))
    return exposed
