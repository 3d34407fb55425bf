//! The `tdx-agent` subcommands.
