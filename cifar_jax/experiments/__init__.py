"""Many jobs at once: sweeps and their constraint language, studies (spec, runner, verdicts), reports."""
