"""Customer rules: how emails compare and what a password must be."""

from __future__ import annotations

MIN_PASSWORD = 10
MAX_PASSWORD = 128


def normalise_email(email: str) -> str:
    """Emails compare case-insensitively: one account per address."""
    return email.strip().lower()


def password_problem(password: str, *, email: str) -> str | None:
    """Why a password is refused, or None when it is acceptable."""
    if len(password) < MIN_PASSWORD:
        return f"must be at least {MIN_PASSWORD} characters"
    if len(password) > MAX_PASSWORD:
        return f"must be at most {MAX_PASSWORD} characters"
    if len(set(password)) < 4:
        return "must use at least 4 different characters"
    name = normalise_email(email).split("@")[0]
    if len(name) >= 3 and name in password.lower():
        return "must not contain the email's name"
    return None
