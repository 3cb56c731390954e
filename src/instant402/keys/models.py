"""Tables of the keys domain (migration: db/migrations/versions/)."""
