"""One module per kind of run: builds data, model and task from a run's config, trains, evaluates."""
