"""Persistence: atomic, hashed artifacts (:mod:`.artifacts`), weights files as users have them (:mod:`.weights`) and
the project's ``weights_only`` checkpoints that rebuild pruned architectures (:mod:`.checkpoint`)."""
