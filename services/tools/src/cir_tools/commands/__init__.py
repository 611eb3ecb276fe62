"""The `cir` subcommands, one module each, registered by name in `cir_tools.cli.COMMANDS`.

Each module defines `add_arguments(parser)` and `run(args) -> int` and is imported only when its subcommand
is the one that runs; heavy imports (grpc stubs, torch, the services) stay inside it, most in `run`.
"""
