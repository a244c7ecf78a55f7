"""One module per ``bigseer`` subcommand: ``add_arguments(parser)`` and ``run(args) -> int``."""
