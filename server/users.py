"""Users and API tokens, LAVA's way: a user name plus a secret token, only its hash stored.

Tables ``users`` and ``tokens`` (Alembic revision ``0006_users``) live in the
same store as the lab, so ``lavamq user add`` / ``lavamq token create`` and
the server see the same users. A token is 64 random letters and digits
(about 330 bits); only its SHA-256 is kept, which is enough for a secret of
that entropy and lets a request be checked with one indexed look-up.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import string
import time
from dataclasses import dataclass

from sqlalchemy import Boolean, Float, ForeignKey, Integer, String, bindparam, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, mapped_column

from coordinator.db import Base, open_database
from schemas.errors import ConfigurationError
from server.driver_sql import DriverStatement

#: LAVA's tokens are lower-case letters and digits: nothing a shell or argparse reads
#: specially (a token starting with "-" would be an option to lavacli)
_TOKEN_ALPHABET = string.ascii_lowercase + string.digits
_USER_NAME = re.compile(r"^[A-Za-z0-9_.@+-]{1,150}$")


class User(Base):
    """A web / XML-RPC user of the server."""

    __tablename__ = "users"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(150), unique=True)
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    created: Mapped[float] = mapped_column(Float)


class Token(Base):
    """An API token of a user, stored only as its digest."""

    __tablename__ = "tokens"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    digest: Mapped[str] = mapped_column(String(64), unique=True)
    description: Mapped[str] = mapped_column(String(200), default="")
    created: Mapped[float] = mapped_column(Float)


@dataclass(frozen=True)
class Identity:
    """Who is calling: a user, or nobody (``name`` None)."""

    name: str | None = None
    is_admin: bool = False

    @property
    def anonymous(self) -> bool:
        """Whether no user is logged in."""
        return self.name is None


ANONYMOUS = Identity()


_USERS, _TOKENS = User.__table__, Token.__table__
#: the user holding the token of digest ``digest``
_HOLDER = (
    select(_USERS.c.name, _USERS.c.is_admin, _TOKENS.c.digest)
    .join(_TOKENS, _TOKENS.c.user_id == _USERS.c.id)
    .where(_TOKENS.c.digest == bindparam("digest"))
)


def token_digest(token: str) -> str:
    """The stored form of a token (SHA-256): a leaked table gives no usable token."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class UserStore:
    """Adds users and tokens, and finds the user a (name, token) pair belongs to."""

    def __init__(
        self, db_url: str, *, run_migrations: bool = True, pool_size: int | None = None
    ) -> None:
        self.engine, self.sessions = open_database(
            db_url, run_migrations=run_migrations, pool_size=pool_size
        )
        # every call with a token asks this: on the driver's cursor (server/driver_sql.py)
        self._holder = DriverStatement(self.engine, _HOLDER)

    def close(self) -> None:
        """Close the store connections."""
        self.engine.dispose()

    def add_user(self, name: str, *, admin: bool = False) -> Identity:
        """Add a user (its name checked); ConfigurationError if it exists."""
        if not _USER_NAME.match(name):
            raise ConfigurationError(
                f"invalid user name {name!r}: 1 to 150 of A-Z a-z 0-9 _ . @ + -"
            )
        try:
            with self.sessions.begin() as s:
                s.add(User(name=name, is_admin=admin, created=time.time()))
        except IntegrityError:
            raise ConfigurationError(f"user {name} exists already") from None
        return Identity(name, admin)

    def create_token(self, name: str, description: str = "") -> str:
        """A new token for user ``name``; the only time its text exists is this return value."""
        token = "".join(secrets.choice(_TOKEN_ALPHABET) for _ in range(64))
        with self.sessions.begin() as s:
            user = s.scalar(select(User).where(User.name == name))
            if user is None:
                raise ConfigurationError(f"no user {name}: add it first with `lavamq user add`")
            s.add(
                Token(
                    user_id=user.id,
                    digest=token_digest(token),
                    description=description[:200],
                    created=time.time(),
                )
            )
        return token

    def users(self) -> list[Identity]:
        """Every user, by name."""
        with self.sessions.begin() as s:
            rows = s.scalars(select(User).order_by(User.name))
            return [Identity(u.name, u.is_admin) for u in rows]

    def authenticate(self, token: str, name: str | None = None) -> Identity | None:
        """The user holding ``token`` (and named ``name`` when given), or None."""
        digest = token_digest(token)
        found = self._holder.rows(digest=digest)
        row = found[0] if found else None
        if row is None or not hmac.compare_digest(row[2], digest):
            return None
        if name is not None and not hmac.compare_digest(row[0].encode(), name.encode()):
            return None
        return Identity(row[0], bool(row[1]))
