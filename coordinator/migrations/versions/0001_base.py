"""The empty starting point every later revision builds on.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from __future__ import annotations

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Nothing: tables arrive in the revisions that need them."""


def downgrade() -> None:
    """Nothing to undo."""
