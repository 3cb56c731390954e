"""Tables of the payments domain (migration: db/migrations/versions/)."""
