"""The `orchestrate` command line: one module per command family (each exports COMMANDS) and
the options they share (options.py); main.py builds the group. Parse and print only."""
