"""The local stage ladder (`make ladder`): each stage of STAGES.md built natively on this
machine under CPU budgets, driven by the Locust suite, measured and torn down in turn."""
