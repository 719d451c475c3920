"""The pruning method: Algorithm 1 of CCPCSA (:mod:`.loop`: score → prune → fine-tune → guard), the block order
(:mod:`.allocation`) and one-shot pruning (:mod:`.oneshot_prune`). Uses criteria, surgery, training, data and io."""
