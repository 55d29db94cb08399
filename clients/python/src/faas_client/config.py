"""faasctl's contexts file, read the same way: `$FAASCTL_CONFIG`, else
`$XDG_CONFIG_HOME/faas/config.toml`, else `~/.config/faas/config.toml`;
`FAAS_CONTEXT`, `FAAS_ENDPOINT` (comma-separated), `FAAS_TOKEN`,
`FAAS_TOKEN_FILE`, `FAAS_CA_FILE` and `FAAS_NAMESPACE` over the context.
"""

from __future__ import annotations

import os
import pathlib
import sys
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from .errors import ConfigError

DEFAULT_ENDPOINT = "https://127.0.0.1:7070"
DEFAULT_NAMESPACE = "default"
_ENTRY_KEYS = {"endpoint", "ca_file", "token_file", "token", "namespace"}


@dataclass(frozen=True)
class Settings:
    """Everything a client needs, resolved."""

    endpoints: list[str]
    ca_pem: Optional[bytes] = None
    token: Optional[str] = None
    namespace: str = DEFAULT_NAMESPACE

    def __repr__(self) -> str:  # never the token
        token = "<redacted>" if self.token else None
        return f"Settings(endpoints={self.endpoints!r}, token={token}, namespace={self.namespace!r})"


@dataclass
class Overrides:
    """Set explicitly, over the context (empty fields defer to it)."""

    context: Optional[str] = None
    endpoints: list[str] = field(default_factory=list)
    token: Optional[str] = None
    token_file: Optional[str] = None
    ca_file: Optional[str] = None
    namespace: Optional[str] = None

    @classmethod
    def from_env(cls, env: Optional[Mapping[str, str]] = None) -> "Overrides":
        env = os.environ if env is None else env

        def var(name: str) -> Optional[str]:
            return env.get(name) or None

        endpoints = var("FAAS_ENDPOINT")
        return cls(
            context=var("FAAS_CONTEXT"),
            endpoints=endpoints.split(",") if endpoints else [],
            token=var("FAAS_TOKEN"),
            token_file=var("FAAS_TOKEN_FILE"),
            ca_file=var("FAAS_CA_FILE"),
            namespace=var("FAAS_NAMESPACE"),
        )


def config_path(env: Optional[Mapping[str, str]] = None) -> pathlib.Path:
    """Where the contexts file is."""
    env = os.environ if env is None else env
    if env.get("FAASCTL_CONFIG"):
        return pathlib.Path(env["FAASCTL_CONFIG"])
    if env.get("XDG_CONFIG_HOME"):
        base = pathlib.Path(env["XDG_CONFIG_HOME"])
    elif env.get("HOME"):
        base = pathlib.Path(env["HOME"]) / ".config"
    else:
        base = pathlib.Path(".")
    return base / "faas" / "config.toml"


def load(path: pathlib.Path) -> dict[str, Any]:
    """The file's contents; empty if it does not exist."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        return {}
    except OSError as e:
        raise ConfigError(f"reading {path}: {e}") from e
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"parsing {path}: {e}") from e
    contexts = data.get("contexts", {})
    for name, entry in contexts.items():
        unknown = set(entry) - _ENTRY_KEYS
        if unknown:
            raise ConfigError(f"parsing {path}: context {name!r} has unknown keys {sorted(unknown)}")
    return data


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise ConfigError(f"reading the {what} {path}: {e}") from e


def resolve(overrides: Overrides, config_file: Optional[pathlib.Path] = None) -> Settings:
    """Settings from `overrides` over the chosen context over the defaults."""
    path = config_file or config_path()
    data = load(path)
    name = overrides.context or data.get("current_context")
    chosen: dict[str, Any] = {}
    if name:
        contexts = data.get("contexts", {})
        if name not in contexts:
            raise ConfigError(f"no context {name!r} in {path} (faasctl context ls)")
        chosen = contexts[name]
    if overrides.endpoints:
        endpoints = list(overrides.endpoints)
    elif chosen.get("endpoint"):
        endpoints = str(chosen["endpoint"]).split(",")
    else:
        endpoints = [DEFAULT_ENDPOINT]
    if overrides.token:
        token: Optional[str] = overrides.token
    elif overrides.token_file:
        token = _read(overrides.token_file, "token file").decode().strip()
    elif chosen.get("token"):
        token = chosen["token"]
    elif chosen.get("token_file"):
        token = _read(chosen["token_file"], "token file").decode().strip()
    else:
        token = None
    ca_file = overrides.ca_file or chosen.get("ca_file")
    ca_pem = _read(ca_file, "CA certificate") if ca_file else None
    namespace = overrides.namespace or chosen.get("namespace") or DEFAULT_NAMESPACE
    return Settings(endpoints=endpoints, ca_pem=ca_pem, token=token, namespace=namespace)
