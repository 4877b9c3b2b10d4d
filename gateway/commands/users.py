"""``gateway users`` and ``gateway tokens``: who may sign in to the panel and call its API."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from gateway.commands.common import ConfigOption, err, guard, settings


def _engine(config):
    from gateway.store.db import make_engine, upgrade

    s = settings(config)
    upgrade(s.store_url)
    return make_engine(s.store_url)


def _read_password(from_stdin: bool) -> str:
    """A new password (stdin, or asked twice without echo); exit 2 with the reason when too weak."""
    from gateway.web.security import check_password

    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    problem = check_password(password)
    if problem:
        err(f"gateway: {problem}")
        raise typer.Exit(2)
    return password


def register(app: typer.Typer) -> None:
    users_app = typer.Typer(help="People who sign in to the web panel.", no_args_is_help=True)
    tokens_app = typer.Typer(help="Tokens for the panel's JSON API.", no_args_is_help=True)
    app.add_typer(users_app, name="users")
    app.add_typer(tokens_app, name="tokens")
    _register_users(users_app)
    _register_tokens(tokens_app)


def _register_users(users_app: typer.Typer) -> None:
    """``gateway users ...``: add, list, disable, enable, password."""

    @users_app.command("add")
    def users_add(
        name: Annotated[str, typer.Argument(help="User name to sign in with.")],
        role: Annotated[str, typer.Option("--role", help="viewer (read only) or operator (reprocess, onboard).")] = "viewer",
        password_stdin: Annotated[bool, typer.Option("--password-stdin", help="Read the password from standard input.")] = False,
        config: ConfigOption = None,
    ) -> None:
        """Add a user; the password is asked twice without echo (or read from stdin) and stored as an argon2 hash."""

        def body():
            from sqlmodel import select

            from gateway.store import transaction
            from gateway.store.models import User
            from gateway.web.security import ROLES, check_username, hash_password

            problem = check_username(name)
            if problem:
                err(f"gateway: {name!r}: {problem}")
                raise typer.Exit(2)
            if role not in ROLES:
                err(f"gateway: --role {role!r}: must be one of {', '.join(ROLES)}")
                raise typer.Exit(2)
            engine = _engine(config)
            with transaction(engine) as s:
                if s.exec(select(User).where(User.username == name)).first() is not None:
                    err(f"gateway: a user named {name} already exists")
                    raise typer.Exit(1)
            password = _read_password(password_stdin)
            with transaction(engine) as s:
                s.add(User(username=name, password_hash=hash_password(password), role=role))
            typer.echo(f"user {name} added ({role})")

        guard(body)

    @users_app.command("list")
    def users_list(config: ConfigOption = None) -> None:
        """Every user with role and status (never a password)."""

        def body():
            from sqlmodel import Session, select

            from gateway.store.models import User

            with Session(_engine(config)) as s:
                rows = s.exec(select(User).order_by(User.username)).all()
            for u in rows:
                typer.echo(f"{u.username}\t{u.role}\t{'disabled' if u.disabled else 'active'}\t{u.created_at:%Y-%m-%d}")

        guard(body)

    def _set_disabled(name: str, disabled: bool, config) -> None:
        from sqlmodel import select

        from gateway.store import transaction
        from gateway.store.models import User

        with transaction(_engine(config)) as s:
            user = s.exec(select(User).where(User.username == name)).first()
            if user is None:
                err(f"gateway: no user named {name}")
                raise typer.Exit(1)
            user.disabled = disabled
            if disabled:
                from gateway.web.security import end_sessions

                end_sessions(s, user.id)
        typer.echo(f"user {name} {'disabled' if disabled else 'enabled'}")

    @users_app.command("disable")
    def users_disable(name: str, config: ConfigOption = None) -> None:
        """Stop a user signing in or using their API tokens (takes effect on their next request)."""
        guard(lambda: _set_disabled(name, True, config))

    @users_app.command("enable")
    def users_enable(name: str, config: ConfigOption = None) -> None:
        """Let a disabled user sign in again."""
        guard(lambda: _set_disabled(name, False, config))

    @users_app.command("password")
    def users_password(
        name: str,
        password_stdin: Annotated[bool, typer.Option("--password-stdin", help="Read the password from standard input.")] = False,
        config: ConfigOption = None,
    ) -> None:
        """Set a new password (signs the user out of existing sessions)."""

        def body():
            from sqlmodel import select

            from gateway.store import transaction
            from gateway.store.models import User
            from gateway.web.security import end_sessions, hash_password

            engine = _engine(config)
            with transaction(engine) as s:
                if s.exec(select(User).where(User.username == name)).first() is None:
                    err(f"gateway: no user named {name}")
                    raise typer.Exit(1)
            password = _read_password(password_stdin)
            with transaction(engine) as s:
                user = s.exec(select(User).where(User.username == name)).one()
                user.password_hash = hash_password(password)
                end_sessions(s, user.id)
            typer.echo(f"password of {name} changed")

        guard(body)


def _register_tokens(tokens_app: typer.Typer) -> None:
    """``gateway tokens ...``: create, list, revoke."""

    @tokens_app.command("create")
    def tokens_create(
        user: Annotated[str, typer.Argument(help="The user the token acts as (their role applies).")],
        name: Annotated[str, typer.Option("--name", help="What the token is for, e.g. 'prometheus'.")],
        config: ConfigOption = None,
    ) -> None:
        """Create an API token and print it once (only its hash is stored). Send it as 'Authorization: Bearer TOKEN'."""

        def body():
            from sqlmodel import select

            from gateway.store import transaction
            from gateway.store.models import ApiToken, User
            from gateway.web.security import new_api_token, token_hash

            if not name.strip() or len(name) > 100:
                err("gateway: --name must be 1-100 characters")
                raise typer.Exit(2)
            token = new_api_token()
            with transaction(_engine(config)) as s:
                u = s.exec(select(User).where(User.username == user)).first()
                if u is None:
                    err(f"gateway: no user named {user}")
                    raise typer.Exit(1)
                if u.disabled:
                    err(f"gateway: user {user} is disabled")
                    raise typer.Exit(1)
                s.add(ApiToken(user_id=u.id, name=name.strip(), token_hash=token_hash(token)))
            typer.echo(token)
            err(f"token {name.strip()!r} for {user} ({u.role}) created; it is shown only this once")

        guard(body)

    @tokens_app.command("list")
    def tokens_list(config: ConfigOption = None) -> None:
        """Every API token: id, user, name, created, last used (never the token)."""

        def body():
            from sqlmodel import Session, select

            from gateway.store.models import ApiToken, User

            with Session(_engine(config)) as s:
                rows = s.exec(select(ApiToken, User).join(User, User.id == ApiToken.user_id).order_by(ApiToken.id)).all()
            for t, u in rows:
                used = f"{t.last_used_at:%Y-%m-%d %H:%M}" if t.last_used_at else "never used"
                typer.echo(f"{t.id}\t{u.username}\t{t.name}\t{t.created_at:%Y-%m-%d}\t{used}")

        guard(body)

    @tokens_app.command("revoke")
    def tokens_revoke(token_id: Annotated[int, typer.Argument(help="The id shown by 'gateway tokens list'.")],
                      config: ConfigOption = None) -> None:
        """Delete an API token; requests carrying it are refused from then on."""

        def body():
            from gateway.store import transaction
            from gateway.store.models import ApiToken

            with transaction(_engine(config)) as s:
                t = s.get(ApiToken, token_id)
                if t is None:
                    err(f"gateway: no API token with id {token_id}")
                    raise typer.Exit(1)
                s.delete(t)
            typer.echo(f"token {token_id} revoked")

        guard(body)

