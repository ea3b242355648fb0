"""The training loop and what it needs: policy, EMAs, rewards per chunk, fault guards, checkpoints."""


class RunHalted(RuntimeError):
    """The run stopped itself (:mod:`dgpo.training.guards`): too many skipped steps or failed reward
    epochs in a row. Defined here, free of torch, so that the CLI can catch it cheaply."""
