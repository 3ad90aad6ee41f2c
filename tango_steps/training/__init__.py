"""Training the models: the RL update (one process or a process group), the warm-ups."""
