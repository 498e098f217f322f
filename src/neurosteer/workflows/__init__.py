"""What the commands run, built from the layers above: sweeps, the Optuna search
(`optimization`), reports, chat, the organism with its demo, judges by name, run identities."""
