"""Training: the one loop every model trains in (`loop`), its optimizers and schedules
(`optim`), the precision it runs at (`precision`), this machine's price of compute (`probe`),
and the final refit of the winner on train+val (`refit`). Nothing here needs Ray."""
