"""HTTP plumbing: errors as answers, the typed dependencies, the OpenAPI document and the docs
pages, the middleware (observability, read-your-writes), /static/ and the process' lifecycle.
Built on app.adapters and app.kernel; knows no domain (a module's router imports it)."""
