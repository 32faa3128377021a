"""Customer rules: how emails compare and what a password must be."""

from __future__ import annotations

from zxcvbn import zxcvbn

MIN_PASSWORD = 10
MAX_PASSWORD = 128
MIN_GUESSES_LOG10 = 6
"""A password an attacker would find within a million guesses is refused: NIST SP 800-63B asks
that new passwords be checked against lists of common, expected and breached ones. zxcvbn
holds those lists (passwords from breaches, common words and names) and scores keyboard rows,
sequences, repeats and dates as well; a million guesses is the usual bound for online attacks."""
_ESTIMATED_CHARACTERS = 72
"""zxcvbn's own limit: past it, the first 72 characters are what is estimated."""


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
    estimate = zxcvbn(password[:_ESTIMATED_CHARACTERS], user_inputs=[name])
    if estimate["guesses_log10"] < MIN_GUESSES_LOG10:
        why = estimate["feedback"]["warning"] or "It would be found within a million guesses."
        return f"is too easy to guess: {why.rstrip('.')}. Try a few unrelated words"
    return None
