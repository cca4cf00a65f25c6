"""Worker runtime: the ``hpo-worker`` session and its slots (launcher), the ask-run-tell loop, one
trial start to end (the runner, the only place here that imports torch), epoch reports and
pruning, heartbeat and reaper, retry limits, and what a worker shows while it runs."""
