"""One round of the paper's schedule: its stages as functions, the state handed between rounds, and the
in-process runner."""
