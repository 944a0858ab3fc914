"""The `featherflow` command: parse, call the library, print (entry point: cli.main.main)."""
