"""Search: the space of configurations (`space`, `knobs`), fitted to the caps before anything
trains, sampled by `searcher` (random or `tpe`) and run as Ray Tune trials under ASHA (`tune`,
`trainable`) on a local Ray or a cluster (`cluster`, `packing`); `phase` is the run's search
phase, which may skip the search and train the space's prior instead."""
