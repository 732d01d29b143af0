"""One module per `warmstart` subcommand; each defines ``register(subparsers)``."""
