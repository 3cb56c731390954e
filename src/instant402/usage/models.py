"""Tables of the usage domain (migration: db/migrations/versions/)."""
