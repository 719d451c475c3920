"""Training: fit / fine-tune / evaluate and resume (:mod:`.engine`), what makes it fast on a GPU (:mod:`.speed`),
DDP under ``torchrun`` (:mod:`.distributed`)."""
