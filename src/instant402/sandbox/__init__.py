"""The one-command sandbox: SQLite, the emulator, the devnet and facilitator, and demo data."""
