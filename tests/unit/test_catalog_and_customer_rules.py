"""Catalog and customer rules, with no database."""

from __future__ import annotations

from app.catalog.domain import normalise_sku, reservation_order
from app.customers.domain import normalise_email, password_problem


def test_skus_compare_case_insensitively() -> None:
    assert normalise_sku(" ab-1 ") == normalise_sku("AB-1") == "AB-1"


def test_stock_rows_are_always_taken_in_product_order() -> None:
    assert reservation_order({9: 1, 2: 5, 4: 1}) == [(2, 5), (4, 1), (9, 1)]


def test_emails_compare_case_insensitively() -> None:
    assert normalise_email(" Alice@Example.COM ") == "alice@example.com"


def test_short_repetitive_or_name_based_passwords_are_refused() -> None:
    assert password_problem("short", email="a@example.com") is not None
    assert password_problem("aaaaaaaaaaaa", email="a@example.com") is not None
    assert password_problem("alice-is-great", email="alice@example.com") is not None
    assert password_problem("correct-horse-42", email="alice@example.com") is None


def test_passwords_people_actually_guess_are_refused_with_the_reason() -> None:
    for common in ("1234567890", "password12", "qwertyuiop", "Passw0rd!!", "iloveyou123"):
        problem = password_problem(common, email="someone@example.com")
        assert problem is not None, common
        assert problem.startswith("is too easy to guess: "), problem
    assert "common password" in (password_problem("password12", email="x@example.com") or "")
    assert "rows of keys" in (password_problem("asdfghjkl;'", email="x@example.com") or "")


def test_unrelated_words_pass_the_guessability_check() -> None:
    for fine in ("correct-horse-42", "restock-the-shelves-7", "analytical-engine-1843"):
        assert password_problem(fine, email="someone@example.com") is None, fine
