"""Everything that talks to an outside system: the database and its replicas, the cache, the
rate limits, the queue and the outbox, e-mail, Secrets Manager, the assets' storage, traces.
Built on app.kernel; knows no domain and nothing of app.web."""
