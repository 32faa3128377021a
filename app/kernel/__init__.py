"""What every layer may use and what does no I/O: errors, schema building blocks, the tables'
declarative base, the settings, and the security primitives (password hashing, tokens)."""
