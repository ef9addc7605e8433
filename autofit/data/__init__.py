"""Data: find and check a dataset, decode it once, and feed batches (DALI, or torch without it).

`dataset.load` is the entry point; `pipeline` chooses the data path the run takes and says why.
"""
