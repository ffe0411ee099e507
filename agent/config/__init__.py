"""Read, interpolate and validate the agent's YAML configuration.

This package's surface; each part has its own module:

- `loader`: `read_config_file` (file -> dict), `validate_config` (dict -> Config), `load_config`;
- `errors`: `ConfigError` and the wording of every problem line;
- `models`: `Config` and its sections; `sandbox`: the sandbox section; `credentials`: `Auth`;
- `scalars`: single values (ports, hosts, addresses, durations, ...);
- `interpolation`: values from outside the file (${VAR}, secrets read from files);
- `base`: the strict base model every section derives from.
"""

from __future__ import annotations

from agent.config.credentials import Auth, MailAuth, OAuth2
from agent.config.errors import ConfigError
from agent.config.esp import Esp, EspMatch, EspWebhook
from agent.config.loader import load_config, read_config_file, validate_config
from agent.config.models import (
    Blocklists,
    Config,
    Dns,
    Folders,
    Http,
    HttpTls,
    ImapTimeouts,
    Mailbox,
    PairRef,
    Probes,
    ReportMailbox,
    Route,
    Timeouts,
)
from agent.config.reputation import GoogleReputation, Reputation, Snds
from agent.config.sandbox import (
    Sandbox,
    SandboxBounce,
    SandboxDeliver,
    SandboxMailbox,
    SandboxMatch,
    SandboxReply,
    SandboxRule,
    SandboxVerdicts,
)
from agent.config.scalars import (
    Cleanup,
    ListenAddress,
    LogLevel,
    Nameserver,
    StartMode,
    format_duration,
    parse_duration,
)

__all__ = [
    "Auth",
    "Blocklists",
    "Cleanup",
    "Config",
    "ConfigError",
    "Dns",
    "Esp",
    "EspMatch",
    "EspWebhook",
    "Folders",
    "GoogleReputation",
    "Http",
    "HttpTls",
    "ImapTimeouts",
    "ListenAddress",
    "LogLevel",
    "MailAuth",
    "Mailbox",
    "Nameserver",
    "OAuth2",
    "PairRef",
    "Probes",
    "ReportMailbox",
    "Reputation",
    "Route",
    "Sandbox",
    "SandboxBounce",
    "SandboxDeliver",
    "SandboxMailbox",
    "SandboxMatch",
    "SandboxReply",
    "SandboxRule",
    "SandboxVerdicts",
    "Snds",
    "StartMode",
    "Timeouts",
    "format_duration",
    "load_config",
    "parse_duration",
    "read_config_file",
    "validate_config",
]
