"""headsup test suite (a regular package, so a `tests` package installed by a dependency cannot shadow it)."""
