"""`autofit serve`: the HTTP service. Datasets are uploaded, runs queued in SQLite and started
as normal autofit runs on the server's Ray when the resources they plan to use are free."""
