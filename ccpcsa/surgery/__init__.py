"""The dependency-graph view of a model and the only place that changes its channels.

:mod:`.prune` (``ChannelPruner``: torch-pruning groups, blocks, floors, the surgery) ← :mod:`.cost` (what a choice of
widths costs: MACs, parameters, latency) ← :mod:`.macs_target` (the fewest blocks that reach a MACs target);
:mod:`.compensation` folds removed channels into kept ones before the surgery; :mod:`.alignment` resolves the width
multiple a runtime runs without padding."""
