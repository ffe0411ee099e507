"""The token sources of a configuration: one per distinct credential, kept across reloads.

A credential is an `auth` section that signs in with a token (`oauth2`, `token_command`,
`token_file`), with its username; a route and a mailbox with the same section share one source,
so one refresh serves both. Its name (the `credential` label, logs, the status page) is the name
of the first mailbox that uses it, else of the first route; where a route and a mailbox of the
same name have different credentials, the route's is `route-<name>` (and a new credential whose
name a kept one holds is `mailbox-<name>`). A reload keeps the source
(and its cached token) of every credential whose section did not change.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Final, Literal

from agent.config import Config, MailAuth, OAuth2
from agent.model import TokenRefreshed
from agent.oauth.command import TokenCommand, TokenFile
from agent.oauth.endpoint import TokenEndpoint
from agent.oauth.grants import ClientCredentialsGrant, RefreshTokenGrant, ServiceAccountGrant
from agent.oauth.lifecycle import CachingTokenSource, CredentialState, Fetcher
from agent.oauth.presets import Grant
from agent.oauth.refresh_store import RefreshTokenStore
from agent.oauth.token_source import OAuthSignIn
from agent.secrets import Redactor, secret_values

__all__ = ["OwnerKind", "TokenSources", "refresh_token_path"]

OwnerKind = Literal["route", "mailbox"]

OAUTH_DIR: Final = "oauth"  # under the state directory, mode 0700


def refresh_token_path(state_dir: Path, credential: str) -> Path:
    """Where a credential's refresh token is kept when `refresh_token_file` is not set."""
    return state_dir / OAUTH_DIR / f"{credential}.refresh-token"


def _key(auth: MailAuth) -> MailAuth:
    # The mechanism is how a connection uses the token, not which token: not part of the key.
    return auth.model_copy(update={"mechanism": None})


class TokenSources:
    """Builds, shares and keeps the token sources of the configured routes and mailboxes."""

    def __init__(
        self,
        *,
        state_dir: Path,
        clock: Callable[[], float] = time.time,
        on_refresh: Callable[[TokenRefreshed], None] | None = None,
    ) -> None:
        self._state_dir = state_dir
        self._clock = clock
        self._on_refresh = on_refresh
        self._by_key: dict[MailAuth, CachingTokenSource] = {}
        self._owners: dict[tuple[OwnerKind, str], tuple[MailAuth, CachingTokenSource]] = {}

    def update(self, config: Config) -> None:
        """Match the sources to `config`: keep unchanged credentials, build new ones, drop the
        ones no route or mailbox uses any more."""
        owners: list[tuple[OwnerKind, str, MailAuth]] = [
            ("mailbox", m.name, m.auth)
            for m in (*config.mailboxes, *config.bounce_mailboxes)
            if m.auth.uses_token
        ]
        owners += [
            ("route", r.name, r.auth)
            for r in config.routes
            if r.auth is not None and r.auth.uses_token
        ]
        firsts: dict[MailAuth, tuple[OwnerKind, str, MailAuth]] = {}
        for kind, name, auth in owners:
            firsts.setdefault(_key(auth), (kind, name, auth))
        by_key = {key: self._by_key[key] for key in firsts if key in self._by_key}
        used = {source.credential for source in by_key.values()}
        for key, (kind, name, auth) in firsts.items():
            if key in by_key:
                continue
            label = name if name not in used else f"{kind}-{name}"
            used.add(label)
            by_key[key] = self._build(label, auth)
        self._by_key = by_key
        self._owners = {(kind, name): (auth, by_key[_key(auth)]) for kind, name, auth in owners}

    def sign_in(self, kind: OwnerKind, name: str) -> OAuthSignIn | None:
        """How the route or mailbox `name` signs in with a token; None: with a password."""
        found = self._owners.get((kind, name))
        if found is None:
            return None
        auth, source = found
        return OAuthSignIn(username=auth.username, tokens=source, mechanism=auth.mechanism)

    def sources(self) -> list[CachingTokenSource]:
        """Every credential's source, by name."""
        return sorted(self._by_key.values(), key=lambda source: source.credential)

    def credentials(self) -> list[str]:
        return [source.credential for source in self.sources()]

    def states(self) -> list[CredentialState]:
        return [source.state() for source in self.sources()]

    def standalone(self, credential: str, auth: MailAuth) -> CachingTokenSource:
        """A source for a credential no route or mailbox uses (the Postmaster Tools feed): built
        like the others, reported to the same `on_refresh`, not kept by `update`."""
        return self._build(credential, auth)

    # --- building ---------------------------------------------------------------------------

    def _build(self, credential: str, auth: MailAuth) -> CachingTokenSource:
        fetcher: Fetcher
        if auth.oauth2 is not None:
            fetcher = self._grant(credential, auth, auth.oauth2)
        elif auth.token_command is not None:
            fetcher = TokenCommand(
                auth.token_command, credential=credential, timeout=auth.token_timeout
            )
        else:
            assert auth.token_file is not None  # uses_token: one of the three is set
            fetcher = TokenFile(auth.token_file, credential=credential)
        return CachingTokenSource(credential, fetcher, clock=self._clock, on_refresh=self._report)

    def _report(self, refreshed: TokenRefreshed) -> None:
        if self._on_refresh is not None:
            self._on_refresh(refreshed)

    def _grant(self, credential: str, auth: MailAuth, oauth2: OAuth2) -> Fetcher:
        configured = secret_values(oauth2)
        grant: RefreshTokenGrant | None = None

        def redact(text: str) -> str:
            # The endpoint may echo what it was sent; the refresh token in use may be a rotated
            # one that no configuration holds.
            rotated = [grant.refresh_token] if grant is not None and grant.refresh_token else []
            return Redactor([*configured, *rotated])(text)

        endpoint = TokenEndpoint(
            oauth2.token_url,
            credential=credential,
            timeout=auth.token_timeout,
            ca_file=oauth2.ca_file,
            redact=redact,
        )
        secret = oauth2.client_secret.get_secret_value() if oauth2.client_secret else None
        if oauth2.grant is Grant.CLIENT_CREDENTIALS:
            assert oauth2.client_id is not None and secret is not None  # validated
            return ClientCredentialsGrant(
                endpoint, client_id=oauth2.client_id, client_secret=secret, scope=oauth2.scope
            )
        if oauth2.grant is Grant.SERVICE_ACCOUNT:
            assert oauth2.service_account_file is not None  # validated
            return ServiceAccountGrant(
                endpoint,
                key_file=oauth2.service_account_file,
                subject=auth.username,
                scope=oauth2.scope,
                credential=credential,
            )
        assert oauth2.client_id is not None  # validated
        store = RefreshTokenStore(
            oauth2.refresh_token_file or refresh_token_path(self._state_dir, credential),
            credential=credential,
            configured=(oauth2.refresh_token.get_secret_value() if oauth2.refresh_token else None),
        )
        grant = RefreshTokenGrant(
            endpoint, store, client_id=oauth2.client_id, client_secret=secret, scope=oauth2.scope
        )
        return grant
