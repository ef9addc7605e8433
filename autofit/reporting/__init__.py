"""Reporting: what a run shows while it runs (`logs`, `live`) and after (`summary`,
`leaderboard`, `html_report`, `plots`), and reading a run directory back from its files alone
(`run_files`, `run_table`)."""
