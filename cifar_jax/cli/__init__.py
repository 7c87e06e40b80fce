"""The command line: flags to a mode (train, eval, sweep, study, report), a quiet start, one-line errors."""
