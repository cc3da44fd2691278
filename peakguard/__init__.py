"""The `peakguard` command. Each package adds its own subcommands; see `peakguard.cli`."""
