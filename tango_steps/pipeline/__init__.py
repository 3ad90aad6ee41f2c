"""Running rounds as a pipeline: the driver, the model store, retention, cards, budgets, the device layout."""
