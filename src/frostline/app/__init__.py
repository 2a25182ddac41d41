"""The `frostline` command and its jobs: inspect, train, demo, bench, and their plots."""
